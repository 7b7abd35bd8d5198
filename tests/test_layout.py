"""The Ray code lives in one subpackage: the core beside it never imports Ray, directly or through it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cll_ray"
RAY_PACKAGE = PACKAGE / "distributed"
ENTRY_POINTS = {PACKAGE / "cli.py"}  # the command line starts the Ray adapters, inside its commands


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def core_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if RAY_PACKAGE not in p.parents]


def test_imported_modules_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from ray import tune\n    import ray.data\n")
    assert imported_modules(probe) == {"os", "ray", "ray.data"}


def test_no_module_outside_the_ray_subpackage_imports_ray():
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "ray")
                 for p in core_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_core_does_not_reach_ray_through_the_subpackage():
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p)
                                                     if m.startswith("cll_ray.distributed"))
                 for p in core_modules() if p not in ENTRY_POINTS}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_ray_user_is_in_the_subpackage_and_the_subpackage_uses_ray():
    users = {p.name for p in RAY_PACKAGE.glob("*.py")
             if any(m.split(".")[0] == "ray" for m in imported_modules(p))}
    assert users >= {"cluster.py", "driver.py", "worker.py", "train_data.py", "feature_job.py", "tuner.py"}
