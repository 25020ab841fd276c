"""The shape of the code: module and function sizes, no import cycles, the stage order, no sys.path edits.

The package ``tasks`` follows the data, and a stage imports only stages before it in
core, ingest, features, quality, model, registry, serving (quality's drift check reads the feature definitions,
so features come before quality in the code although validation runs before them); ``datasets`` and ``cli`` sit
outside the chain.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 500  # for tasks/
MAX_FUNCTION_LINES = 80  # everywhere, tests and benchmarks included
PYTHON_DIRS = ("tasks", "dags", "plugins", "expectations", "benchmarks", "tools", "tests")
STAGES = ["core", "ingest", "features", "quality", "model", "registry", "serving"]


def _tracked_python() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return [REPO / f for f in out if f.split("/")[0] in PYTHON_DIRS and (REPO / f).is_file()]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _tasks_imports() -> dict[str, set[str]]:
    """Every ``tasks`` module and the ``tasks`` modules it imports (at the top or inside functions)."""
    files = {_module_name(p): p for p in (REPO / "tasks").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("tasks")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_module_in_tasks_is_over_the_limit():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "tasks").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_limit():
    long = []
    for path in _tracked_python():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycles_between_modules():
    assert _cycles(_tasks_imports()) == []


def test_stages_import_only_earlier_stages():
    wrong = defaultdict(set)
    for module, deps in _tasks_imports().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in STAGES:
            continue
        for dep in deps:
            dep_stage = dep.split(".")[1]
            if dep_stage in STAGES and STAGES.index(dep_stage) > STAGES.index(parts[1]):
                wrong[module].add(dep)
    assert not wrong, f"a stage imports a later stage: {dict(wrong)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_edits_sys_path():
    edits = [f"{p.relative_to(REPO)}:{i}" for p in _tracked_python()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*=|sys\.path\s*\+=", line)
             and p.name != "test_layout.py"]
    assert not edits, f"sys.path edits: {edits}"


@pytest.mark.parametrize("stage", STAGES + ["datasets"])
def test_every_subpackage_says_what_it_owns(stage):
    doc = ast.get_docstring(ast.parse((REPO / "tasks" / stage / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"tasks/{stage}/__init__.py needs a docstring saying what it owns"
