"""pyproject's runtime dependencies are what ``src/cimpt`` imports at run time, and the
benchmarks need nothing more (issue 15 item 7): a package only a benchmark or a test uses
would belong in an extra."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Distribution name -> the module it is imported as, where the two differ.
IMPORT_NAME = {"pillow": "PIL", "pyyaml": "yaml", "scikit-image": "skimage"}


def _distributions(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower() for s in specs}


def _third_party_imports(folder: Path, local: set[str]) -> set[str]:
    """Top-level modules imported anywhere in ``folder`` (also inside functions, and the
    ``find_spec("...")`` lookups of a package read without importing it), stdlib and local
    modules left out."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "find_spec"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(str(node.args[0].value).split(".")[0])
    return found - set(sys.stdlib_module_names) - local - {"__future__"}


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check needs one version only
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_runtime_dependencies_are_what_the_package_imports() -> None:
    declared = {IMPORT_NAME.get(d, d) for d in _distributions(_project()["dependencies"])}
    assert _third_party_imports(ROOT / "src" / "cimpt", {"cimpt"}) == declared


def test_benchmarks_need_nothing_beyond_the_runtime_dependencies() -> None:
    declared = {IMPORT_NAME.get(d, d) for d in _distributions(_project()["dependencies"])}
    local = {"cimpt"} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    assert _third_party_imports(ROOT / "bench", local) <= declared
