"""Shifting mask logits along the image's rows (depth), by a sub-pixel amount: the moves of the
surface tools (sam2rad/edge_click.py, shift clicks) are made of these."""
from __future__ import annotations

import math

import numpy as np
import torch


def shift_rows(logits: torch.Tensor, amount: float) -> torch.Tensor:
    """Shift (…, s, s) logits down by `amount` rows (up when negative), linearly between rows; the
    rows uncovered take the nearest edge row, so nothing new appears at the border."""
    whole = math.floor(amount)
    frac = amount - whole
    out = None
    for rows, weight in ((whole, 1.0 - frac), (whole + 1, frac)):
        if weight == 0.0:
            continue
        idx = (torch.arange(logits.shape[-2], device=logits.device) - rows).clamp(0, logits.shape[-2] - 1)
        part = logits.index_select(-2, idx) * weight
        out = part if out is None else out + part
    return out


def shift_rows_by_column(logits: torch.Tensor, amounts: np.ndarray) -> torch.Tensor:
    """Like shift_rows with one amount per column."""
    h = logits.shape[-2]
    a = torch.as_tensor(amounts, dtype=logits.dtype, device=logits.device)
    whole = torch.floor(a)
    rows = torch.arange(h, device=logits.device)[:, None]
    out = torch.zeros_like(logits[0, 0])
    for k, weight in ((whole, 1.0 - (a - whole)), (whole + 1, a - whole)):
        idx = (rows - k[None, :].long()).clamp(0, h - 1)
        out = out + torch.gather(logits[0, 0], 0, idx) * weight[None, :]
    return out[None, None]
