from slsync.cli import app

app()
