"""Build uet's API reference from its docstrings into docs/api/ (pdoc):

    .venv/bin/python docs/build_api.py [OUTPUT_FOLDER]

Every public module is documented (a module whose dotted name has no part starting with
`_`), the command line's (`uet.cli`) included. tests/test_docs.py builds it too, and fails
when a public name has no docstring.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "api"


def public_modules() -> list[str]:
    """The dotted names of uet's public modules, packages first."""
    import uet
    names = ["uet"]
    for info in pkgutil.walk_packages(uet.__path__, "uet."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def build(output: str | os.PathLike[str] = DEFAULT_OUTPUT) -> Path:
    """Write the reference (HTML) into `output`; returns its index page."""
    import warnings

    import pdoc
    import pdoc.render
    # `uet` itself names some submodules in __all__, which pdoc then adds on its own: the
    # list below naming them again is the same module, not a mistake
    warnings.filterwarnings("ignore", message="The module specification", category=UserWarning)
    pdoc.render.configure(docformat="markdown", footer_text="uet API reference",
                          show_source=True, search=True)
    pdoc.pdoc(*public_modules(), output_directory=Path(output))
    return Path(output) / "index.html"


if __name__ == "__main__":
    index = build(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUTPUT)
    print(f"API reference: {index}")
