"""Burned-in scanner text for synthetic ultrasound frames (a tiny bitmap font), outside the imaging region.

Why: real scanners burn depth, frequency and patient text into the frame; the pipeline must crop it
away, so the synthetic frames carry it too.
"""
from __future__ import annotations

import numpy as np


_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "K": "101101110101101",
    "L": "100100100100111", "M": "101111111101101", "N": "110101101101101", "O": "010101101101010",
    "P": "110101110100100", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Z": "111001010100111", ":": "000010000010000", ".": "000000000000010", "-": "000000111000000",
    "/": "001001010100100", " ": "000000000000000",
}


def _draw_text(image: np.ndarray, text: str, x: int, y: int, scale: int, value: int, limit_x: int) -> None:
    for ch in text:
        if x + 3 * scale > limit_x:
            return
        bits = np.array([int(b) for b in _GLYPHS.get(ch, _GLYPHS[" "])], dtype=bool).reshape(5, 3)
        block = np.kron(bits, np.ones((scale, scale), dtype=bool))
        image[y : y + 5 * scale, x : x + 3 * scale][block] = value
        x += 4 * scale


def burn_in_text(rng, image: np.ndarray, region, anatomy: str, depth_mm: float, freq: float, spacing: float) -> None:
    h, w = image.shape
    x0, y0, x1, y1 = region
    scale = max(1, min(h // 128, (y0 - 2) // 7))
    if y0 < 5 * scale + 2:
        return  # no room above the image
    value = int(rng.integers(180, 256))
    side = rng.choice(["L", "R"])
    left = rng.choice(
        [f"{anatomy.upper()} {side}", f"{freq:.0f}MHZ {anatomy.upper()}", f"ID {rng.integers(1000, 99999)}"]
    )
    right = rng.choice(
        [
            f"MI {rng.uniform(0.2, 1.4):.1f} TIS {rng.uniform(0.1, 1.0):.1f}",
            f"D{depth_mm / 10:.1f}CM G{rng.integers(30, 80)}",
            f"20{rng.integers(10, 30)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        ]
    )
    ty = max(1, (y0 - 5 * scale) // 2)
    _draw_text(image, left, max(1, x0), ty, scale, value, w // 2)
    width = 4 * scale * len(right)
    _draw_text(image, right, max(w // 2 + 2 * scale, w - width - 1), ty, scale, value, w)
    # Depth ruler: dots every 10 mm in the right border, if there is one.
    if w - x1 >= scale + 2:
        step = 10.0 / spacing
        for k in range(1, int((y1 - y0) / step) + 1):
            yy = int(y0 + k * step)
            image[yy : yy + scale, x1 + 1 : x1 + 1 + scale] = value
