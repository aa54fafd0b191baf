"""Spurious parts of a mask: separate blobs far smaller than its main part.

Why: on images unlike the training set, `auto` masks carry small false blobs away from the structure
(speckle that looks like bone); each one drives HD95 up by its distance. Dropping the parts under a
tenth of the largest part's area, measured on held-out images (train A, 20 each, one checkpoint):
A->B Dice 0.655 -> 0.658, HD95 median 0.92 -> 0.81 mm (mean 4.43 -> 3.62); A->A 0.858 -> 0.860,
0.29 -> 0.27 mm. Keeping only the largest part was much worse (0.565 on B: bones that the image
shows in pieces lose pieces). Applied in `auto` only: in `semi` a reader's click may add a small part
on purpose.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

DEFAULT_MIN_PART_FRACTION = 0.1


def drop_small_parts(mask: np.ndarray, min_fraction: float = DEFAULT_MIN_PART_FRACTION) -> np.ndarray:
    """`mask` (2-D bool) without the 8-connected parts smaller than min_fraction x its largest part."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= min_fraction * sizes.max()
    return keep[labels]
