"""What the SEG says about the algorithm and the classes it segmented."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from highdicom.sr.coding import CodedConcept

SEGMENTATION_MODES = ("auto", "semi", "manual")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SegAlgorithm:
    """Identity of the model that produced the masks; it decides the SEG's UIDs.

    `mode` is how the prompts were obtained: "auto" (PPN only), "semi" (PPN plus a reader's
    corrections) or "manual" (a reader's prompts only).
    """

    name: str
    version: str
    backbone_fingerprint: str
    checkpoint_sha256: str
    mode: str
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        for field_name in ("name", "version", "backbone_fingerprint"):
            if not str(getattr(self, field_name)).strip():
                raise ValueError(f"SegAlgorithm.{field_name} must not be empty")
        if not _SHA256.match(self.checkpoint_sha256):
            raise ValueError(
                f"SegAlgorithm.checkpoint_sha256 must be 64 lowercase hex digits, got {self.checkpoint_sha256!r}"
            )
        if self.mode not in SEGMENTATION_MODES:
            raise ValueError(f"SegAlgorithm.mode must be one of {SEGMENTATION_MODES}, got {self.mode!r}")
        if isinstance(self.class_names, str) or not self.class_names:
            raise ValueError("SegAlgorithm.class_names must be a non-empty tuple of names")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if any(not n.strip() for n in self.class_names) or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"SegAlgorithm.class_names must be unique and non-empty: {self.class_names}")

    @property
    def fingerprint(self) -> str:
        """sha256 over every field: a different model, checkpoint, mode or class list is a different SEG."""
        payload = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def algorithm_parameters(self) -> dict[str, str]:
        return {
            "backbone_fingerprint": self.backbone_fingerprint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "mode": self.mode,
        }


@dataclass(frozen=True)
class SegmentClass:
    """How one model class is coded in the SEG (SNOMED CT category and type) and displayed."""

    name: str
    category: CodedConcept
    property_type: CodedConcept
    display_rgb: tuple[int, int, int]

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("SegmentClass.name must not be empty")
        if len(self.display_rgb) != 3 or any(not 0 <= int(c) <= 255 for c in self.display_rgb):
            raise ValueError(f"display_rgb must be three values in 0..255, got {self.display_rgb}")


TISSUE = CodedConcept("85756007", "SCT", "Tissue")
BONE = CodedConcept("272673000", "SCT", "Bone")

# Classes the pipeline knows by name; the colour is 3D Slicer's bone colour so viewers agree.
KNOWN_SEGMENT_CLASSES: dict[str, SegmentClass] = {
    "bone": SegmentClass("bone", TISSUE, BONE, (241, 214, 145)),
}


def segment_classes_for(
    card: SegAlgorithm, extra: dict[str, SegmentClass] | None = None
) -> tuple[SegmentClass, ...]:
    """The coded class for each of the card's class names, in order (segment number = index + 1)."""
    catalog = {**KNOWN_SEGMENT_CLASSES, **(extra or {})}
    missing = [n for n in card.class_names if n not in catalog]
    if missing:
        raise ValueError(
            f"no SNOMED coding known for class(es) {missing}; pass SegmentClass entries for them"
        )
    return tuple(catalog[n] for n in card.class_names)
