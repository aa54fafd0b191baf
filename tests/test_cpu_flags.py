"""sam2rad/cpu_flags.py: denormals flushed inside the block only."""
import torch

from sam2rad.cpu_flags import flush_denormals

TINY = 1e-39  # a float32 denormal


def _survives() -> bool:
    return float(torch.tensor([TINY], dtype=torch.float32) * 1.0) != 0.0


def test_denormals_are_flushed_inside_the_block_and_kept_after_it():
    assert _survives()
    with flush_denormals() as on:
        inside = _survives()
    assert _survives()  # PyTorch's default is back
    if on:  # CPUs without the flag (set_flush_denormal returns False) keep denormals
        assert not inside


def test_disabled_or_raising_blocks_change_nothing():
    with flush_denormals(False) as on:
        assert not on and _survives()
    try:
        with flush_denormals():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert _survives()
