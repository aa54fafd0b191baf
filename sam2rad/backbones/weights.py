"""Safe, checksummed weight loading (never unpickles arbitrary objects)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch


class WeightsError(RuntimeError):
    """A weights file is missing, corrupt, or does not fit the architecture."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file with weights_only=True.

    When `expected_sha256` is given the file is hashed first and refused on mismatch, so a swapped
    or truncated file never reaches the model.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise WeightsError(
                f"checksum mismatch for {path}: expected sha256 {expected_sha256}, got {actual}"
            )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    # Checkpoints wrap the weights under a key in several public conventions.
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a state dict")
    return dict(state)


def take_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Sub-dict of keys starting with `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def rename_sam1_mlp_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM v1's two-way transformer MLP names its layers lin1/lin2; the sam2 package uses layers.0/1."""
    return {k.replace("mlp.lin1.", "mlp.layers.0.").replace("mlp.lin2.", "mlp.layers.1."): v
            for k, v in state.items()}
