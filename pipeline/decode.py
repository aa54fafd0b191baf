"""Decode ultrasound pixel data into the grey uint8 frames the model takes.

pydicom (with the pylibjpeg, openjpeg, RLE and pyjpegls plugins) decodes every transfer syntax real
ultrasound uses; this module turns its output, whatever the photometric interpretation, into one
(rows, cols) uint8 image per frame. Frames are decoded one at a time so a long cine never has to sit
in memory twice.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, get_decoder, iter_pixels, pixel_array
from pydicom.multival import MultiValue
from pydicom.uid import UID

# Photometric interpretations whose decoded output pydicom hands back as RGB (as_rgb=True).
_RGB_LIKE = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
SUPPORTED_PHOTOMETRIC = _RGB_LIKE | _MONOCHROME | {"PALETTE COLOR"}

# ITU-R BT.601 luma weights: the grey a B-mode scanner's colour output started from.
_LUMA = np.array([0.299, 0.587, 0.114])


class DecodeError(ValueError):
    """Pixel data that cannot be turned into grey frames (the message says why)."""


def transfer_syntax_problem(transfer_syntax_uid: str) -> str | None:
    """Why pixel data in this transfer syntax cannot be decoded here, or None when it can."""
    uid = UID(transfer_syntax_uid)
    label = f"{uid.name} ({uid})" if uid.is_transfer_syntax else str(uid)
    if not uid.is_transfer_syntax:
        return f"transfer syntax {label} is not a known DICOM transfer syntax"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {label} is not supported (no pixel data decoder exists for it)"
    if not decoder.is_available:
        return f"transfer syntax {label} is not supported (no decoder plugin is installed)"
    return None


def photometric_problem(header: Dataset) -> str | None:
    """Why this pixel description cannot become a grey image, or None when it can."""
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if photometric not in SUPPORTED_PHOTOMETRIC:
        return f"photometric interpretation {photometric or '(missing)'} is not supported"
    if photometric in _RGB_LIKE and samples != 3:
        return f"{photometric} needs 3 samples per pixel, found {samples}"
    if photometric not in _RGB_LIKE and samples != 1:
        return f"{photometric} needs 1 sample per pixel, found {samples}"
    if photometric == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in header:
        return "PALETTE COLOR image has no palette lookup table"
    if photometric == "PALETTE COLOR":
        return palette_problem(header)
    return None


def palette_problem(header: Dataset) -> str | None:
    """A palette lookup table whose descriptor and data disagree (pydicom would fail with a NumPy error)."""
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableDescriptor"
        descriptor = header.get(keyword)
        try:
            entries, _, bits = (int(v) for v in descriptor)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return f"{keyword} is missing or not 3 numbers"
        if bits not in (8, 16):
            return f"{keyword} declares {bits} bits per entry; 8 or 16 expected"
        entries = entries or 65536  # 0 means 2**16
        data = header.get(f"{colour}PaletteColorLookupTableData")
        if data is None:
            if f"Segmented{colour}PaletteColorLookupTableData" in header:
                continue
            return f"{colour}PaletteColorLookupTableData is missing"
        needed = entries * (2 if bits == 16 else 1)  # 8-bit entries may be stored in 16-bit words
        if len(data) < needed:
            return (f"{colour}PaletteColorLookupTableData holds {len(data)} bytes; {keyword} declares "
                    f"{entries} entries of {bits} bits ({needed} bytes)")
    return None


@contextlib.contextmanager
def suppress_dicom_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect warnings (and silence pydicom's logger) instead of printing or logging them.

    pydicom and highdicom quote offending values in their messages (e.g. a malformed patient name or
    birth date); our logs must not carry PHI, so nothing they say about our inputs reaches a handler.
    """
    # A logger's filters do not see records propagated from its children, so filter each one.
    names = ["pydicom"] + [n for n in logging.root.manager.loggerDict if n.startswith("pydicom.")]
    loggers = [logging.getLogger(n) for n in names]

    def drop(_: logging.LogRecord) -> bool:
        return False

    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@dataclass(frozen=True)
class GreyMapping:
    """How decoded monochrome values become 0..255 (colour images need no parameters)."""

    photometric: str
    low: float = 0.0
    high: float = 255.0
    invert: bool = False
    slope: float = 1.0
    intercept: float = 0.0

    def apply_monochrome(self, frame: np.ndarray) -> np.ndarray:
        # In place on one float64 copy (the same IEEE operations, so the same result): a frame's
        # temporaries stay one float frame, not four.
        values = frame.astype(np.float64)
        values *= self.slope
        values += self.intercept
        span = max(self.high - self.low, 1e-12)
        values -= self.low
        values /= span
        np.clip(values, 0.0, 1.0, out=values)
        values *= 255.0
        if self.invert:
            np.subtract(255.0, values, out=values)
        return np.rint(values, out=values).astype(np.uint8)


def _rescale(header: Dataset) -> tuple[float, float]:
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _first_window(header: Dataset) -> tuple[float, float] | None:
    """The first (center, width) of the VOI window, when the header gives a valid one."""
    center, width = header.get("WindowCenter", None), header.get("WindowWidth", None)
    if center is None or width is None:
        return None
    try:
        # Several windows may be listed; the first is the scanner's default.
        center = float(center[0] if isinstance(center, MultiValue) else center)
        width = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        return None
    return center, width


def _nominal_range(header: Dataset) -> tuple[float, float]:
    bits = int(header.get("BitsStored", header.get("BitsAllocated", 8)) or 8)
    if int(header.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _needs_data_range(header: Dataset) -> bool:
    """True when only the instance's own min/max can map it to 8 bits sensibly."""
    if _first_window(header) is not None:
        return False
    slope, intercept = _rescale(header)
    bits = int(header.get("BitsStored", 8) or 8)
    signed = int(header.get("PixelRepresentation", 0) or 0) == 1
    return bits > 8 or signed or slope != 1.0 or intercept != 0.0


def _monochrome_mapping(header: Dataset, data_range: tuple[float, float] | None) -> GreyMapping:
    photometric = str(header.PhotometricInterpretation)
    slope, intercept = _rescale(header)
    window = _first_window(header)
    if window is not None:
        # Linear VOI window (PS3.3 C.11.2.1.2.1) applied to rescaled values.
        center, width = window
        low = center - 0.5 - (width - 1) / 2
        high = center - 0.5 + (width - 1) / 2
    elif data_range is not None:
        low, high = data_range
    else:
        low, high = _nominal_range(header)
    return GreyMapping(photometric, low, high, photometric == "MONOCHROME1", slope, intercept)


def _palette_to_rgb8(frame: np.ndarray, header: Dataset) -> np.ndarray:
    rgb = apply_color_lut(frame, header)
    if rgb.dtype == np.uint8:
        return rgb
    # LUT entries are 16-bit (descriptor bits); keep their top 8 bits.
    bits = int(header.RedPaletteColorLookupTableDescriptor[2])
    return (rgb.astype(np.float64) / (2.0**bits - 1) * 255.0).round().clip(0, 255).astype(np.uint8)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (rows, cols, 3) 8-bit RGB image, as uint8."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DecodeError(f"expected an RGB image (rows, cols, 3), got shape {rgb.shape}")
    scale = 1.0
    if rgb.dtype != np.uint8:
        scale = 255.0 / max(float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0, 1.0)
    grey = rgb.astype(np.float64) @ _LUMA * scale
    return np.rint(grey).clip(0, 255).astype(np.uint8)


def _native_422(header: Dataset) -> bool:
    ts = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    return str(header.get("PhotometricInterpretation", "")) == "YBR_FULL_422" and ts is not None and not ts.is_compressed


def _frame_stream(source: Path | Dataset, header: Dataset, indices: list[int] | None) -> Iterator[np.ndarray]:
    src = str(source) if isinstance(source, Path) else source
    if _native_422(header):
        # pydicom 3.0's iter_pixels miscounts the frame size of subsampled native YBR_FULL_422
        # cines; decoding frame by frame by index is correct (and native frames are a cheap seek).
        n_frames = int(header.get("NumberOfFrames", 1) or 1)
        for index in indices if indices is not None else range(n_frames):
            yield pixel_array(src, index=index, as_rgb=True)
        return
    yield from iter_pixels(src, indices=indices, as_rgb=True)


# Warnings raised from these packages come from a pixel decoder; anything else (pydicom re-reading
# the header on the way) may quote a patient attribute and is never recorded.
_DECODER_PACKAGES = ("pydicom/pixels/", "openjpeg/", "libjpeg/", "rle/", "jpeg_ls/", "PIL/")
_MAX_DECODER_MESSAGES = 5


def _decoder_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    """What the pixel decoders said, one line each, bounded in length."""
    found = []
    for w in caught:
        if any(package in str(w.filename).replace("\\", "/") for package in _DECODER_PACKAGES):
            text = " ".join(str(w.message).split())
            found.append(f"decoder: {text[:200]}")
    return found


def _raw_frames(source: Path | Dataset, header: Dataset, indices: list[int] | None,
                messages: list[str] | None = None) -> Iterator[np.ndarray]:
    """pydicom's decoded frames (colour already converted to RGB), with failures made DecodeError.

    The decoders' warnings are appended to `messages` (once each, at most five): a frame that decodes
    with a warning is still used, but its row says so (issue 16 (18))."""
    frames = _frame_stream(source, header, indices)
    while True:
        try:
            with suppress_dicom_warnings() as caught:
                frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # any decoder failure: corrupt, truncated, unsupported
            raise DecodeError(f"pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
        finally:
            if messages is not None:
                for text in _decoder_messages(caught):
                    if text not in messages and len(messages) < _MAX_DECODER_MESSAGES:
                        messages.append(text)
        yield frame


def _data_range(source: Path | Dataset, header: Dataset) -> tuple[float, float]:
    slope, intercept = _rescale(header)
    low, high = np.inf, -np.inf
    for frame in _raw_frames(source, header, None):
        low, high = min(low, float(frame.min())), max(high, float(frame.max()))
    values = sorted((low * slope + intercept, high * slope + intercept))
    return values[0], values[1]


def iter_grey_frames(
    source: Path | Dataset, header: Dataset, frame_indices: list[int] | None = None,
    messages: list[str] | None = None,
) -> Iterator[np.ndarray]:
    """Yield each frame (or the 0-based `frame_indices`) as a (rows, cols) uint8 grey image.

    `source` is the file (read lazily, frame by frame) or a dataset holding the pixel data;
    `header` is its metadata (the pixel description and any palette); the decoders' warnings, if
    any, are appended to `messages`.
    """
    problem = photometric_problem(header)
    if problem is not None:
        raise DecodeError(problem)
    photometric = str(header.PhotometricInterpretation).strip()
    mapping: GreyMapping | None = None
    if photometric in _MONOCHROME:
        # Frames of one cine share one mapping, so brightness does not flicker between frames.
        data_range = _data_range(source, header) if _needs_data_range(header) else None
        mapping = _monochrome_mapping(header, data_range)

    rows, cols = int(header.Rows), int(header.Columns)
    for frame in _raw_frames(source, header, frame_indices, messages):
        if photometric == "PALETTE COLOR":
            grey = rgb_to_grey(_palette_to_rgb8(frame, header))
        elif photometric in _RGB_LIKE:
            grey = rgb_to_grey(frame)
        else:
            assert mapping is not None
            grey = mapping.apply_monochrome(frame)
        if grey.shape != (rows, cols):
            raise DecodeError(f"decoded frame has shape {grey.shape}, header says {rows}x{cols}")
        yield grey


def decode_grey_frames(source: Path | Dataset, header: Dataset) -> np.ndarray:
    """All frames as one (frames, rows, cols) uint8 array."""
    frames = list(iter_grey_frames(source, header))
    if not frames:
        raise DecodeError("pixel data holds no frames")
    return np.stack(frames)
