"""The layout's rules, read from the source (AST; nothing is imported): libraries stand
alone, stages import no other stage, and jobs/ has no import circle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from suite_paths import ROOT

LIBRARIES = ("adapters", "encoders", "factors")
# Entry points run stages by design: the CLI dispatches, `kar run` runs them in order.
ENTRY_POINTS = {"jobs.cli", "jobs.run"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("jobs", *LIBRARIES):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()
# A stage (a recipe) is a module directly in jobs/; subpackages are plumbing and libraries.
STAGES = {m for m in MODULES if m.count(".") == 1 and (ROOT / "jobs" / f"{m[5:]}.py").is_file()}


def imports(module: str) -> set[str]:
    """Project modules `module` imports (at any depth, lazily or not, script blocks too)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found - {module}


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_import_nothing_from_the_job(library):
    for module in (m for m in MODULES if m.split(".")[0] == library):
        assert not {i for i in imports(module) if i.split(".")[0] == "jobs"}, module


def test_llm_engines_import_nothing_else_from_the_job():
    for module in (m for m in MODULES if m.startswith("jobs.llm")):
        outside = {i for i in imports(module) if i.startswith("jobs") and i != "jobs"}
        assert all(i.startswith("jobs.llm") for i in outside), (module, outside)


def test_nothing_but_entry_points_imports_a_stage():
    for module in set(MODULES) - ENTRY_POINTS:
        assert not (imports(module) & STAGES) - {module}, module


def test_plumbing_imports_no_rule_and_only_adapt_its_steps():
    """Infrastructure stands below the rules about our tables; adapt's own steps
    (jobs/adapting/) are adapt's alone."""
    for module in (m for m in MODULES if m.startswith("jobs.plumbing")):
        assert not {i for i in imports(module) if i.startswith("jobs.rules")}, module
    for module in set(MODULES) - {"jobs.adapt"}:
        if not module.startswith("jobs.adapting"):
            assert not {i for i in imports(module) if i.startswith("jobs.adapting")}, module


def test_nothing_imports_the_cli_back():
    """The CLI is the one entry file (spark-submit, ray job submit): a stage that ran itself
    as a script through it would close a circle."""
    assert not [m for m in MODULES if "jobs.cli" in imports(m)]


def test_jobs_import_graph_has_no_circle():
    graph = {m: imports(m) - ENTRY_POINTS for m in MODULES if m not in ENTRY_POINTS}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle


def test_the_rules_see_the_layout():
    """Guards the checks above against passing on nothing."""
    assert {"jobs.prepare", "jobs.adapt", "jobs.evaluate"} <= STAGES
    assert "jobs.plumbing.tables" in imports("jobs.adapt")
    assert {"jobs.adapting.training", "jobs.rules.vectors"} <= imports("jobs.adapt")
    assert "adapters.vectors" in imports("jobs.evaluate")
