"""What a caller hands the model: a reader's prompts and an image, checked before any work starts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NUMERIC_KINDS = "uif"  # unsigned, signed, float; bool/complex/object/str are refused


@dataclass
class Prompts:
    """A reader's prompts for one class of one image, in source-image pixels (x, y)."""

    points: np.ndarray | None = None  # (P, 2)
    labels: np.ndarray | None = None  # (P,) 1 = inside the structure, 0 = outside
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1
    mask: np.ndarray | None = None  # (H, W) prior mask (bool or probability)
    class_index: int = 0
    # Edge clicks (sam2rad/edge_click.py): each moves the nearest edge of the surface, along the whole
    # mask, to the click. 1 = the structure reaches here, 0 = it stops before here. semi mode only.
    edges: np.ndarray | None = None  # (E, 2)
    edge_labels: np.ndarray | None = None  # (E,)
    # End clicks: the surface ends here. On the mask, the part from the click's column outwards (away
    # from the middle of the mask) goes; beyond an end, the surface reaches the click. Applied last,
    # after point and edge clicks. semi mode only.
    ends: np.ndarray | None = None  # (N, 2)
    # Shift clicks: like edge clicks, the nearest edge goes to the click, and the whole surface moves
    # with it (both edges by as many rows), for a mask drawn too shallow or too deep as a whole. semi only.
    shifts: np.ndarray | None = None  # (S, 2)
    shift_labels: np.ndarray | None = None  # (S,)
    # The reader's clicks in the order made: "point", "edge", "end" or "shift" per click, each kind's clicks in
    # the order of its array. Given, each click edits the mask the ones before it made
    # (sam2rad/semi_edit.py); None: by tool, edge clicks first and end clicks last.
    order: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            self.points, self.labels = _clicks(self.points, self.labels, "point")
        if self.edges is not None:
            self.edges, self.edge_labels = _clicks(self.edges, self.edge_labels, "edge")
        if self.ends is not None:
            self.ends, _ = _clicks(self.ends, None, "end click")
        if self.shifts is not None:
            self.shifts, self.shift_labels = _clicks(self.shifts, self.shift_labels, "shift click")
        if self.order is not None:
            self.order = _click_order(self.order, {"point": self.points, "edge": self.edges, "end": self.ends,
                                                   "shift": self.shifts})
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(-1)
            if self.box.shape != (4,) or not np.isfinite(self.box).all():
                raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1, got {self.box}")
            if self.box[2] < self.box[0] or self.box[3] < self.box[1]:
                raise ValueError(f"box corners are reversed: {self.box.tolist()} (want x0 <= x1, y0 <= y1)")

    @property
    def surface_clicks(self) -> bool:
        """Edge, end or shift clicks: edits of auto's mask (semi mode only)."""
        return self.edges is not None or self.ends is not None or self.shifts is not None

    @property
    def empty(self) -> bool:
        return self.points is None and self.box is None and self.mask is None and not self.surface_clicks


def _clicks(coords, labels, kind: str) -> tuple[np.ndarray, np.ndarray]:
    coords = np.asarray(coords, dtype=np.float32).reshape(-1, 2)
    labels = np.asarray(np.ones(len(coords)) if labels is None else labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(coords):
        raise ValueError(f"{len(coords)} {kind}s but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{kind} labels must be 1 (foreground) or 0 (background)")
    if not np.isfinite(coords).all():
        raise ValueError(f"{kind} coordinates must be finite numbers")
    return coords, labels


def _click_order(order, clicks: dict[str, np.ndarray | None]) -> tuple[str, ...]:
    order = (order,) if isinstance(order, str) else tuple(str(k) for k in order)
    unknown = sorted(set(order) - set(clicks))
    if unknown:
        raise ValueError(f"click order names {unknown}; each entry must be one of {sorted(clicks)}")
    for kind, coords in clicks.items():
        n = 0 if coords is None else len(coords)
        if order.count(kind) != n:
            raise ValueError(f"click order has {order.count(kind)} {kind} clicks, the prompts {n}")
    return order


def validate_image(image: object, name: str = "image") -> np.ndarray:
    """Refuse what the model cannot take, with a message that says what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"{name} has dtype {image.dtype}; expected an integer or float array")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (H, W) or 3-D (H, W, C), got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        raise ValueError(f"{name} has {image.shape[2]} channels; expected 1 (grey) or 3 (RGB)")
    if image.size == 0 or 0 in image.shape[:2]:
        raise ValueError(f"{name} is empty: shape {image.shape} has a 0-pixel side")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return image
