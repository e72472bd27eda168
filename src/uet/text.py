"""Text and JSON that are safe to show, whatever a ledger holds (values written by any
version, by raw SQL, or simply hostile): one rule for every screen — the command line's
tables and JSON (`uet.cli.output`) and the dashboard's pages (`uet.web`).

- Text: every character that is not shown as itself — C0 and C1 controls, DEL, Unicode
  format characters (bidi overrides, zero-width characters), line and paragraph
  separators, lone surrogates — is written as an escape (`\\x1b`, `\\u202e`, `\\ud800`,
  `\\U000e0001`). A table cell holds at most CELL_LIMIT characters and a field of `uet
  show` FIELD_LIMIT, ending in a marker like `…(+1,048,376 chars)`; `--json` has the full
  values.
- JSON: valid JSON in every case. The same characters are written as `\\uXXXX` escapes
  (lone surrogates too, so that a JSON parser gets back exactly what is stored); numbers a
  JSON document cannot hold (NaN, infinities: only raw SQL can store them) as strings.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import sys
from typing import Any, overload

CELL_LIMIT = 200      # characters of one table cell (and of one id or name on a line)
FIELD_LIMIT = 2_000   # characters of one value in `uet show`'s run fields and event lines
MESSAGE_LIMIT = 2_000  # characters of one error or summary line

# Not shown as themselves: C1 controls and DEL, format characters (Unicode category Cf:
# soft hyphen, bidi controls, zero-width characters, tags ...), the line and paragraph
# separators (Zl, Zp) and lone surrogates (Cs). tests/test_cli_display.py checks that this
# covers every such character of Python's Unicode database.
_HIDDEN = ("\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
           "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff"
           "\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
           "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
UNSAFE = re.compile(f"[\x00-\x1f{_HIDDEN}]")  # in text: the C0 controls too
# in json.dumps output the C0 controls are already escaped but for the line breaks of indent
_UNSAFE_IN_JSON = re.compile(f"[{_HIDDEN}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters beyond the BMP
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"


def clip(text: str, limit: int) -> str:
    """`text`, cut after `limit` characters with a marker saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit:,} chars)"


def shown(text: Any, limit: int = CELL_LIMIT) -> str:
    """Any value as one line of safe text: clipped, then every unsafe character escaped."""
    if isinstance(text, bytes):  # a BLOB where text belongs (raw SQL)
        text = text.decode("utf-8", "backslashreplace")
    return UNSAFE.sub(_escape, clip(str(text), limit))


_UNSAFE_IN_LOGS = re.compile(f"[\x00-\x08\x0b-\x1f{_HIDDEN}]")  # keeps \t and \n


def log_text(text: str) -> str:
    """Kept output as it was written, lines and tabs kept, every other unsafe character
    escaped (a tool's colour codes show as `\x1b[31m`, never act on the terminal)."""
    return _UNSAFE_IN_LOGS.sub(_escape, text)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message (an error, a summary) as one safe terminal line: every control character
    and line break escaped; a huge one keeps its start and its end (where the advice is)."""
    if len(text) > limit:
        head, tail = limit * 3 // 4, limit // 4
        text = f"{text[:head]}…({len(text) - head - tail:,} chars left out)…{text[-tail:]}"
    return UNSAFE.sub(_escape, text)


def cell(value: Any, limit: int = CELL_LIMIT) -> str:
    """A stored value as one table cell (a JSON value as JSON text)."""
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (dict, list)):
        value = to_json(value)
    return shown(value, limit)


def joined(values: Any) -> Any:
    """A list of stored texts as one cell's text (anything else as its JSON); a value that
    is not a list (raw SQL can store anything) is returned for `cell()` to show."""
    if not isinstance(values, list) and not hasattr(values, "__next__"):
        return values
    return ", ".join(v if isinstance(v, str) else cell(v) for v in values)


# -- JSON ------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """json.dumps's fallback for what is not JSON by itself: records and enums (shallow:
    json.dumps walks what they hold), BLOBs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: Any) -> Any:
    """`value` with the numbers JSON cannot hold (NaN, infinities) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if dataclasses.is_dataclass(value) and not isinstance(value, type) or isinstance(
            value, (bytes, enum.Enum)):
        value = _jsonable(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _ascii_output() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding not in ("utf8", "utf_8")


def to_json(document: Any, *, indent: int | None = None) -> str:
    """`document` as JSON text that is always valid and safe on a terminal."""
    ascii_only = _ascii_output()

    def dumps(value: Any) -> str:
        return json.dumps(value, allow_nan=False, indent=indent, ensure_ascii=ascii_only,
                          default=_jsonable)
    try:
        text = dumps(document)
    except ValueError:  # NaN or an infinity somewhere: rare, so only then walked
        text = dumps(_finite(document))
    return _UNSAFE_IN_JSON.sub(_json_escape, text)


# -- figures ---------------------------------------------------------------------------

def usage_line(usage: dict[str, Any]) -> str:
    """A usage total (`uet.state.usage.usage_totals`) as one short line: "3 attempts,
    1,234 in / 567 out tokens, $0.0123, models: x" (what was not reported is left out)."""
    parts = [f"{usage['attempts']:,} attempt{'' if usage['attempts'] == 1 else 's'}"]
    if usage["input_tokens"] is not None or usage["output_tokens"] is not None:
        parts.append(f"{tokens(usage['input_tokens'])} in / "
                     f"{tokens(usage['output_tokens'])} out tokens")
    if usage["cost_usd"] is not None:
        parts.append(dollars(usage["cost_usd"]))
    if usage["models"]:
        parts.append(f"model{'' if len(usage['models']) == 1 else 's'}: "
                     f"{joined(usage['models'])}")
    return ", ".join(parts)


def tokens(count: int | None) -> str:
    """A token count with thousands separators ("-" when not reported)."""
    return "-" if count is None else f"{count:,}"


@overload
def dollars(cost: float) -> str: ...


@overload
def dollars(cost: None) -> None: ...


@overload
def dollars(cost: float | None) -> str | None: ...


def dollars(cost: float | None) -> str | None:
    """A cost in US dollars as shown to people: $0.0123 (a tiny cost as <$0.0001)."""
    if cost is None:
        return None
    if 0 < cost < 0.0001:
        return "<$0.0001"
    return f"${cost:,.4f}"
