"""slsync: keep a PostgreSQL table of brand mentions current from social platforms."""

__version__ = "0.1.0"
