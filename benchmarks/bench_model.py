"""Images per second of the bare encoder vs Sam2Rad `auto` and `manual` predict, side by side, at
one or more batch sizes, and the cost of one reader click in `semi` mode on a shown image (its
encoding and `auto` result cached, as on the review page): a point click and an edge click; and,
on the shipped LiteMedSAM model, a point click the decoder does not follow, without and with the
hold that moves the nearby edge to it, and with an end click added; and the simulated reader's
tenth click on a held-out B frame, edited in the reader's order and by tool.

Targets: auto / bare encoder >= 0.85 (the PPN, decoder and refiner must cost little beside the
encoder); a click < 150 ms with LiteMedSAM on 2 CPU threads (decoder path only, never the encoder).
`auto` decodes a batch (images x classes) in one call; `manual` decodes image by image (a reader's
prompts differ per image), so at batch > 1 the two columns show what batching the decode buys.
All are timed in interleaved rounds and compared by their median times. The models carry the mask
refiner, as the training recipe's do. SAM2.1 runs on random weights (the timing is the same).
Usage: .venv/bin/python benchmarks/bench_model.py [--threads 2] [--repeats 12] [--device cpu]
       [--batch-sizes 1,16] [--backbones litemedsam,sam2.1_hiera_t]
On a GPU host: --device cuda --batch-sizes 1,16 (the issue's figures are auto/encoder at 1 and 16).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sam2rad.model import Prompts, Sam2Rad, build_sam2rad
from sam2rad.refine import RefinerConfig

CASES = {"litemedsam": (256, True), "sam2.1_hiera_t": (512, False)}  # input size, pretrained weights


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_rates(fns, repeats: int, images_per_call: int, device: str) -> list[float]:
    """Images per second of each function, from the median of `repeats` rounds that call every
    function once in turn: a shared machine's speed drifts by 10 % or more within a minute, and
    timing the functions one after the other would put that drift into their ratio."""
    for fn in fns:
        fn()  # warm-up (allocations, lazy init, cuDNN autotuning)
    seconds = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            seconds[i].append(time.perf_counter() - start)
    return [images_per_call / float(np.median(s)) for s in seconds]


def measure(model: Sam2Rad, size: int, batch: int, repeats: int, device: str
            ) -> tuple[float, float, float, float | None, float | None]:
    """(encoder, auto, manual) images/s at this batch size, and a point click's and an edge click's
    ms (batch 1 only)."""
    rng = np.random.default_rng(batch)
    images = [rng.integers(0, 255, (size, size), dtype=np.uint8) for _ in range(batch)]
    pixels, _ = model.backbone.preprocess(images)
    box = Prompts(box=[size * 0.2, size * 0.3, size * 0.8, size * 0.6])

    def bare():
        with torch.no_grad():
            model.backbone.encode(pixels)

    def auto():
        model.clear_cache()  # every call pays for its own encoding
        model.predict(images, "auto")

    def manual():
        model.clear_cache()
        model.predict(images, "manual", [box] * batch)

    fns = [bare, auto, manual]
    if batch == 1:
        points = Prompts(points=[[size * 0.5, size * 0.45], [size * 0.3, size * 0.7]], labels=[1, 0])
        # then an edge click: the same decoder path, plus moving auto's edge (sam2rad/edge_click.py)
        edges = Prompts(points=points.points, labels=points.labels, edges=[[size * 0.5, size * 0.55]], edge_labels=[1])

        def clicking(prompts: Prompts):
            def click():  # a reader's click on a shown image: the encoding and auto's result are cached
                before = model.encoder_calls
                model.predict(images[0], "semi", prompts)
                assert model.encoder_calls == before, "a click re-ran the encoder"
            return click

        def shown():  # not timed for the table: the image's auto result, as the review page shows it first
            model.predict(images[0], "auto")

        fns += [shown, clicking(points), clicking(edges)]
    rates = interleaved_rates(fns, repeats, batch, device)
    return rates[0], rates[1], rates[2], *((1000 / rates[4], 1000 / rates[5]) if batch == 1 else (None, None))


def held_click_ms(repeats: int, device: str) -> tuple[float, float, float, bool, bool]:
    """The shipped LiteMedSAM model on a generated B frame: a point click three pixels below the
    surface's deep edge, which the decoder does not follow, timed without and with the hold
    (sam2rad/edge_click.py hold_point_clicks), and with an end click added a fifth of the surface in
    from its right end (apply_end_clicks), in interleaved rounds. Returns (ms without, ms with, ms
    with the end click, whether the held click's pixel ended up in the mask, whether the surface
    ended at the end click)."""
    from sam2rad.checkpoint import load_checkpoint
    from sam2rad.data.specs import load_spec
    from sam2rad.edge_click import HOLD_WINDOW_PX

    model = load_checkpoint(None).to(device).eval()
    image = load_spec("rfsim:1:7")[0][0].image
    auto = model.predict(image, "auto")[0].masks[0]  # shown first, as on the review page
    cols = np.nonzero(auto.any(axis=0))[0]
    x = int(cols[len(cols) // 2])
    y = int(np.nonzero(auto[:, x])[0].max()) + 3
    end_x = int(cols[len(cols) * 4 // 5])
    end = [end_x, float(np.nonzero(auto[:, end_x])[0].mean())]

    def clicking(window, ends=None):
        prompt = Prompts(points=[[x, y]], labels=[1], ends=ends)

        def click():
            model.hold_window_px = window
            before = model.encoder_calls
            mask = model.predict(image, "semi", prompt)[0].masks[0]
            assert model.encoder_calls == before, "a click re-ran the encoder"
            return mask
        return click

    plain, held, ended = clicking(None), clicking(HOLD_WINDOW_PX), clicking(HOLD_WINDOW_PX, [end])
    rates = interleaved_rates([plain, held, ended], repeats, 1, device)
    return 1000 / rates[0], 1000 / rates[1], 1000 / rates[2], bool(held()[y, x]), not ended()[:, end_x + 2:].any()


def tenth_click_ms(repeats: int, device: str) -> tuple[float, float, str]:
    """The shipped LiteMedSAM model on a held-out generated B frame (`rfsim:17:7`, image 16, whose
    clicks mix all tools): the simulated reader's tenth click, with its nine before it, edited in the
    reader's order (sam2rad/semi_edit.py) and by tool, in interleaved rounds. Returns (ms in order,
    ms by tool, the clicks' kinds)."""
    import copy

    from sam2rad.checkpoint import load_checkpoint
    from sam2rad.data.specs import load_spec
    from sam2rad.evaluate import reader_session

    model = load_checkpoint(None).to(device).eval()
    sample = load_spec("rfsim:17:7")[0][16]
    auto = model.predict(sample.image, "auto")[0].masks[0]  # shown first, as on the review page
    ordered = reader_session(model, sample.image, np.asarray(sample.mask) != 0, auto, 10)[-1][0]
    by_tool = copy.copy(ordered)
    by_tool.order = None

    def clicking(prompts: Prompts):
        def click():
            before = model.encoder_calls
            model.predict(sample.image, "semi", prompts)
            assert model.encoder_calls == before, "a click re-ran the encoder"
        return click

    rates = interleaved_rates([clicking(ordered), clicking(by_tool)], repeats, 1, device)
    return 1000 / rates[0], 1000 / rates[1], " ".join(ordered.order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,16")
    ap.add_argument("--backbones", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for name in args.backbones.split(","):
        size, pretrained = CASES[name]
        model = build_sam2rad(name, pretrained=pretrained, input_size=size,
                              refiner_config=RefinerConfig()).to(args.device).eval()
        for batch in batches:
            bare, auto, manual, click_ms, edge_ms = measure(model, size, batch, args.repeats, args.device)
            rows.append((f"{name}@{size}", batch, bare, auto, manual, auto / bare, click_ms, edge_ms))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nthreads={args.threads} device={args.device} ({device}) repeats={args.repeats}")
    print(f"{'backbone':<22}{'batch':>6}{'encoder img/s':>15}{'auto img/s':>12}{'manual img/s':>14}"
          f"{'auto/encoder':>14}{'click ms':>10}{'edge click ms':>15}")
    for name, batch, b, a, m, ratio, ms, edge_ms in rows:
        clicks = "".join(f"{v:>{w}.1f}" if v is not None else f"{'-':>{w}}" for v, w in ((ms, 10), (edge_ms, 15)))
        print(f"{name:<22}{batch:>6}{b:>15.2f}{a:>12.2f}{m:>14.2f}{ratio:>14.2f}{clicks}")
    if "litemedsam" in args.backbones.split(","):
        plain_ms, held_ms, end_ms, taken, ended = held_click_ms(args.repeats, args.device)
        print(f"\nshipped litemedsam model, a B frame, a point click the decoder does not follow: "
              f"{plain_ms:.1f} ms without the hold, {held_ms:.1f} ms with it ({held_ms / plain_ms:.2f}x); "
              f"the clicked pixel {'ends up' if taken else 'does NOT end up'} in the mask; "
              f"with an end click as well {end_ms:.1f} ms ({end_ms / held_ms:.2f}x), "
              f"the surface {'ends' if ended else 'does NOT end'} there")
        ordered_ms, by_tool_ms, kinds = tenth_click_ms(args.repeats, args.device)
        print(f"the simulated reader's tenth click on a held-out B frame ({kinds}): {ordered_ms:.1f} ms edited "
              f"in the reader's order, {by_tool_ms:.1f} ms by tool ({ordered_ms / by_tool_ms:.2f}x)")


if __name__ == "__main__":
    main()
