"""Rules the code base keeps: one-way layers, no import cycles, small modules, no torchvision/timm, no CUDA
wheels on CPU machines."""
from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "sam2rad": {"pydicom", "highdicom", "prefect", "pipeline", "flows", "torchvision", "timm"},
    "pipeline": {"prefect", "flows", "torchvision", "timm"},
    "flows": {"torchvision", "timm"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"forbidden imports: {offenders}"


def test_no_torchvision_or_timm_anywhere():
    for folder in ("sam2rad", "pipeline", "flows", "tests", "benchmarks", "deploy", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not imported_roots(path) & {"torchvision", "timm"}, path


def test_environment_has_no_cuda_or_broken_packages():
    """The CPU install must not pull nvidia-* wheels, torchvision or timm (scripts/install.sh)."""
    import torch

    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    if torch.version.cuda is None:
        assert not {n for n in names if n.startswith("nvidia-")}, sorted(n for n in names if n.startswith("nvidia-"))
    assert not names & {"torchvision", "timm"}


def test_weights_are_never_unpickled_unsafely():
    """Every torch.load in the project passes weights_only=True."""
    for folder in ("sam2rad", "pipeline", "flows", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" \
                        and getattr(node.func, "value", None) is not None \
                        and getattr(node.func.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, path


PACKAGES = ("sam2rad", "pipeline", "flows")
MAX_MODULE_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body (lazy imports inside functions included),
    resolved to the longest known module name (`from pkg import mod` counts as importing pkg.mod)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_cycles_among_project_modules():
    paths = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {name: _project_imports(path, set(paths)) - {name} for name, path in paths.items()}
    # A package's __init__ importing its own submodules is how packages re-export: not a cycle.
    graph = {name: {dep for dep in deps if not dep.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep):] + [dep] if dep in trail else [node, dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modules_stay_small():
    too_long = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            n = len(path.read_text().splitlines())
            if n > MAX_MODULE_LINES:
                too_long[rel] = n
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {too_long}"


def test_no_top_level_modules_and_no_demo_data_in_the_dicom_layer():
    assert not [p.name for p in ROOT.glob("*.py")], "entry points live in flows/ (flows/cli)"
    assert not [str(p) for p in (ROOT / "pipeline").rglob("*demo*")], "demo generation lives in flows/demo"
