"""Every ```python block of README.md runs as written.

The blocks read as one session: a later block may use what an earlier one defined (`db`,
`step`), so each test runs the README's blocks in order, up to and including its own, in one
namespace, in a fresh temporary folder (where `.ledger/framework.db` is created) with no
$UET_DATABASE. A block's test fails with the README's own line numbers in its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uet.state.db import Database

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """(first code line number, section heading, code) of each ```python block."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        headings = re.findall(r"^#+ (.+)$", text[:match.start()], re.MULTILINE)
        blocks.append((line, headings[-1] if headings else "", match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _run(blocks: list[tuple[int, str, str]], filename: str) -> None:
    namespace: dict = {"__name__": "readme"}
    try:
        for line, _, code in blocks:
            # padded so that a traceback names the README's own line
            exec(compile("\n" * (line - 1) + code, filename, "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, Database):
                value.close()


def test_every_python_fence_is_found():
    """The parser sees each ```python fence of the README (none is skipped as malformed)."""
    text = README.read_text(encoding="utf-8")
    assert len(BLOCKS) == len(re.findall(r"^```python", text, re.MULTILINE)) >= 2


@pytest.mark.parametrize("upto", range(len(BLOCKS)),
                         ids=[f"line-{line}-{re.sub(r'[^a-z0-9]+', '-', title.lower())}"
                              for line, title, _ in BLOCKS])
def test_readme_block_runs(upto, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UET_DATABASE", raising=False)
    _run(BLOCKS[:upto + 1], str(README))
