"""Command-line data specifications -> samples.

  synthetic:N[:SEED[:SIZE]]   N generated bone-ultrasound images (sam2rad.data.synthetic, generator A)
  rfsim:N[:SEED]              generator B (sam2rad.data.rf_simulator: RF point scatterers)
  zsim:N[:SEED]               generator C (sam2rad.data.impedance_simulator: impedance interfaces, I/Q)
  PATH/                       a folder with imgs/ and gts/ PNGs (the public Sam2Rad layout)
  PATH/ or PATH.npz           NPZ files with image, mask, optional spacing_mm
"""
from __future__ import annotations

from pathlib import Path

from .datasets import NpzDataset, PngFolderDataset, Sample, from_synthetic
from .synthetic import generate


def load_spec(spec: str) -> tuple[list[Sample], str]:
    """Returns the samples and a short description for model cards."""
    if spec.startswith("rfsim:"):  # generator B, sam2rad.data.rf_simulator: rfsim:N[:SEED]
        from .rf_simulator import load_rf_spec; return load_rf_spec(spec)  # noqa: E702
    if spec.startswith("zsim:"):  # generator C, sam2rad.data.impedance_simulator: zsim:N[:SEED]
        from .impedance_simulator import load_impedance_spec; return load_impedance_spec(spec)  # noqa: E702
    if spec.startswith("synthetic:"):
        parts = spec.split(":")[1:]
        try:
            n = int(parts[0])
            seed = int(parts[1]) if len(parts) > 1 else 0
            size = int(parts[2]) if len(parts) > 2 else 256
        except (ValueError, IndexError):
            raise ValueError(f"bad synthetic spec {spec!r}; use synthetic:N[:SEED[:SIZE]]") from None
        if n < 1:
            raise ValueError("synthetic:N needs N >= 1")
        # Seeds far apart so training and test sets built from different base seeds never overlap.
        samples = [generate(seed * 100_000 + i, size, text=(i % 3 == 0)) for i in range(n)]
        return from_synthetic(samples, prefix=f"synthetic-s{seed}"), f"synthetic n={n} seed={seed} size={size}"
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"data not found: {spec} (expected synthetic:N, rfsim:N, zsim:N, an imgs/gts folder, or NPZ files)")
    if path.is_dir() and (path / "imgs").is_dir():
        ds = PngFolderDataset(path)
    else:
        ds = NpzDataset(path)
    return [ds[i] for i in range(len(ds))], f"{type(ds).__name__}({path})"
