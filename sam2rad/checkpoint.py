"""PPN checkpoints: safetensors with the PPN weights only, plus a JSON model card.

`<stem>.safetensors` holds tensors; `<stem>.json` says which frozen backbone (name + weights
fingerprint) they were trained against, the PPN config, training data summary, metrics and code
version. Loading refuses a checkpoint whose backbone fingerprint differs from the backbone at hand:
PPN weights are meaningless on top of other features.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from . import __version__
from .atomic_files import replace_atomically
from .backbones import Backbone, build_backbone
from .backbones.weights import sha256_file
from .confidence import ConfidenceReference
from .model import Sam2Rad
from .ppn import PPNConfig
from .refine import RefinerConfig

CARD_FORMAT = "sam2rad-ppn/1"
DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "demo_litemedsam_bone.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or belongs to another backbone."""


@dataclass
class ModelCard:
    backbone_name: str
    backbone_fingerprint: str
    input_size: int
    ppn_config: dict
    class_names: list[str]
    training: dict = field(default_factory=dict)
    refiner_config: dict = field(default_factory=lambda: {"enabled": False})  # older cards: no refiner
    metrics: dict = field(default_factory=dict)
    confidence: dict = field(default_factory=dict)  # ConfidenceReference on the training images; {} before
    code_version: str = ""
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> "ModelCard":
        try:
            data = json.loads(text)
            if data.get("format") != CARD_FORMAT:
                raise CheckpointError(f"{where}: unknown card format {data.get('format')!r} (want {CARD_FORMAT})")
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise CheckpointError(f"{where}: malformed model card: {exc}") from exc


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_checkpoint(model: Sam2Rad, path: str | Path, training: dict | None = None,
                    metrics: dict | None = None) -> ModelCard:
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    card = ModelCard(
        backbone_name=model.backbone.name, backbone_fingerprint=model.backbone.fingerprint,
        input_size=model.backbone.input_size, ppn_config=model.ppn.cfg.to_dict(),
        class_names=list(model.class_names), training=training or {}, metrics=metrics or {},
        code_version=code_version(), refiner_config=model.refiner_config.to_dict(),
        confidence=model.confidence_reference.to_dict() if model.confidence_reference is not None else {},
    )
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state().items()}
    replace_atomically(lambda tmp: save_file(state, str(tmp), metadata={"format": CARD_FORMAT}), path)
    replace_atomically(lambda tmp: tmp.write_text(card.to_json()), card_path(path))
    return card


def read_card(path: str | Path) -> ModelCard:
    path = Path(path)
    cp = card_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not cp.is_file():
        raise CheckpointError(f"model card not found beside the checkpoint: {cp}")
    return ModelCard.from_json(cp.read_text(), str(cp))


def load_checkpoint(path: str | Path | None = None, backbone: Backbone | None = None,
                    backbone_checkpoint: str | None = None, device: str = "cpu") -> Sam2Rad:
    """Sam2Rad from a PPN checkpoint (default: the shipped demo checkpoint).

    The backbone is built from the card unless given; SAM2 backbones need `backbone_checkpoint`
    (a local weights path), or its fingerprint will not match.
    """
    path = Path(path) if path is not None else DEMO_CHECKPOINT
    card = read_card(path)
    if backbone is None:
        pretrained = "random-seed" not in card.backbone_fingerprint
        seed = int(card.backbone_fingerprint.rsplit("random-seed", 1)[1]) if not pretrained else 0
        backbone = build_backbone(card.backbone_name, backbone_checkpoint, pretrained=pretrained,
                                  input_size=card.input_size, seed=seed)
    if backbone.fingerprint != card.backbone_fingerprint:
        raise CheckpointError(
            f"{path} was trained on backbone {card.backbone_fingerprint} but the backbone given is "
            f"{backbone.fingerprint}; PPN weights only work on the exact backbone weights they were "
            "trained with (pass the matching backbone checkpoint, or retrain)"
        )
    model = Sam2Rad(backbone, PPNConfig(**card.ppn_config), card.class_names,
                    refiner_config=RefinerConfig(**card.refiner_config))
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_trainable_state(state)
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    model.confidence_reference = ConfidenceReference.from_dict(card.confidence)
    model.card = card  # type: ignore[attr-defined]
    model.checkpoint_sha256 = sha256_file(path)  # type: ignore[attr-defined]
    return model.to(device).eval()


def describe(model: Sam2Rad) -> dict[str, Any]:
    """What a SEG's algorithm identification and the metrics tables record about the model."""
    return {
        "backbone": model.backbone.name,
        "backbone_fingerprint": model.backbone.fingerprint,
        "checkpoint_sha256": getattr(model, "checkpoint_sha256", "untrained"),
        "class_names": list(model.class_names),
        "code_version": code_version(),
    }
