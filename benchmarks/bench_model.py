"""Images per second of the bare encoder vs Sam2Rad `auto` and `manual` predict, side by side, and
the cost of one reader click in `semi` mode on a cached encoding.

Targets: auto / bare encoder >= 0.85 (the PPN, decoder and refiner must cost little beside the
encoder); a click < 150 ms with LiteMedSAM on 2 CPU threads (decoder path only, never the encoder).
All are timed in interleaved rounds and compared by their median times. The models carry the mask
refiner, as the training recipe's do.
Usage: .venv/bin/python benchmarks/bench_model.py [--threads 2] [--repeats 12] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sam2rad.model import Prompts, build_sam2rad
from sam2rad.refine import RefinerConfig

CASES = [("litemedsam", 256, True), ("sam2.1_hiera_t", 512, False)]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_rates(fns, repeats: int) -> list[float]:
    """Images per second of each function, from the median of `repeats` rounds that call every
    function once in turn: a shared machine's speed drifts by 10 % or more within a minute, and
    timing the functions one after the other would put that drift into their ratio."""
    for fn in fns:
        fn()  # warm-up (allocations, lazy init)
    seconds = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            seconds[i].append(_timed(fn))
    return [1.0 / float(np.median(s)) for s in seconds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for name, size, pretrained in CASES:
        model = build_sam2rad(name, pretrained=pretrained, input_size=size,
                              refiner_config=RefinerConfig()).to(args.device).eval()
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        pixels, _ = model.backbone.preprocess([image])
        box = Prompts(box=[size * 0.2, size * 0.3, size * 0.8, size * 0.6])

        def bare():
            with torch.no_grad():
                model.backbone.encode(pixels)

        def auto():
            model.clear_cache()  # every call pays for its own encoding
            model.predict(image, "auto")

        def manual():
            model.clear_cache()
            model.predict(image, "manual", box)

        clicks = Prompts(points=[[size * 0.5, size * 0.45], [size * 0.3, size * 0.7]], labels=[1, 0])

        def click():  # a reader's second click: the encoding is cached, only the decoder path runs
            before = model.encoder_calls
            model.predict(image, "semi", clicks)
            assert model.encoder_calls == before, "a click re-ran the encoder"

        r_bare, r_auto, r_manual, r_click = interleaved_rates([bare, auto, manual, click], args.repeats)
        rows.append((f"{name}@{size}", r_bare, r_auto, r_manual, r_auto / r_bare, 1000 / r_click))
    print(f"\nthreads={args.threads} device={args.device} repeats={args.repeats}")
    print(f"{'backbone':<22}{'encoder img/s':>15}{'auto img/s':>12}{'manual img/s':>14}{'auto/encoder':>14}{'click ms':>10}")
    for name, b, a, m, ratio, ms in rows:
        print(f"{name:<22}{b:>15.2f}{a:>12.2f}{m:>14.2f}{ratio:>14.2f}{ms:>10.1f}")


if __name__ == "__main__":
    main()
