"""The layout is a contract: stages import downwards only, no import cycles, ruff clean.

`lint-imports` and `ruff check` run as a user or CI would run them, from the repository root and on
this checkout's dltool (not on whichever copy is installed).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dltool"


def tool(name: str) -> str:
    """The tool's script beside this Python (the venv's), else on PATH; skip when not installed."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def run(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = run(tool("lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_ruff_is_clean():
    result = run(tool("ruff"), "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_import_cycles_between_modules():
    """Every import counts, those inside functions too: the module graph has no strongly connected part."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (pip install -e '.[dev]')")
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("dltool", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    assert "dltool.training.train" in graph.modules  # this checkout's package, stages and all
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert cycles(edges) == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_a_circle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_at_most_six_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 6, top


def stage_order() -> list[str]:
    """The stages of the layers contract in pyproject.toml, top (cli) to bottom (errors)."""
    text = (ROOT / "pyproject.toml").read_text()  # read as text: tomllib is not in Python 3.10
    block = re.search(r'type = "layers".*?\nlayers = \[(.*?)\]', text, re.S)
    assert block, "pyproject.toml has no layers contract"
    return re.findall(r'"(\w+)"', block.group(1))


def allowed_by_docstring(package: str, text: str, stages: list[str]) -> set[str]:
    """The stages named in a package docstring's "It may import ..." clause (up to its first `;`, `:` or `.`)."""
    found = re.search(r"It may import ([^;:.]*)", text)
    assert found, f"{package}/__init__.py: the docstring has no 'It may import ...' sentence"
    clause = found.group(1)
    if clause.startswith("every other package"):
        return set(stages) - {package}
    return {stage for stage in stages if re.search(rf"\b{stage}\b", clause)}


def test_every_package_says_what_it_holds_and_may_import():
    stages = stage_order()
    packages = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))
    assert {p.name for p in packages} >= {"cli", "config", "data", "inference", "models", "store", "training"}
    assert {p.name for p in packages} == set(stages) - {"errors"}  # each package is a stage of the contract
    for package in packages:
        text = (package / "__init__.py").read_text()
        assert text.startswith('"""'), package
        below = set(stages[stages.index(package.name) + 1:])
        assert allowed_by_docstring(package.name, text.split('"""')[1], stages) == below, (
            f"{package.name}/__init__.py: the stages it says it may import are not those below it in pyproject.toml")
