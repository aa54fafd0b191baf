"""Per-image segmentation metrics on arrays: overlap (Dice, IoU) and distances (HD95, ASSD, Hausdorff).

Conventions, shared by every function here:
- Masks are arrays of equal shape (2-D images; any dimensionality works); foreground is nonzero.
- `spacing` is the pixel size per axis in array order, (row, col) for an image, in mm; None means
  distances are in pixels.
- Surfaces are the boundary pixels of a mask: foreground pixels with a face-connected (4-connected
  in 2-D) background neighbour; the image edge counts as background, so a mask cut by the edge has a
  surface there.
- HD95 and ASSD are symmetric: the 95th percentile (numpy's linear interpolation) and the mean of
  the *union* of both directed surface-distance sets (A's surface to B's surface and back). Note that
  MedPy's `hd95` takes the max of the two directed 95th percentiles and its `assd` averages the two
  directed means; those differ from these when the two surfaces have different sizes.
- `hausdorff` is the full-object Hausdorff distance (every foreground pixel, not just the surface),
  which is what SimpleITK's HausdorffDistanceImageFilter computes. It is not the surface Hausdorff:
  e.g. for A inside B it is 0 from A's side, while A's surface is still some way from B's.
- Empty masks: both empty -> Dice = IoU = 1.0 and every distance is nan (nothing to measure, nothing
  wrong); exactly one empty -> Dice = IoU = 0.0 and every distance is inf (a missed or hallucinated
  object is maximally wrong; inf sorts last and is not silently dropped by nan-aware means).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

Spacing = Sequence[float] | None


def _as_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 0:
        raise ValueError("masks must have at least one dimension")
    return a != 0, b != 0


def _sampling(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    out = tuple(float(s) for s in spacing)
    if len(out) != ndim:
        raise ValueError(f"spacing has {len(out)} values for {ndim}-D masks: {spacing!r}")
    if not all(np.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}")
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = _as_pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union (Jaccard) |A∩B| / |A∪B|; 1.0 when both are empty."""
    a, b = _as_pair(a, b)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a mask (see module conventions)."""
    mask = np.asarray(mask) != 0
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Spacing = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances: for each surface pixel of A the distance to B's surface, and back.

    Both masks must be non-empty.
    """
    a, b = _as_pair(a, b)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    sampling = _sampling(spacing, a.ndim)
    sa, sb = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return to_b[sa], to_a[sb]


def _empty_case(a: np.ndarray, b: np.ndarray) -> float | None:
    """The distance convention for empty masks, or None when both are non-empty."""
    has_a, has_b = bool(a.any()), bool(b.any())
    if has_a and has_b:
        return None
    return float("nan") if not (has_a or has_b) else float("inf")


def _symmetric_surface_distances(a: np.ndarray, b: np.ndarray, spacing: Spacing) -> np.ndarray | float:
    """Both directed surface-distance sets, joined; or the NaN/inf answer when a mask is empty."""
    a, b = _as_pair(a, b)
    _sampling(spacing, a.ndim)
    empty = _empty_case(a, b)
    if empty is not None:
        return empty
    return np.concatenate(surface_distances(a, b, spacing))


def hd95(a: np.ndarray, b: np.ndarray, spacing: Spacing = None) -> float:
    """95th percentile of the symmetric surface distances (units of `spacing`, else pixels)."""
    d = _symmetric_surface_distances(a, b, spacing)
    return d if isinstance(d, float) else float(np.percentile(d, 95))


def assd(a: np.ndarray, b: np.ndarray, spacing: Spacing = None) -> float:
    """Average symmetric surface distance: mean over both directed surface-distance sets."""
    d = _symmetric_surface_distances(a, b, spacing)
    return d if isinstance(d, float) else float(d.mean())


def hausdorff(a: np.ndarray, b: np.ndarray, spacing: Spacing = None) -> float:
    """Full-object Hausdorff distance, max over both directions of the farthest foreground pixel's
    distance to the other mask's foreground; equals SimpleITK's HausdorffDistanceImageFilter."""
    a, b = _as_pair(a, b)
    sampling = _sampling(spacing, a.ndim)
    empty = _empty_case(a, b)
    if empty is not None:
        return empty
    to_b = ndimage.distance_transform_edt(~b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~a, sampling=sampling)
    return float(max(to_b[a].max(), to_a[b].max()))


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metrics of one predicted mask against its reference. Distances are in `unit`."""

    dice: float
    iou: float
    hd95: float
    assd: float
    hausdorff: float
    pred_pixels: int
    gt_pixels: int
    unit: str  # "mm" when a spacing was given, else "px"

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def evaluate_pair(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> SegmentationMetrics:
    """All metrics for one prediction/reference pair (foreground = nonzero)."""
    p, g = _as_pair(pred, gt)
    _sampling(spacing, p.ndim)
    empty = _empty_case(p, g)
    if empty is None:  # share one pair of distance transforms between HD95 and ASSD
        union = np.concatenate(surface_distances(p, g, spacing))
        surface_hd95, surface_mean = float(np.percentile(union, 95)), float(union.mean())
    else:
        surface_hd95 = surface_mean = empty
    return SegmentationMetrics(
        dice=dice(p, g),
        iou=iou(p, g),
        hd95=surface_hd95,
        assd=surface_mean,
        hausdorff=hausdorff(p, g, spacing),
        pred_pixels=int(p.sum()),
        gt_pixels=int(g.sum()),
        unit="px" if spacing is None else "mm",
    )
