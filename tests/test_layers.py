"""Which parts of Cortex may build on which: the services on the engine, the engine on the providers.

The check reads the source (every import, including those inside functions) and follows imports
from module to module within the app, so an indirect import through a third module counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "orchestrator"


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in APP.rglob("*.py") if "migrations" not in path.parts}


def imported_by(module: str) -> set[str]:
    """The app's modules that `module` imports, wherever in the file the import is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            # `from package import module` imports the module.
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def reachable_from(module: str) -> dict[str, str]:
    """Every app module `module` imports directly or indirectly, each with the module importing it."""
    seen = {module: ""}
    queue = [module]
    while queue:
        current = queue.pop()
        for name in imported_by(current):
            if name not in seen:
                seen[name] = current
                queue.append(name)
    return seen


def chain(seen: dict[str, str], target: str) -> str:
    links = [target]
    while seen[links[-1]]:
        links.append(seen[links[-1]])
    return " → ".join(reversed(links))


LOWER = sorted(name for name in MODULES
               if name.startswith(("orchestrator.engine", "orchestrator.providers")))


@pytest.mark.parametrize("module", LOWER)
def test_the_engine_and_the_providers_do_not_import_the_services(module):
    seen = reachable_from(module)
    assert "orchestrator.services" not in seen, chain(seen, "orchestrator.services")


@pytest.mark.parametrize("module", [name for name in LOWER if name.startswith("orchestrator.providers")])
def test_the_providers_do_not_import_the_engine(module):
    seen = reachable_from(module)
    engine = sorted(name for name in seen if name.startswith("orchestrator.engine"))
    assert not engine, chain(seen, engine[0])


def test_the_check_sees_direct_relative_and_indirect_imports():
    assert {"orchestrator.services", "orchestrator.selectors"} <= imported_by("orchestrator.views.jobs")
    assert "orchestrator.engine.state" in imported_by("orchestrator.engine.loop")  # from . import state
    assert "orchestrator.transitions" in imported_by("orchestrator.engine.state")  # from ..transitions import …
    seen = reachable_from("orchestrator.urls")
    assert chain(seen, "orchestrator.services").count("→") == 2  # urls → a views module (or api) → services


TRANSITION_FIELDS = {"status", "started_at", "completed_at", "lease_owner", "lease_expires_at"}


def status_changes(module: str) -> list[str]:
    """Where `module` sets a job's status or lease itself, or appends a `job.status` event."""
    path = MODULES[module]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "job" and target.attr in TRANSITION_FIELDS):
                found.append(f"line {node.lineno}: job.{target.attr} = …")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            found += [f"line {node.lineno}: update({keyword.arg}=…)" for keyword in node.keywords
                      if keyword.arg in TRANSITION_FIELDS]
        if isinstance(node, ast.Tuple) and node.elts and isinstance(node.elts[0], ast.Constant) \
                and node.elts[0].value == "job.status":
            found.append(f"line {node.lineno}: a job.status event")
    return found


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"orchestrator.transitions"}))
def test_job_statuses_change_only_in_the_transitions(module):
    assert status_changes(module) == []


def test_the_transitions_check_sees_what_it_looks_for():
    assert len(status_changes("orchestrator.transitions")) >= 10
