"""Does each JPEG 2000 frame's codestream agree with the DICOM header? (issue 16 (18))

pylibjpeg-openjpeg and Pillow decode damaged JPEG 2000 without a word. This is the cheap check
that can be made honestly: each frame's codestream starts with SOC and SIZ, its SIZ declares the
header's Columns x Rows, SamplesPerPixel, BitsStored and PixelRepresentation, its tile-part
lengths (Psot) chain from the first SOT to an EOC marker at its end. A disagreement becomes a
warning in the instance's row; the instance is still segmented. Bits flipped inside the
entropy-coded data (with the markers and lengths intact) cannot be seen without decoding twice or
error-resilience markers the encoders rarely write: this check does not claim to catch them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from pipeline.decode import suppress_dicom_warnings

J2K_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                                   "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
_SOC, _SIZ, _SOT, _SOD, _EOC = 0xFF4F, 0xFF51, 0xFF90, 0xFF93, 0xFFD9


def _siz_problems(frame: bytes, header: Dataset) -> list[str]:
    if len(frame) < 4 + 38 or struct.unpack(">HH", frame[:4]) != (_SOC, _SIZ):
        return ["does not start with the SOC and SIZ markers"]
    xsiz, ysiz, xo, yo = struct.unpack(">4I", frame[8:24])
    (csiz,) = struct.unpack(">H", frame[40:42])
    problems = []
    if (xsiz - xo, ysiz - yo) != (int(header.Columns), int(header.Rows)):
        problems.append(f"SIZ declares {xsiz - xo}x{ysiz - yo} pixels, Columns x Rows is "
                        f"{int(header.Columns)}x{int(header.Rows)}")
    if csiz != int(header.SamplesPerPixel):
        problems.append(f"SIZ declares {csiz} components, SamplesPerPixel is {int(header.SamplesPerPixel)}")
    if len(frame) < 42 + 3 * csiz:
        return problems + ["SIZ is cut short"]
    bits, signed = int(header.BitsStored), int(header.get("PixelRepresentation", 0) or 0)
    for c in range(csiz):
        ssiz = frame[42 + 3 * c]
        if (ssiz & 0x7F) + 1 != bits or bool(ssiz & 0x80) != bool(signed):
            problems.append(f"SIZ component {c} declares {(ssiz & 0x7F) + 1}-bit "
                            f"{'signed' if ssiz & 0x80 else 'unsigned'} samples, BitsStored is {bits} and "
                            f"PixelRepresentation {signed}")
            break
    return problems


def _structure_problems(frame: bytes) -> list[str]:
    """Main-header segments, then tile-parts chained by Psot, ending at EOC."""
    end = len(frame.rstrip(b"\0"))  # fragments are padded to an even length
    at = 2
    while at + 4 <= end:
        marker, length = struct.unpack(">HH", frame[at:at + 4])
        if marker == _SOT:
            break
        if marker >> 8 != 0xFF or length < 2:
            return [f"main header is damaged at byte {at}"]
        at += 2 + length
    while at + 2 <= end:
        marker = struct.unpack(">H", frame[at:at + 2])[0]
        if marker == _EOC:
            return [] if at + 2 == end else [f"{end - at - 2} bytes after the EOC marker"]
        if marker != _SOT or at + 12 > end:
            return [f"tile-part chain is broken at byte {at} (no SOT marker)"]
        (psot,) = struct.unpack(">I", frame[at + 6:at + 10])
        if psot == 0:  # the last tile-part runs to EOC
            return [] if frame[end - 2:end] == b"\xff\xd9" else ["no EOC marker at the end"]
        at += psot
    return ["tile-part lengths run past the end of the codestream (no EOC marker)"]


def instance_warnings(source: Path | Dataset, header: Dataset, n_frames: int) -> tuple[str, ...]:
    """j2k_warnings for a file or an in-memory dataset; () unless its transfer syntax is JPEG 2000."""
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in J2K_TRANSFER_SYNTAXES:
        return ()
    with suppress_dicom_warnings():
        ds = source if isinstance(source, Dataset) else pydicom.dcmread(source)
        pixel_data = ds.get("PixelData")
    return j2k_warnings(pixel_data, header, n_frames) if pixel_data else ()


def j2k_warnings(pixel_data: bytes, header: Dataset, n_frames: int) -> tuple[str, ...]:
    """Warnings (at most one per kind of problem, with the first frame showing it) for a JPEG 2000
    instance whose codestreams disagree with the header or are damaged; () when all agree."""
    found: dict[str, str] = {}
    try:
        for number, frame in enumerate(generate_frames(pixel_data, number_of_frames=n_frames), start=1):
            for problem in _siz_problems(frame, header) + _structure_problems(frame):
                found.setdefault(problem.split(" at byte")[0], f"JPEG 2000 frame {number}: {problem}")
    except Exception as exc:  # noqa: BLE001 - a damaged encapsulation is reported, not raised
        found["encapsulation"] = f"JPEG 2000 fragments cannot be split into frames: {type(exc).__name__}"
    return tuple(found.values())
