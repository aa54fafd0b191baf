"""CPU floating-point flags for long CPU work (training).

Why: values too small for a normal float32 (denormals, below about 1e-38) take a slow path in the
CPU's arithmetic units, and the frozen encoder meets them. Measured side by side on 2 CPU threads
(docs/model-results.md, session 21): the training's encoding phase (80 augmented copies) 74 -> 63 s
and the encoder on 8 images 1.1-1.2x faster; the epochs after it within the machine's noise (5-8 %
faster in short runs, 3 % slower in the full one); the whole 10-shot training 305 -> 301 s. The trained
models' held-out figures came out the same to three decimals. It changes values only below float32's
normal range, but not bitwise, so it is scoped to training rather than left on for the whole process.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[bool]:
    """Flush float denormals to zero inside the block (where the CPU supports it); PyTorch's default,
    off, is restored on the way out. Yields whether flushing is on."""
    on = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield on
    finally:
        if on:
            torch.set_flush_denormal(False)
