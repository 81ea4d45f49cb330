"""Values from users and platforms, made safe to show: literal for rich, harmless for a terminal and a log.

A source name, a search term or a post is data. Printed through rich it would be read as markup (`[/]`
raised MarkupError for the whole status table, `[link=...]` made a link), and printed anywhere its
control characters would reach the terminal: ESC starts ANSI and OSC sequences (colours, a cleared
screen, a window title, a hyperlink), a C1 control does the same in one character, and a bidi override
reorders everything after it on the line. So every such value is shown through `visible()` (control
characters become escapes one can read: `\\x1b`, `\\u202e`) and reaches rich as a Text, never as markup;
JSON keeps the exact data, with the same characters written as JSON escapes.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 and C1 controls, DEL, the bidi embeddings, overrides and isolates (what "Trojan Source" uses), the
# Unicode line and paragraph separators, and lone surrogates (not encodable, so not printable at all).
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
_HIDDEN_EXCEPT_LINE_BREAKS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)
# What json.dumps(ensure_ascii=False) leaves raw of the above: it escapes only C0 controls itself.
_JSON_RAW = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(value: object, *, keep_line_breaks: bool = False) -> str:
    """The value as text with every control character written out as an escape; one line unless
    keep_line_breaks (then tab, CR and LF stay, for multi-line cells)."""
    pattern = _HIDDEN_EXCEPT_LINE_BREAKS if keep_line_breaks else _HIDDEN
    return pattern.sub(_escape, value if isinstance(value, str) else str(value))


def text(value: object) -> Any:
    """A rich Text of the value, shown literally: rich never reads it as markup."""
    from rich.text import Text

    return Text(visible(value))


def json_line(document: Any, default: Any = None) -> str:
    """One JSON document on one line, exact data: non-ASCII text stays readable, and what json leaves raw
    that a terminal would act on (C1 controls, bidi overrides, U+2028/9, lone surrogates) is a \\u escape."""
    encoded = json.dumps(document, default=default, ensure_ascii=False)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)


# The same characters in JSON already encoded as UTF-8 (by orjson, which escapes only C0 controls): DEL, C1, the
# bidi embeddings/overrides (U+202A-E) and isolates (U+2066-9), U+2028/9. orjson refuses lone surrogates.
_JSON_RAW_UTF8 = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def json_escaped(encoded: bytes) -> bytes:
    """JSON bytes with what a terminal would act on written as \\u escapes: the same document, exact data
    (these characters occur only inside strings, so the bytes can be replaced where they stand)."""
    # Each starts with the byte 7F, C2 or E2. Text without them (ASCII, most accented letters, CJK, emoji) is
    # ruled out by memchr, a megabyte in 0.05 ms where the pattern takes 3 ms; typographic punctuation
    # (’ … are E2 80 xx) still goes through the pattern.
    if b"\x7f" not in encoded and b"\xc2" not in encoded and b"\xe2" not in encoded:
        return encoded
    return _JSON_RAW_UTF8.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), encoded)


# An error line quotes what the user typed: a 10,000-character value is cut to its ends.
LINE_LIMIT = 1000
_LONG_WORD = re.compile(r"\S{301,}")


def shortened(line: str, limit: int = LINE_LIMIT) -> str:
    """The line with any very long word cut in its middle, then the line itself cut to about `limit`
    characters (keeping its end, where the advice usually is)."""

    def cut(match: re.Match[str]) -> str:
        word = match.group()
        return f"{word[:60]}...({len(word):,} characters)...{word[-20:]}"

    line = _LONG_WORD.sub(cut, line)
    if len(line) <= limit:
        return line
    return f"{line[: limit - 100]} ...({len(line) - limit + 20:,} characters)... {line[-80:]}"


def counted(number: int, noun: str) -> str:
    """'1 page', '2 pages': a count with its noun, singular for one."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def user_name(uid: int) -> str:
    """A user for a message about who owns a file: the login name, else the number."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
