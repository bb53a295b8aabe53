"""User text on its way in and out: the one place that decides what input text is acceptable
and how text is escaped for the line-oriented places it ends up in (issue 13, finding 6e/6f).

In (bodies, paths, queries, headers): `loads` is the JSON parser of every route. It accepts
what RFC 8259 does and nothing the rest of the server cannot carry: no lone surrogate (SQLite
and every encoder refuse them later, as a 500), no integer longer than 1,000 digits (Python's
int-string limit raises ValueError at 4,301), no NaN/Infinity or float overflow, no nesting
deeper than 64 (a RecursionError anywhere downstream). `bad_text` says why a string cannot be
carried.

Out: SDP, SSE, CSV, logs and HTTP headers are line-oriented; a CR or LF in a zone name added
`c=`/`m=` lines to a public SDP. Line breaks for these purposes are CR, LF, VT, FF, NEL
(U+0085), and U+2028/U+2029 (what `str.splitlines` splits on, plus the separators other
parsers honour). `one_line` replaces them (and other control characters) with a space;
`header_value` makes the Latin-1 a header can carry; `csv_cell` also defuses spreadsheet
formulas. A leaf module: nothing from control.
"""
from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

MAX_DEPTH = 64
MAX_INT_DIGITS = 1000

#: line breaks any of the line-oriented formats (or a reader of them) may honour
LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class BadInput(ValueError):
    """Text or JSON the server will not carry, with a reason for people."""


def bad_text(s: str) -> str | None:
    """Why `s` cannot be stored or sent (None: it can)."""
    if _SURROGATE.search(s):
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def _int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise BadInput(f"an integer of {len(s)} digits (at most {MAX_INT_DIGITS})")
    return int(s)


def _float(s: str) -> float:
    if len(s) > MAX_INT_DIGITS:
        raise BadInput(f"a number of {len(s)} characters (at most {MAX_INT_DIGITS})")
    v = float(s)
    if not math.isfinite(v):
        raise BadInput(f"the number {s[:40]} is out of range")
    return v


def _constant(s: str) -> Any:
    raise BadInput(f"{s} is not a JSON number")


def check_tree(value: Any) -> None:
    """Depth and text of a parsed JSON value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            why = bad_text(v)
            if why:
                raise BadInput(f"a string {why}")
        elif isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadInput(f"nested deeper than {MAX_DEPTH} levels")
            items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]
            for k, x in items:
                if k is not None:
                    stack.append((k, depth))
                stack.append((x, depth + 1))


def loads(raw: bytes | str) -> Any:
    """The body as JSON; BadInput (a ValueError) for anything the server cannot carry."""
    try:
        value = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except BadInput:
        raise
    except RecursionError:
        raise BadInput(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadInput(str(e)[:200]) from None
    check_tree(value)
    return value


# ----------------------------------------------------------------------------- out

def one_line(s: Any, limit: int | None = None) -> str:
    """`s` as one line of text: line breaks and control characters become spaces, a lone
    surrogate becomes U+FFFD. For SDP fields, SSE comments, log lines and the like."""
    text = s if isinstance(s, str) else str(s)
    text = _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", text))
    return text[:limit] if limit is not None else text


def header_value(s: Any, limit: int = 200) -> str:
    """Text safe as an HTTP header value: one line, Latin-1 (other characters as '?')."""
    return one_line(s, limit).encode("latin-1", "replace").decode("latin-1")


def csv_cell(s: Any) -> str:
    """A CSV cell a spreadsheet will not run (=, +, -, @ or a tab first get a quote) and that
    stays on its row when a reader splits on Unicode line breaks; the csv module quotes the
    rest."""
    text = one_line(s) if not isinstance(s, str) else _SURROGATE.sub("\ufffd", s)
    text = text.replace("\r\n", " ").translate({ord(c): " " for c in LINE_BREAKS})
    if text[:1] in ("=", "+", "-", "@", "\t"):
        return "'" + text
    return text


_JSON_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def json_line(value: Any) -> str:
    """JSON on one line for every reader: `ensure_ascii=False` keeps Vietnamese readable but
    leaves U+0085/U+2028/U+2029 raw, which some line readers split on; they are escaped (the
    JSON stays equal)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text.translate({ord(k): v for k, v in _JSON_SEPARATORS.items()})


def sse_field(s: Any) -> str:
    """A value for an SSE `event:` or `id:` field (the stream splits on CR and LF)."""
    return one_line(s, 200)


class OneLineFormatter(logging.Formatter):
    """Log lines that stay one line: user text in a message (a path, a zone name) cannot
    forge another log entry. Tracebacks, which are ours, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def install_log_escaping(root: logging.Logger | None = None) -> None:
    """Every handler of the root logger formats with OneLineFormatter (same format)."""
    for h in (root or logging.getLogger()).handlers:
        fmt = h.formatter
        h.setFormatter(OneLineFormatter(fmt._fmt if fmt is not None else None,
                                        fmt.datefmt if fmt is not None else None))
