"""A deterministic stand-in for an AI editing tool: it edits files in the current folder as
its prompt says, so that workstreams can be run end to end with no network and no AI key.

Usage: stand_in_editor.py PROMPT_FILE [FEEDBACK_FILE]

The prompt is a list of sections separated by lines `%%`. A section's first line is an
instruction, the lines after it its text:
    write PATH        the file PATH gets the text (folders are created)
    append PATH       the text is added at the end of PATH
    delete PATH       PATH is removed
    fail MESSAGE      exit 1 with MESSAGE on stderr (a tool that gives up)
An instruction prefixed `first` applies only on a first attempt (the feedback file is empty
or absent), one prefixed `retry` only on a later attempt (uet wrote the failing gate's output
to the feedback file): a tool that "learns" from the feedback.

When uet names a usage file in $UET_USAGE_FILE, the stand-in reports what it "used" there,
as an AI tool would (`uet show` and `uet usage` sum it): model "stand-in-editor", input
tokens = the prompt's length in characters, output tokens = the bytes it wrote, and a cost
at a made-up price of $3 per million input and $15 per million output tokens.
"""

from __future__ import annotations

import json
import os
import sys

MODEL = "stand-in-editor"
USD_PER_INPUT_TOKEN = 3 / 1_000_000   # made up: the stand-in costs nothing
USD_PER_OUTPUT_TOKEN = 15 / 1_000_000


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        prompt = f.read()
    written = [0]  # bytes written to files: the "output tokens"
    try:
        return edit(prompt, argv, written)
    finally:
        report_usage(len(prompt), written[0])


def report_usage(input_tokens: int, output_tokens: int) -> None:
    """Write the usage JSON to $UET_USAGE_FILE, when uet names one."""
    path = os.environ.get("UET_USAGE_FILE")
    if not path:
        return
    cost = input_tokens * USD_PER_INPUT_TOKEN + output_tokens * USD_PER_OUTPUT_TOKEN
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"model": MODEL, "input_tokens": input_tokens,
                   "output_tokens": output_tokens, "cost_usd": round(cost, 8)}, f)


def edit(prompt: str, argv: list[str], written: list[int]) -> int:
    """Apply the prompt's sections; returns the exit code. `written[0]` counts the bytes
    written."""
    feedback = ""
    if len(argv) == 3 and os.path.exists(argv[2]):
        with open(argv[2], encoding="utf-8") as f:
            feedback = f.read()
    for section in prompt.split("\n%%\n"):
        head, _, body = section.strip("\n").partition("\n")
        words = head.split(maxsplit=1)
        if words and words[0] in ("first", "retry"):
            if (words[0] == "retry") != bool(feedback.strip()):
                continue
            words = words[1].split(maxsplit=1) if len(words) > 1 else []
        if not words:
            continue
        action, target = words[0], (words[1] if len(words) > 1 else "")
        if action == "fail":
            print(target or "the stand-in tool gave up", file=sys.stderr)
            return 1
        if action in ("write", "append"):
            folder = os.path.dirname(target)
            if folder:
                os.makedirs(folder, exist_ok=True)
            text = body + ("\n" if body and not body.endswith("\n") else "")
            with open(target, "a" if action == "append" else "w", encoding="utf-8") as f:
                f.write(text)
            written[0] += len(text.encode("utf-8"))
        elif action == "delete":
            os.remove(target)
        else:
            print(f"unknown instruction {action!r}", file=sys.stderr)
            return 2
    print(f"stand-in editor: applied {len(prompt.split(chr(10) + '%%' + chr(10)))} sections")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
