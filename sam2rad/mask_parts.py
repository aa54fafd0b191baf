"""Spurious parts of a mask: separate blobs far smaller than its main part, or far weaker.

Why: on images unlike the training set, `auto` masks carry small false blobs away from the structure
(speckle that looks like bone); each one drives HD95 up by its distance. Dropping the parts under a
tenth of the largest part's area, measured on held-out images (train A, 20 each, one checkpoint):
A->B Dice 0.655 -> 0.658, HD95 median 0.92 -> 0.81 mm (mean 4.43 -> 3.62); A->A 0.858 -> 0.860,
0.29 -> 0.27 mm. Keeping only the largest part was much worse (0.565 on B: bones that the image
shows in pieces lose pieces). Applied in `auto` only: in `semi` a reader's click may add a small part
on purpose.

Size alone leaves the larger false parts. On 20 held-out B images with the demo model (trained on A),
each of the 9 parts (of at least a tenth of the largest) that overlap no bone had a mean logit of 1.0-4.9.
All true parts but two had 6.7 or more; the two were a 20-pixel piece (2.4) and one two-thirds on bone (4.1).
Dropping the parts under half the largest part's mean logit, on the logits in model space (where semi's
clicks edit them: the source grid measures a thin part's mean a little lower, and a part dropped only there
came back with a click), measured on the
session 18 models (3 seeds; auto Dice / HD95 median): A -> B held-out 0.757 / 0.54 -> 0.766 / 0.44 mm;
on the blind set, not looked at while choosing, 0.799 / 0.47 -> 0.808 / 0.45 mm; B -> B, A -> A and
B -> A unchanged (README, session 19).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

DEFAULT_MIN_PART_FRACTION = 0.1
# A part whose mean logit is under half the largest part's goes too (session 19): across generators the
# false parts are far weaker than the main one.
DEFAULT_MIN_PART_CONFIDENCE = 0.5


def drop_small_parts(mask: np.ndarray, min_fraction: float = DEFAULT_MIN_PART_FRACTION,
                     logits: np.ndarray | None = None, threshold: float = 0.0,
                     min_confidence: float = DEFAULT_MIN_PART_CONFIDENCE) -> np.ndarray:
    """`mask` (2-D bool) without the 8-connected parts smaller than min_fraction x its largest part,
    and, given the logits it was thresholded from, without the parts whose mean logit (above the
    threshold) is under min_confidence x the largest part's."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= min_fraction * sizes.max()
    if logits is not None and min_confidence > 0:
        strength = ndimage.mean(logits - threshold, labels, range(1, n + 1))
        keep[1:] &= strength >= min_confidence * strength[int(np.argmax(sizes))]
    return keep[labels]


def auto_base(logits: torch.Tensor, threshold: float, min_part_fraction: float | None) -> torch.Tensor:
    """`auto`'s logits (1, 1, s, s) as `auto` shows them: small and weak parts dropped, set under the
    threshold. Dropped in model space, on the logits, so that `auto`'s mask and the one `semi`'s clicks
    edit are the same part for part: a click would bring back a part dropped only on the source grid
    (session 19)."""
    if min_part_fraction is None:
        return logits
    values = logits[0, 0].cpu().numpy()
    mask = values > threshold
    dropped = mask & ~drop_small_parts(mask, min_part_fraction, values, threshold)
    if not dropped.any():
        return logits
    out = logits.clone()
    out[0, 0][torch.as_tensor(dropped, device=logits.device)] = threshold - 1.0
    return out
