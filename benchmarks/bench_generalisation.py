"""Issue 12 protocol: 10-shot Sam2Rad against a U-Net trained from scratch, across two generators.

Generator A = sam2rad.data.synthetic (the project's own, used while designing the recipe);
generator B = sam2rad.data.rf_simulator (RF point-scatterer model, not used for the recipe until
session 18, and used for its choices since); generator C = sam2rad.data.impedance_simulator
(impedance interfaces in I/Q, phased and linear arrays; written in session 24 after the recipe was
settled, committed before any model ran on it). For each training generator (--directions): train on
--n-train images of it, test on --n-test held-out images of each --test-gens generator (other seeds). Sam2Rad trains exactly as `sam2rad train --data <those images>` does
(TrainConfig defaults: with 10 images all train; by default from the shipped PPN pretrained on 600
other A images, so rows tested on A are not A-unseen; --init none for 10 images only) and is evaluated in
`auto` and `semi_click` (one simulated click), and with --flip both (the default) the same trained
model again in `auto` with the test-time flip (sam2rad/flip_tta.py; row sam2rad_auto_flip); the U-Net trains on all the same images with the same
augmentation family, and is evaluated with and without the same flip (rows unet, unet_flip): each flip
row is compared with the other model's flip row. One metric function for both: sam2rad.metrics.evaluate_pair (HD95 in mm).
The cross-generator rows are the headline and print first.

Usage: .venv/bin/python benchmarks/bench_generalisation.py [--quick] [--epochs-unet 300] [--seeds N]
       [--first-seed K] [--merge DIR ...] [--device cpu|cuda] [--epochs-sam2rad N] [--init auto|pretrained|none|PATH] [--flip both|on|off] [--only sam2rad|unet] [--directions A,B,C]
       [--test-gens A,B,C] [--threads 2] [--out runs/bench_generalisation]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sam2rad.data.specs import load_spec
from sam2rad.metrics import evaluate_pair

THREADS = 2
TRAIN_SEED, TEST_SEED = 0, 7  # per generator: training images and held-out images never overlap


def train_sam2rad(train_samples, epochs=None, seed=0, init=None, device="cpu"):
    """What `sam2rad train --data <train_samples>` does: TrainConfig defaults (only epochs/seed/init
    overridden when given), the CLI's default training plan (plan_training), then Trainer.fit.
    Returns (model, where training started)."""
    from sam2rad.train import TrainConfig, Trainer
    from sam2rad.training_plan import plan_training

    given = {"epochs": epochs, "seed": seed, "init": init}
    cfg = TrainConfig.from_dict({k: v for k, v in given.items() if v is not None})
    plan = plan_training(train_samples, seed=cfg.seed)
    trainer = Trainer(cfg, device=device)
    return trainer.fit(plan.train, plan.val, progress=False).model, trainer.init_note


GENERATORS = {"A": "synthetic", "B": "rfsim", "C": "zsim"}  # letter -> data spec prefix


def load_generator(gen: str, n: int, seed: int):
    """Samples of generator A (synthetic), B (rfsim) or C (zsim); names end with the anatomy."""
    return load_spec(f"{GENERATORS[gen]}:{n}:{seed}")[0]


def anatomy_of(name: str) -> str:
    from sam2rad.data import impedance_anatomy, rf_simulator, synthetic

    return next((a for a in rf_simulator.ANATOMIES + synthetic.ANATOMIES + impedance_anatomy.ANATOMIES
                 if name.endswith(a)), "unknown")


def eval_sam2rad(model, samples, tag: dict, flip: bool = False) -> list[dict]:
    from sam2rad.evaluate import evaluate_model

    model.flip_test_time = flip
    try:
        rows = evaluate_model(model, samples, ("auto",) if flip else ("auto", "semi_click"))
    finally:
        model.flip_test_time = False
        model.clear_cache()
    suffix = "_flip" if flip else ""
    return [{**tag, "model": f"sam2rad_{r.mode}{suffix}", "name": r.name, "anatomy": anatomy_of(r.name),
             "dice": r.dice, "hd95_mm": r.hd95, "assd_mm": r.assd} for r in rows]


def eval_unet(model, samples, tag: dict, flip: bool = False) -> list[dict]:
    out = []
    for s in samples:
        m = evaluate_pair(model.predict(s.image, flip), np.asarray(s.mask) != 0, s.spacing_mm)
        out.append({**tag, "model": "unet_flip" if flip else "unet", "name": s.name, "anatomy": anatomy_of(s.name),
                    "dice": m.dice, "hd95_mm": m.hd95, "assd_mm": m.assd})
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Per (train, test, model), pooled over training seeds; seed_dice_means: one Dice mean per seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["train_gen"], r["test_gen"], r["model"]), []).append(r)
    out = []
    for (tr, te, model), sel in groups.items():
        dice = np.array([r["dice"] for r in sel])
        seeds = sorted({r.get("seed", 0) for r in sel})
        per_seed = [float(np.mean([r["dice"] for r in sel if r.get("seed", 0) == k])) for k in seeds]
        hd = np.array([r["hd95_mm"] for r in sel], dtype=float)
        anat = {a: float(np.mean([r["dice"] for r in sel if r["anatomy"] == a]))
                for a in sorted({r["anatomy"] for r in sel})}
        out.append({"train_gen": tr, "test_gen": te, "cross": tr != te, "model": model, "n": len(sel),
                    "dice_mean": float(dice.mean()), "dice_median": float(np.median(dice)),
                    "hd95_median_mm": float(np.median(hd[~np.isnan(hd)])) if (~np.isnan(hd)).any() else math.nan,
                    "n_empty_or_missed": int(np.isinf(hd).sum()), "per_anatomy_dice": anat,
                    "seed_dice_means": per_seed})
    order = {"sam2rad_auto": 0, "sam2rad_auto_flip": 1, "sam2rad_semi_click": 2, "unet": 3, "unet_flip": 4}
    return sorted(out, key=lambda s: (not s["cross"], s["train_gen"], s["test_gen"], order.get(s["model"], 9)))


def _seed_range(s: dict) -> str:
    means = s.get("seed_dice_means") or [s["dice_mean"]]
    return f"{min(means):.3f}-{max(means):.3f}" if len(means) > 1 else "-"


def format_table(summary: list[dict]) -> str:
    """n counts images over all training seeds; 'seed range' is the spread of the per-seed Dice means."""
    head = (f"{'':<10}{'train->test':<13}{'model':<20}{'n':>4}{'Dice mean':>11}{'median':>9}{'HD95 med mm':>13}"
            f"{'missed':>8}{'seed range':>13}  per-anatomy Dice mean")
    lines = [head, "-" * (len(head) + 20)]  # missed: images with an empty prediction (HD95 = inf)
    last = None
    for s in summary:
        section = "HEADLINE" if s["cross"] else "in-dist."
        if last is not None and section != last:
            lines.append("")
        anat = "  ".join(f"{a} {v:.3f}" for a, v in s["per_anatomy_dice"].items())
        lines.append(f"{section if section != last else '':<10}{s['train_gen'] + ' -> ' + s['test_gen']:<13}{s['model']:<20}"
                     f"{s['n']:>4}{s['dice_mean']:>11.3f}{s['dice_median']:>9.3f}{s['hd95_median_mm']:>13.2f}{s['n_empty_or_missed']:>8}"
                     f"{_seed_range(s):>13}  {anat}")
        last = section
    return "\n".join(lines)


def verdicts(summary: list[dict]) -> list[str]:
    """One plain sentence per cross-generator pair: Sam2Rad auto vs the U-Net, each with the test-time
    flip against the other's flip where both were run."""
    out = []
    by = {(s["train_gen"], s["test_gen"], s["model"]): s for s in summary}
    for (tr, te, model), s in by.items():
        flip = model.endswith("_flip")
        rival = "unet_flip" if flip and (tr, te, "unet_flip") in by else "unet"
        if model not in ("sam2rad_auto", "sam2rad_auto_flip") or tr == te or (tr, te, rival) not in by:
            continue
        name = "Sam2Rad auto" + (" with the flip" if flip else "")
        u = by[(tr, te, rival)]
        dd = s["dice_mean"] - u["dice_mean"]
        dh = s["hd95_median_mm"] - u["hd95_median_mm"]
        unet_name = "the U-Net" + (" with the flip" if rival == "unet_flip" else "")
        dice_txt = (f"{name if dd > 0 else unet_name} is ahead on Dice by {abs(dd):.3f} "
                    f"({s['dice_mean']:.3f} vs {u['dice_mean']:.3f})")
        hd_txt = (f"{name if dh < 0 else unet_name} is ahead on HD95 median by {abs(dh):.2f} mm "
                  f"({s['hd95_median_mm']:.2f} vs {u['hd95_median_mm']:.2f} mm)")
        if not math.isfinite(dh):  # a median of inf: most of that model's masks were empty
            hd_txt = (f"HD95 median {s['hd95_median_mm']:.2f} vs {u['hd95_median_mm']:.2f} mm "
                      "(inf: most masks empty)")
        target = "meets" if s["dice_mean"] >= 0.90 and s["hd95_median_mm"] <= 0.5 else "misses"
        spread = ""
        if len(s.get("seed_dice_means", [])) > 1 and len(u.get("seed_dice_means", [])) > 1:
            overlap = min(s["seed_dice_means"]) <= max(u["seed_dice_means"]) and min(u["seed_dice_means"]) <= max(s["seed_dice_means"])
            spread = (f" Per-seed Dice means {_seed_range(s)} vs {_seed_range(u)}: "
                      + ("the ranges overlap, so read the Dice gap as within training noise." if overlap
                         else "the ranges do not overlap."))
        out.append(f"{tr} -> {te}: {dice_txt}; {hd_txt}. {name} {target} the issue's bar "
                   f"(Dice >= 0.90, HD95 median <= 0.5 mm).{spread}")
    return out


def write_outputs(out: Path, rows: list[dict], meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_image.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows)
    text = format_table(summary) + "\n\n" + "\n".join(verdicts(summary))
    (out / "table.txt").write_text(text + "\n\n" + json.dumps(meta, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return text


def read_rows(path: Path) -> list[dict]:
    """per_image.csv back into rows (numbers as floats, seeds as ints)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["seed"] = int(r.get("seed") or 0)
        for k in ("dice", "hd95_mm", "assd_mm"):
            r[k] = float(r[k])
    return rows


def merge_runs(dirs: list[Path], out: Path) -> str:
    """One pooled table from several runs (e.g. one seed per process); a seed met twice is an error."""
    rows: list[dict] = []
    seen: dict[tuple, Path] = {}
    for d in dirs:
        path = d / "per_image.csv"
        if not path.is_file():
            raise SystemExit(f"--merge: {path} not found (is {d} a bench_generalisation --out folder?)")
        part = read_rows(path)
        for key in {(r["train_gen"], r["model"], r["seed"]) for r in part}:
            if key in seen:
                raise SystemExit(f"--merge: training {key[0]}, model {key[1]}, seed {key[2]} is in both {seen[key]} and {d}")
            seen[key] = d
        rows += part
    if not rows:
        raise SystemExit("--merge: the folders hold no rows")
    return write_outputs(out, rows, {"merged": [str(d) for d in dirs]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs-sam2rad", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--epochs-unet", type=int, default=300)
    ap.add_argument("--n-train", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs each, 5 training / 4 test images")
    ap.add_argument("--only", choices=("sam2rad", "unet"), default=None)
    ap.add_argument("--init", default=None, help="Sam2Rad starting weights (TrainConfig.init; default auto: the "
                    "shipped PPN pretrained on 600 generated A images). With it, rows tested on A are not "
                    "A-unseen: the start saw other A images. 'none' for 10 images and nothing else.")
    ap.add_argument("--flip", choices=("both", "on", "off"), default="both",
                    help="both models without and/or with the test-time flip (Sam2Rad: 2x encoder), same trained models")
    ap.add_argument("--directions", default="A,B", help="training generators, comma list of A, B and C")
    ap.add_argument("--test-gens", default="A,B", help="generators of the held-out test sets, comma list of A, B and C")
    ap.add_argument("--threads", type=int, default=THREADS, help="CPU threads for training and evaluation")
    ap.add_argument("--seeds", type=int, default=1,
                    help="train each model this many times (seeds --first-seed onwards) on the same images; the table pools "
                         "them and shows the spread of the per-seed Dice means (one run moves B Dice by ~0.01)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run are first-seed .. first-seed+N-1 (to spread seeds over processes or machines)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                    help="train nothing: pool the per_image.csv of earlier runs' --out folders into one table")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where both models train and run")
    ap.add_argument("--test-seed", type=int, default=TEST_SEED,
                    help=f"base seed of the held-out images (default {TEST_SEED}; the README's blind sets use 9). "
                    f"Must differ from the training seed {TRAIN_SEED}")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_generalisation"))
    args = ap.parse_args()
    if args.test_seed == TRAIN_SEED:
        ap.error(f"--test-seed {TRAIN_SEED} would test on the training images")
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if args.merge:
        print(merge_runs(args.merge, args.out))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch build sees no CUDA device")
    if args.quick:
        args.epochs_sam2rad, args.epochs_unet, args.n_train, args.n_test = 2, 2, 5, 4
    torch.set_num_threads(args.threads)
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    test_gens = [d.strip() for d in args.test_gens.split(",") if d.strip()]
    for name, gens in (("--directions", directions), ("--test-gens", test_gens)):
        if not gens or not set(gens) <= set(GENERATORS):
            ap.error(f"{name} takes a comma list of {', '.join(GENERATORS)}")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    tests = {g: load_generator(g, args.n_test, args.test_seed) for g in test_gens}
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": {}}
    rows: list[dict] = []
    flips = {"both": (False, True), "on": (True,), "off": (False,)}[args.flip]  # both models alike
    for gen in directions:
        train = load_generator(gen, args.n_train, TRAIN_SEED)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            tag = {"train_gen": gen, "seed": seed}
            if args.only in (None, "sam2rad"):
                t = time.perf_counter()
                model, meta["init"] = train_sam2rad(train, args.epochs_sam2rad, seed=seed, init=args.init, device=args.device)
                meta["seconds"][f"sam2rad_train_{gen}_seed{seed}"] = took = round(time.perf_counter() - t, 1)
                print(f"sam2rad starting weights: {meta['init']}", flush=True)
                for te, samples in tests.items():
                    for flip in flips:
                        rows += eval_sam2rad(model, samples, {**tag, "test_gen": te}, flip)
                print(f"[{time.strftime('%H:%M:%S')}] sam2rad trained on {gen} (seed {seed}): {took} s", flush=True)
                print(write_outputs(args.out, rows, meta), flush=True)
            if args.only in (None, "unet"):
                from sam2rad.baselines.unet import train_unet

                t = time.perf_counter()
                unet = train_unet(train, epochs=args.epochs_unet, seed=seed, threads=args.threads, progress=False,
                                  device=args.device)
                meta["seconds"][f"unet_train_{gen}_seed{seed}"] = took = round(time.perf_counter() - t, 1)
                for te, samples in tests.items():
                    for flip in flips:
                        rows += eval_unet(unet, samples, {**tag, "test_gen": te}, flip)
                print(f"[{time.strftime('%H:%M:%S')}] unet trained on {gen} (seed {seed}): {took} s "
                      f"({unet.seconds / args.epochs_unet:.2f} s/epoch, final loss {unet.history[-1]['loss']:.4f})", flush=True)
                print(write_outputs(args.out, rows, meta), flush=True)
    print(f"\nper-image CSV and table: {args.out}/")


if __name__ == "__main__":
    main()
