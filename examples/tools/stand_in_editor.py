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
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        prompt = f.read()
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
            with open(target, "a" if action == "append" else "w", encoding="utf-8") as f:
                f.write(body + ("\n" if body and not body.endswith("\n") else ""))
        elif action == "delete":
            os.remove(target)
        else:
            print(f"unknown instruction {action!r}", file=sys.stderr)
            return 2
    print(f"stand-in editor: applied {len(prompt.split(chr(10) + '%%' + chr(10)))} sections")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
