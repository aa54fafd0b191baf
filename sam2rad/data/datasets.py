"""Image/mask datasets: PNG folders (the public Sam2Rad `imgs/` + `gts/` layout), NPZ files, and
in-memory samples, behind one `Sample` type; seeded or named train/validation splits; export.

Layouts read here:
- PNG folder: `root/imgs/<name>.<ext>` and `root/gts/<name>.png`, paired by file stem. Masks are
  label images: 0 is background, anything else foreground; multi-class masks keep their label
  values, except a mask whose only nonzero value is 255 (a binary mask saved white), read as 0/1.
  Optional `root/spacing_mm.json`, {name: [row_mm, col_mm]}; PNG itself has no spacing.
- NPZ: one file per sample with `image`, `mask` and optionally `spacing_mm` (two floats); the file
  stem is the sample name.
Folder datasets check pairing and image/mask sizes when built (from PNG headers, without decoding)
and decode pixels only when a sample is read, so large folders are cheap to open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from sam2rad.data.synthetic import SyntheticSample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless only: JPEG would corrupt label values
SPACING_FILE = "spacing_mm.json"


@dataclass(frozen=True)
class Sample:
    """One image with its reference mask.

    image: uint8 (H, W) grey or (H, W, 3) colour.
    mask: (H, W) bool or integer labels, 0 = background.
    spacing_mm: (row, col) pixel spacing in mm, or None when unknown.
    name: identifier, unique within a dataset (file stem for folder datasets).
    """

    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float] | None
    name: str

    def __post_init__(self) -> None:
        image, mask = np.asarray(self.image), np.asarray(self.mask)
        where = f"sample {self.name!r}"
        if not self.name:
            raise ValueError("sample name must be a non-empty string")
        if image.dtype != np.uint8:
            raise ValueError(f"{where}: image must be uint8, got {image.dtype}")
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"{where}: image must be (H, W) or (H, W, 3), got {image.shape}")
        if mask.ndim != 2 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
            raise ValueError(f"{where}: mask must be a 2-D bool or integer array, got {mask.dtype} {mask.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{where}: mask shape {mask.shape} does not match image shape {image.shape[:2]}")
        if self.spacing_mm is not None:
            spacing = tuple(float(v) for v in self.spacing_mm)
            if len(spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing):
                raise ValueError(f"{where}: spacing_mm must be two positive numbers, got {self.spacing_mm!r}")
            object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "mask", mask)

    @property
    def foreground(self) -> np.ndarray:
        """Binary mask: any nonzero label."""
        return self.mask != 0


# --------------------------------------------------------------------------------------------------
# Datasets.


class SampleDataset(Sequence[Sample]):
    """An ordered collection of named samples, loaded on access."""

    def __init__(self, names: Sequence[str], load: Callable[[str], Sample]):
        names = list(names)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate sample names: {duplicates[:5]}")
        self._names = names
        self._load = load

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            return self.subset(self._names[index])  # type: ignore[return-value]
        return self._load(self._names[index])

    def __iter__(self) -> Iterator[Sample]:
        for name in self._names:
            yield self._load(name)

    def by_name(self, name: str) -> Sample:
        if name not in self._names:
            raise KeyError(name)
        return self._load(name)

    def subset(self, names: Iterable[str]) -> "SampleDataset":
        names = list(names)
        unknown = sorted(set(names) - set(self._names))
        if unknown:
            raise ValueError(f"names not in the dataset: {unknown[:5]}")
        return SampleDataset(names, self._load)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"


class InMemoryDataset(SampleDataset):
    """Samples held in memory; SyntheticSamples are converted with `from_synthetic`."""

    def __init__(self, samples: Iterable[Sample | SyntheticSample], prefix: str = "synthetic"):
        items = _as_samples(samples, prefix)
        self._by_name = {s.name: s for s in items}
        super().__init__([s.name for s in items], self._by_name.__getitem__)


class PngFolderDataset(SampleDataset):
    """`root/imgs/*` images paired by stem with `root/gts/*` masks (the public Sam2Rad layout)."""

    def __init__(self, root: str | Path, images: str = "imgs", masks: str = "gts"):
        self.root = Path(root)
        self.image_dir, self.mask_dir = self.root / images, self.root / masks
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise ValueError(f"missing folder {folder} (expected {self.root}/{images} and {self.root}/{masks})")
        self._images = _files_by_stem(self.image_dir, IMAGE_SUFFIXES)
        self._masks = _files_by_stem(self.mask_dir, MASK_SUFFIXES)
        only_images = sorted(set(self._images) - set(self._masks))
        only_masks = sorted(set(self._masks) - set(self._images))
        if only_images or only_masks:
            raise ValueError(
                f"unpaired files in {self.root}: images without masks {only_images[:5]}"
                f"{' ...' if len(only_images) > 5 else ''}, masks without images {only_masks[:5]}"
                f"{' ...' if len(only_masks) > 5 else ''}"
            )
        if not self._images:
            raise ValueError(f"empty dataset: no image/mask pairs in {self.image_dir} and {self.mask_dir}")
        names = sorted(self._images)
        for name in names:  # sizes from headers only: cheap, and fails early rather than mid-training
            with Image.open(self._images[name]) as im, Image.open(self._masks[name]) as mk:
                if im.size != mk.size:
                    raise ValueError(
                        f"sample {name!r}: image {self._images[name].name} is {im.size[1]}x{im.size[0]} but "
                        f"mask {self._masks[name].name} is {mk.size[1]}x{mk.size[0]} (rows x cols)"
                    )
        self._spacing = _read_spacing_file(self.root / SPACING_FILE)
        super().__init__(names, self._read)

    def _read(self, name: str) -> Sample:
        return Sample(
            image=read_image(self._images[name]),
            mask=read_mask(self._masks[name]),
            spacing_mm=self._spacing.get(name),
            name=name,
        )


class NpzDataset(SampleDataset):
    """NPZ files with `image`, `mask` and optional `spacing_mm`: a folder of them, one file, or a list."""

    def __init__(self, source: str | Path | Sequence[str | Path]):
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                paths = sorted(p for p in path.glob("*.npz") if not p.name.startswith("."))
            elif path.is_file():
                paths = [path]
            else:
                raise ValueError(f"missing NPZ folder or file: {path}")
        else:
            paths = [Path(p) for p in source]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise ValueError(f"missing NPZ files: {missing[:5]}")
        if not paths:
            raise ValueError(f"empty dataset: no .npz files in {source}")
        self._paths = {p.stem: p for p in paths}
        if len(self._paths) != len(paths):
            raise ValueError("NPZ files with the same stem in different folders: names would clash")
        for name, p in self._paths.items():
            with np.load(p) as data:
                absent = {"image", "mask"} - set(data.files)
                if absent:
                    raise ValueError(f"{p}: missing array(s) {sorted(absent)}; has {sorted(data.files)}")
        super().__init__(sorted(self._paths), self._read)

    def _read(self, name: str) -> Sample:
        path = self._paths[name]
        with np.load(path) as data:
            image, mask = data["image"], data["mask"]
            spacing = data["spacing_mm"] if "spacing_mm" in data.files else None
        if spacing is not None:
            spacing = np.asarray(spacing, dtype=float).ravel()
            spacing = None if spacing.size == 0 or np.isnan(spacing).all() else tuple(spacing.tolist())
        try:
            return Sample(image=_as_uint8(image, f"{path}: image"), mask=mask, spacing_mm=spacing, name=name)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


# --------------------------------------------------------------------------------------------------
# Splits.


def train_val_split(dataset: SampleDataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[SampleDataset, SampleDataset]:
    """Random split: round(val_fraction * n) samples (at least one when val_fraction > 0) go to
    validation. Deterministic for a seed and the dataset's names."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = dataset.names
    n_val = int(round(val_fraction * len(names)))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if len(names) - n_val < 1:
        raise ValueError(f"cannot split {len(names)} sample(s) with val_fraction={val_fraction}: no training samples left")
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[i] for i in order[:n_val]}
    return dataset.subset(n for n in names if n not in val), dataset.subset(n for n in names if n in val)


def split_by_names(
    dataset: SampleDataset, val_names: Iterable[str], train_names: Iterable[str] | None = None
) -> tuple[SampleDataset, SampleDataset]:
    """Explicit split; by default every sample not named for validation trains."""
    val = list(val_names)
    held_out = set(val)
    train = [n for n in dataset.names if n not in held_out] if train_names is None else list(train_names)
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise ValueError(f"names in both train and validation: {overlap[:5]}")
    if not train:
        raise ValueError("split leaves no training samples")
    return dataset.subset(train), dataset.subset(val)


# --------------------------------------------------------------------------------------------------
# Conversion, reading and export.


def from_synthetic(samples: Iterable[SyntheticSample], prefix: str = "synthetic") -> list[Sample]:
    """SyntheticSamples as Samples named `<prefix>_<index>_<anatomy>`."""
    return [
        Sample(image=s.image, mask=s.mask, spacing_mm=s.spacing_mm, name=f"{prefix}_{i:04d}_{s.anatomy}")
        for i, s in enumerate(samples)
    ]


def _as_samples(samples: Iterable[Sample | SyntheticSample], prefix: str = "synthetic") -> list[Sample]:
    items = list(samples)
    if not items:
        raise ValueError("empty dataset: no samples given")
    if all(isinstance(s, SyntheticSample) for s in items):
        return from_synthetic(items, prefix)
    if all(isinstance(s, Sample) for s in items):
        return items
    raise ValueError("samples must be all Sample or all SyntheticSample")


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 as is; bool to 0/255; integers within 0..255 cast; 16-bit range scaled down by 257."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer) and array.size:
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        if low >= 0 and high <= 65535:
            return np.round(array / 257.0).astype(np.uint8)
    raise ValueError(f"{what}: cannot convert {array.dtype} image to uint8; store 8-bit (or 16-bit) integers")


def read_image(path: str | Path) -> np.ndarray:
    """Image file -> uint8 (H, W) for greyscale files, (H, W, 3) for colour (alpha dropped)."""
    with Image.open(path) as im:
        if im.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
            return _as_uint8(np.asarray(im), str(path))
        if im.mode in ("1", "LA"):
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """Mask file -> integer label array (H, W); a 0/255 binary mask becomes 0/1."""
    with Image.open(path) as im:
        if im.mode == "1":
            return np.asarray(im).astype(np.uint8)
        if im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im)[..., :3]
            if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                raise ValueError(f"{path}: colour mask; store labels as a single-channel (L or P) PNG")
            labels = rgb[..., 0].copy()
        elif im.mode == "LA":
            labels = np.asarray(im.convert("L"))
        else:  # L, P (palette indices are the labels), I, I;16
            labels = np.asarray(im)
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"{path}: mask must hold non-negative integer labels, got {labels.dtype}")
    values = np.unique(labels)
    if values.size and values[-1] == 255 and set(values.tolist()) <= {0, 255}:
        return (labels > 0).astype(np.uint8)
    return labels


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise ValueError(f"two files with stem {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}")
            found[path.stem] = path
    return found


def _read_spacing_file(path: Path) -> dict[str, tuple[float, float]]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {str(k): (float(v[0]), float(v[1])) for k, v in raw.items() if len(v) == 2}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"{path}: expected {{name: [row_mm, col_mm]}}: {error}") from None


def _mask_for_png(mask: np.ndarray) -> Image.Image:
    mask = np.asarray(mask)
    if mask.dtype == bool or (mask.size and int(mask.max()) <= 1):
        return Image.fromarray((mask != 0).astype(np.uint8) * 255)  # binary: visible white, 0/255
    if int(mask.max()) <= 254:
        return Image.fromarray(mask.astype(np.uint8))
    if int(mask.max()) <= 65535:
        return Image.fromarray(mask.astype(np.uint16))
    raise ValueError(f"mask labels up to {int(mask.max())} do not fit a 16-bit PNG")


def export_png_folder(
    samples: Iterable[Sample | SyntheticSample], root: str | Path, images: str = "imgs", masks: str = "gts"
) -> Path:
    """Write samples in the `imgs/` + `gts/` PNG layout (binary masks as 0/255, labels as values)
    plus `spacing_mm.json` for samples that have a spacing. Returns the root folder."""
    items = _as_samples(samples)
    root = Path(root)
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    spacing = _read_spacing_file(root / SPACING_FILE)
    for s in items:
        Image.fromarray(s.image).save(root / images / f"{s.name}.png")
        _mask_for_png(s.mask).save(root / masks / f"{s.name}.png")
        if s.spacing_mm is not None:
            spacing[s.name] = s.spacing_mm
    if spacing:
        (root / SPACING_FILE).write_text(json.dumps({k: list(v) for k, v in sorted(spacing.items())}, indent=1))
    return root


def export_npz(samples: Iterable[Sample | SyntheticSample], folder: str | Path) -> list[Path]:
    """Write one compressed `<name>.npz` per sample (image, mask, spacing_mm when known)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in _as_samples(samples):
        arrays = {"image": s.image, "mask": s.mask}
        if s.spacing_mm is not None:
            arrays["spacing_mm"] = np.asarray(s.spacing_mm, dtype=np.float64)
        path = folder / f"{s.name}.npz"
        np.savez_compressed(path, **arrays)
        paths.append(path)
    return paths
