"""What a tool reports it used: the usage file a tool may write to `$UET_USAGE_FILE`, read
into the step attempt columns that `uet usage` and `uet show` sum.

The file is a JSON object with any of exactly four keys (no aliases such as `tokens_in` or
`usage.prompt_tokens`: a tool that speaks another dialect is wrapped by a line of script that
writes these names):

    {"model": "gpt-4.1", "input_tokens": 1234, "output_tokens": 567, "cost_usd": 0.0123}

Whatever the tool wrote, reading it never raises and never blocks: a missing or empty file
is no usage; anything else that is wrong (not JSON, not UTF-8, not a regular file, too big,
a value of the wrong type or range) is a problem text, and only the values that are valid
are kept.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from typing import Any

USAGE_FIELDS = ("model", "input_tokens", "output_tokens", "cost_usd")
MAX_USAGE_BYTES = 64 * 1024
MAX_MODEL_CHARS = 200
MAX_TOKENS = 2**63 - 1  # what both engines store in an INTEGER / bigint column
_SHOWN_CHARS = 60        # of a refused value, quoted in the problem text


def read_usage(path: str) -> tuple[dict[str, Any], str | None]:
    """Read the usage file a tool wrote at `path`.

    Returns (values, problem): `values` holds the step attempt columns to store — any of
    `model`, `input_tokens`, `output_tokens`, `cost_usd`, only those present and valid —
    and `problem` says, in one line, what was wrong with the file or which values were
    dropped and why (None when nothing was). A missing or empty file gives ({}, None).

    Rules: at most 64 KiB (a larger file is ignored whole); a JSON object in UTF-8; unknown
    keys ignored; `model` a non-empty string of at most 200 characters, valid Unicode
    without NUL; `input_tokens` and `output_tokens` integers from 0 to 2**63-1 (not
    booleans, not 1.0); `cost_usd` a finite number >= 0 (not a boolean). Never raises for
    anything the tool wrote and never blocks (a FIFO or a device is refused unread).
    """
    raw, problem = _read_bounded(path)
    if raw is None or not raw.strip():
        return {}, problem
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark (PowerShell writes one) is no harm
    except UnicodeDecodeError as exc:
        return {}, f"usage file is not UTF-8 text (byte {exc.start}) and was ignored"
    try:
        document = json.loads(text)
    except RecursionError:
        return {}, "usage file is nested too deeply to read and was ignored"
    except ValueError as exc:  # JSONDecodeError, and integers of more than 4,300 digits
        return {}, f"usage file is not JSON ({_short(str(exc))}) and was ignored"
    if not isinstance(document, dict):
        return {}, (f"usage file holds a JSON {_json_kind(document)}, not an object "
                    f"with {', '.join(USAGE_FIELDS)}; ignored")
    values: dict[str, Any] = {}
    dropped = []
    for name in USAGE_FIELDS:
        if name not in document:
            continue
        value = document[name]
        why = _CHECKS[name](value)
        if why is None:
            values[name] = float(value) if name == "cost_usd" else value
        else:
            dropped.append(f"{name} {_quoted(value)} {why}")
    if dropped:
        return values, "usage file values dropped: " + "; ".join(dropped)
    return values, None


def _read_bounded(path: str) -> tuple[bytes | None, str | None]:
    """The file's first MAX_USAGE_BYTES bytes, or (None, problem). Opened without blocking
    (a FIFO with no writer would hang a blocking open) and read only if it is a regular
    file (a FIFO or /dev/zero would never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:  # a folder on the way is a file: nothing written
            return None, None
        return None, f"usage file cannot be read: {exc.strerror or exc}"
    except (ValueError, TypeError):  # NUL in the path: nothing a tool could have written
        return None, None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return None, "usage file is a directory, not a file; ignored"
        if not stat.S_ISREG(info.st_mode):
            return None, "usage file is not a regular file (a FIFO, socket or device); ignored"
        chunks = []
        size = 0
        while size <= MAX_USAGE_BYTES:
            chunk = os.read(fd, MAX_USAGE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return None, f"usage file cannot be read: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if size > MAX_USAGE_BYTES:
        return None, "usage file larger than 64 KiB ignored"
    return b"".join(chunks), None


def _check_model(value: object) -> str | None:
    if not isinstance(value, str):
        return f"is not a string (a JSON {_json_kind(value)})"
    if not value.strip():
        return "is empty"
    if len(value) > MAX_MODEL_CHARS:
        return f"is longer than {MAX_MODEL_CHARS} characters ({len(value):,})"
    if "\x00" in value:
        return "contains NUL"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (it contains a lone surrogate)"
    return None


def _check_tokens(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"is not an integer (a JSON {_json_kind(value)})"
    if not 0 <= value <= MAX_TOKENS:
        return "is out of range (0 to 2**63-1)"
    return None


def _check_cost(value: object) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"is not a number (a JSON {_json_kind(value)})"
    try:
        number = float(value)
    except OverflowError:
        return "is not a finite number"
    if not math.isfinite(number):
        return "is not a finite number"
    if number < 0:
        return "is negative"
    return None


_CHECKS = {"model": _check_model, "input_tokens": _check_tokens,
           "output_tokens": _check_tokens, "cost_usd": _check_cost}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _quoted(value: object) -> str:
    """A refused value as the problem text quotes it: short, ASCII-safe (repr escapes NUL,
    controls and lone surrogates), never a huge number or string spelled out."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return "(a very large integer)"
    if isinstance(value, (dict, list)):
        return f"(a JSON {_json_kind(value)})"
    return _short(repr(value))


def _short(text: str) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
