"""Do the pixel decoders notice bits flipped inside compressed pixel data? (issue 16 (18))

For each lossless codec pydicom can encode here (RLE, JPEG-LS, JPEG 2000), flip one random bit in the
entropy-coded part of a 64x64 frame, many times, and count what pydicom's decoders do: raise, warn
(a Python warning from a decoder: the pipeline records these in the row), or decode to changed
pixels without a word. For JPEG 2000 it also asks OpenJPEG itself, with its warning and error
handlers attached (through ctypes, when a libopenjp2 is found), whether it saw anything.

    .venv/bin/python scripts/probe_bitflips.py [--trials 100]
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import glob
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import dicom_factory as f  # noqa: E402


def _entropy_start(frame: bytes, syntax: str) -> int:
    """First byte after the headers: RLE's 64-byte segment table, JPEG-LS's SOS segment, J2K's SOD."""
    if syntax == RLELossless:
        return 64
    if syntax == JPEG2000Lossless:
        return frame.find(b"\xff\x93") + 2
    sos = frame.find(b"\xff\xda")
    return sos + 2 + int.from_bytes(frame[sos + 2:sos + 4], "big")


def _openjpeg_says(lib, data: bytes) -> list[str]:
    """OpenJPEG's own warnings and errors while decoding one J2K codestream."""
    said: list[str] = []
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
    handler = handler_type(lambda message, _: said.append(message.decode(errors="replace").strip()))
    vp = ctypes.c_void_p
    lib.opj_create_decompress.restype = vp
    lib.opj_stream_create_default_file_stream.restype = vp
    lib.opj_stream_create_default_file_stream.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for name in ("opj_set_warning_handler", "opj_set_error_handler"):
        getattr(lib, name).argtypes = [vp, handler_type, vp]
    lib.opj_setup_decoder.argtypes = [vp, vp]
    lib.opj_read_header.argtypes = [vp, vp, ctypes.POINTER(vp)]
    lib.opj_end_decompress.argtypes = [vp, vp]
    lib.opj_decode.argtypes = [vp, vp, vp]
    for name in ("opj_stream_destroy", "opj_destroy_codec", "opj_image_destroy"):
        getattr(lib, name).argtypes = [vp]
    with tempfile.NamedTemporaryFile(suffix=".j2k", delete=False) as fh:
        fh.write(data)
    codec = lib.opj_create_decompress(0)  # OPJ_CODEC_J2K
    lib.opj_set_warning_handler(codec, handler, None)
    lib.opj_set_error_handler(codec, handler, None)
    params = ctypes.create_string_buffer(1 << 16)  # larger than opj_dparameters_t
    lib.opj_set_default_decoder_parameters(params)
    lib.opj_setup_decoder(codec, params)
    stream = lib.opj_stream_create_default_file_stream(fh.name.encode(), 1)
    image = vp()
    ok = (lib.opj_read_header(stream, codec, ctypes.byref(image)) and lib.opj_decode(codec, stream, image)
          and lib.opj_end_decompress(codec, stream))
    lib.opj_stream_destroy(stream)
    lib.opj_destroy_codec(codec)
    if image:
        lib.opj_image_destroy(image)
    os.unlink(fh.name)
    return said if ok else said + ["decode failed"]


def _libopenjp2():
    import PIL

    found = ctypes.util.find_library("openjp2") or next(
        iter(glob.glob(str(Path(PIL.__file__).parents[1] / "pillow.libs" / "libopenjp2*"))), None)
    return ctypes.CDLL(found) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100, help="bit flips per codec (default 100)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lib = _libopenjp2()
    print(f"| codec | flips | raised | decoder warned | changed pixels, no word | unchanged |"
          f"{' OpenJPEG handlers spoke |' if lib else ''}")
    print("|---|---|---|---|---|---|" + ("---|" if lib else ""))
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds = f.compressed(f.us_image(f.grey_image(64, 64)), syntax)
        reference = ds.pixel_array.copy()
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        start = _entropy_start(frame, syntax)
        counts = dict(raised=0, warned=0, silent=0, unchanged=0, openjpeg=0)
        for _ in range(args.trials):
            damaged = bytearray(frame)
            damaged[int(rng.integers(start, len(frame) - 2))] ^= 1 << int(rng.integers(0, 8))
            trial = copy.deepcopy(ds)
            trial.PixelData = encapsulate([bytes(damaged)])
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pixels = trial.pixel_array
            except Exception:  # noqa: BLE001 - a decoder that refuses is what we count
                counts["raised"] += 1
                continue
            if caught:
                counts["warned"] += 1
            elif pixels.shape != reference.shape or (pixels != reference).any():
                counts["silent"] += 1
            else:
                counts["unchanged"] += 1
            if lib is not None and syntax == JPEG2000Lossless and _openjpeg_says(lib, bytes(damaged)):
                counts["openjpeg"] += 1
        extra = f" {counts['openjpeg']} |" if lib else ""
        if lib and syntax != JPEG2000Lossless:
            extra = " - |"
        print(f"| {syntax.name} | {args.trials} | {counts['raised']} | {counts['warned']} | {counts['silent']} | "
              f"{counts['unchanged']} |{extra}")


if __name__ == "__main__":
    main()
