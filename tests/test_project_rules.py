"""Rules the code base keeps: one-way layers, no torchvision/timm, no CUDA wheels on CPU machines."""
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
