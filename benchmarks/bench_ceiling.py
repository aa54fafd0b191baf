"""The nightly pipeline's ceiling: how many frames a second it can feed a model that costs nothing.

The model's `predict` is replaced by a fake on the loaded demo checkpoint (so the SEGs keep the real
algorithm identity): `instant` returns a band mask at once; `gpu` sleeps `--gpu-ms` per image first
(time.sleep holds no CPU and releases the GIL, like waiting on a GPU). Three paths, on the same archive,
each with a fresh ledger and outbox:
  functions  discover, then per study fetch -> process_study (ingest, predict, SEG write) -> store +
             ledger (InstanceRecorder): the pipeline functions called in a plain serial loop
  run_chunk  the overlapped chunk runner of pipeline/ (when present), called directly, no Prefect
  flow       the nightly flow in Prefect's local mode, timed after a warm-up flow (server start excluded)
Archives: the demo archive (flows/demo/) and a generated one (--studies x --per-study instances, every
--cine-every-th a cine loop of --cine-frames frames), written into a temporary folder.

Device-busy (the `gpu` model, on the generated archive): seconds inside predict divided by
  night     the wall time of the path's whole call, the strict figure (for the flow: its start,
            discovery, tables and artifacts included; for the others: discovery to the last ledger mark);
  span      the span from the first predict call's start to the last one's end.
hidden: (the same path's wall time with the instant model + time inside the sleeping predict - wall
time with the sleeping model) / time inside predict: how much of the model's time the path hides
behind its own work (100 %: all of it). On a loaded machine busy falls with the CPU share the
pipeline gets; hidden says whether the overlap itself works.
Targets on the 2-core CPU machine: flow >= 30 frames/s on the demo archive, flow >= 0.8x functions on
the generated archive, device-busy (night) >= 80 %. The last line is the generated archive's:
`flow ceiling: X frames/s; functions alone: Y frames/s; ratio Z`.
The machine is shared: use --repeat 3 for medians of interleaved rounds, and read the load average.
Usage: .venv/bin/python benchmarks/bench_ceiling.py [--studies 40] [--gpu-ms 10] [--repeat 3] [--quick]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import numpy as np  # noqa: E402

DAY = dt.date(2026, 2, 3)


@dataclass
class FakePrediction:
    masks: np.ndarray  # (C, H, W) bool
    boxes: np.ndarray  # (C, 4)
    scores: np.ndarray  # (C,)


class FakePredict:
    """Stands in for Sam2Rad.predict: a band across the middle of each image, after `seconds_per_image`
    of sleep (0: instant). Counts the time spent inside, and the span of the calls."""

    def __init__(self, n_classes: int, seconds_per_image: float = 0.0) -> None:
        self.n_classes, self.seconds_per_image = n_classes, seconds_per_image
        self.busy = 0.0
        self.first_start: float | None = None
        self.last_end = 0.0
        self.calls = self.images = 0
        self._lock = threading.Lock()

    def __call__(self, images, mode: str = "auto") -> list[FakePrediction]:
        start = time.perf_counter()
        if self.seconds_per_image:
            time.sleep(self.seconds_per_image * len(images))
        out = []
        for image in images:
            h, w = image.shape[:2]
            masks = np.zeros((self.n_classes, h, w), dtype=bool)
            masks[:, h // 3: h // 2, w // 8: w - w // 8] = True
            box = [w // 8, h // 3, w - w // 8, h // 2]
            out.append(FakePrediction(masks, np.array([box] * self.n_classes, float), np.full(self.n_classes, 0.9)))
        end = time.perf_counter()
        with self._lock:
            self.busy += end - start
            self.first_start = start if self.first_start is None else min(self.first_start, start)
            self.last_end = max(self.last_end, end)
            self.calls += 1
            self.images += len(images)
        return out


def write_large_archive(root: Path, studies: int, per_study: int, cine_every: int, cine_frames: int,
                        size: tuple[int, int]) -> int:
    """Synthetic US studies (single frames and cine loops) built like the demo's; returns the instances."""
    from flows.demo.archive import demo_uid, synthetic_us_dataset
    from sam2rad.data.synthetic import generate

    samples = [generate(40_000 + k, size, anatomy=("hip", "wrist", "shoulder")[k % 3], text=True) for k in range(6)]
    n = 0
    for s in range(studies):
        study, series = demo_uid("ceiling-study", s), demo_uid("ceiling-series", s)
        for i in range(per_study):
            sample = samples[(s + i) % len(samples)]
            cine = cine_every > 0 and i % cine_every == cine_every - 1
            shifts = range(cine_frames) if cine else [i]
            frames = np.stack([np.roll(sample.image, k + s, axis=0) for k in shifts])
            ds = synthetic_us_dataset(frames, sample, study, series, demo_uid("ceiling-instance", s, i),
                                      f"CEIL{s:04d}", DAY.strftime("%Y%m%d"), i + 1, cine)
            path = root / "inbox" / f"study-{s:04d}" / f"{i:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            n += 1
    return n


def _settings(inbox: Path, out: Path):
    from pipeline.pacs import PacsSettings

    return PacsSettings.from_env().replace(kind="folder", inbox=inbox, outbox=out / "outbox",
                                           store_outbox=out / "store-outbox")


def run_functions(model, inbox: Path, out: Path, date: dt.date, batch_size: int) -> int:
    """The serial loop; returns the frames segmented."""
    from pipeline.inference import seg_algorithm_for
    from pipeline.ledger import Ledger
    from pipeline.pacs import Outbox, open_archive
    from pipeline.seg import SegWriter
    from pipeline.staging import study_staging
    from pipeline.studies import DateWindow
    from pipeline.study_processing import InstanceRecorder, process_study

    settings = _settings(inbox, out)
    archive = open_archive(settings)
    ledger = Ledger(out / "ledger.sqlite")
    algorithm = seg_algorithm_for(model)
    writer = SegWriter(algorithm)
    frames = 0
    for ref in archive.discover(DateWindow(date, date)):
        recorder = InstanceRecorder(ledger, algorithm.fingerprint, ref.study_uid, archive,
                                    Outbox(settings.store_outbox), settings.retry_policy())
        seg_dir = out / "segs" / ref.study_uid
        seg_dir.mkdir(parents=True, exist_ok=True)
        with study_staging(out) as staging:
            fetched = archive.fetch(ref, staging)
            outcome = process_study(fetched, model, writer, seg_dir, "auto", batch_size,
                                    is_done=recorder.is_done, on_result=recorder.record)
        frames += outcome.frames
    return frames


def run_chunked(model, inbox: Path, out: Path, date: dt.date, batch_size: int) -> int | None:
    """pipeline.chunk_runner.run_chunk on every study at once (None before it existed)."""
    try:
        from pipeline.chunk_runner import run_chunk
    except ImportError:
        return None
    from pipeline.pacs import open_archive
    from pipeline.studies import DateWindow

    settings = _settings(inbox, out)
    refs = open_archive(settings).discover(DateWindow(date, date))
    result = run_chunk(settings, refs, None, "auto", batch_size, False, str(out / "run"),
                       str(out / "ledger.sqlite"), model=model)
    return sum(study.frames for study in result.studies)


FLOW_OPTIONS: dict = {}  # extra nightly() parameters (--studies-per-chunk)


def run_flow(inbox: Path, out: Path, date: dt.date, batch_size: int) -> int:
    from flows.nightly import nightly
    from flows.runtime import local_run_settings

    with local_run_settings():  # as `sam2rad run-nightly` calls it
        summary = nightly(inbox=str(inbox), outbox=str(out / "outbox"), start_date=date.isoformat(),
                          end_date=date.isoformat(), output_dir=str(out / "runs"), batch_size=batch_size,
                          **FLOW_OPTIONS)
    assert summary["failed"] == 0 and not summary["study_errors"], summary["headline"]
    return int(summary["frames"])


@dataclass
class Timing:
    archive: str
    path: str
    seconds: float
    frames: int
    busy: FakePredict
    start: float = 0.0  # perf_counter at the call
    end: float = 0.0

    @property
    def head_tail(self) -> tuple[float, float]:
        """Seconds from the call to the first predict (start-up, discovery, first fetch and decode),
        and from the last predict's end to the return (last SEGs, stores, tables, artifacts)."""
        return (self.busy.first_start or self.start) - self.start, self.end - (self.busy.last_end or self.end)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    def busy_fractions(self) -> tuple[float, float]:
        span = self.busy.last_end - (self.busy.first_start or 0.0)
        return self.busy.busy / self.seconds, (self.busy.busy / span if span > 0 else 0.0)


def timed(model, fake: FakePredict, archive: str, path: str, run, *args) -> Timing | None:
    model.predict = fake
    start = time.perf_counter()
    frames = run(model, *args) if path != "flow" else run(*args)
    end = time.perf_counter()
    return None if frames is None else Timing(archive, path, end - start, frames, fake, start, end)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=40, help="studies in the generated archive (default 40)")
    ap.add_argument("--per-study", type=int, default=5, help="instances per generated study (default 5)")
    ap.add_argument("--cine-every", type=int, default=5, help="every n-th instance is a cine loop (default 5)")
    ap.add_argument("--cine-frames", type=int, default=8, help="frames per generated cine loop (default 8)")
    ap.add_argument("--size", type=int, nargs=2, default=(300, 280), metavar=("ROWS", "COLS"))
    ap.add_argument("--gpu-ms", type=float, default=10.0, help="the sleeping model's milliseconds per image")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--studies-per-chunk", type=int, help="the flow's chunk size (default: the flow's default)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; medians are reported (default 1)")
    ap.add_argument("--quick", action="store_true", help="8 generated studies: a smoke run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.quick:
        args.studies = 8
    if args.studies_per_chunk:
        FLOW_OPTIONS["studies_per_chunk"] = args.studies_per_chunk
    os.environ.setdefault("SAM2RAD_THREADS", "2")
    from prefect import flow

    from flows.demo.archive import write_demo_archive
    from flows.runtime import default_device, load_model

    root = Path(tempfile.mkdtemp(prefix="sam2rad-ceiling-"))
    t0 = time.perf_counter()
    demo = write_demo_archive(root / "demo", study_date=DAY)
    n_large = write_large_archive(root / "large", args.studies, args.per_study, args.cine_every,
                                  args.cine_frames, tuple(args.size))
    print(f"archives written in {time.perf_counter() - t0:.1f} s: demo {len(demo.files)} instances, "
          f"generated {n_large} instances in {args.studies} studies ({root})")
    model = load_model(None, default_device())  # the flow's own cached model: the fake replaces its predict
    n_classes = len(model.class_names)

    @flow
    def warm_up() -> None:
        return None

    t0 = time.perf_counter()
    warm_up()
    print(f"Prefect temporary server start: {time.perf_counter() - t0:.1f} s (not counted)")

    model.predict = FakePredict(n_classes)
    run_functions(model, root / "demo" / "inbox", root / "out" / "warm-up", DAY, args.batch_size)  # imports, caches
    paths = (("functions", run_functions), ("run_chunk", run_chunked), ("flow", run_flow))
    large = root / "large" / "inbox"
    cases = [("demo", root / "demo" / "inbox", 0.0), ("generated", large, 0.0), ("generated", large, args.gpu_ms / 1000)]
    rounds: dict[tuple[str, str, float], list[Timing]] = {}
    for k in range(args.repeat):  # rounds interleave the paths, so a busy spell on the machine hits them all
        for archive, inbox, seconds in cases:
            for path, fn in paths:
                out = root / "out" / f"{k}-{archive}-{seconds}-{path}"
                t = timed(model, FakePredict(n_classes, seconds), archive, path, fn, inbox, out, DAY, args.batch_size)
                if t:
                    rounds.setdefault((archive, path, seconds), []).append(t)
    median = {key: sorted(ts, key=lambda t: t.seconds)[len(ts) // 2] for key, ts in rounds.items()}
    timings = [t for (archive, path, seconds), t in median.items() if seconds == 0.0]
    gpu = [t for (archive, path, seconds), t in median.items() if seconds > 0.0]

    print(f"\ninstant model (medians of {args.repeat} round(s); batch {args.batch_size}; {os.cpu_count()} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.1f})")
    print(f"{'archive':<11}{'path':<11}{'frames':>8}{'seconds':>9}{'frames/s':>10}{'x functions':>13}")
    for t in timings:
        base = median[(t.archive, "functions", 0.0)]
        print(f"{t.archive:<11}{t.path:<11}{t.frames:>8}{t.seconds:>9.2f}{t.fps:>10.1f}{t.fps / base.fps:>13.2f}")
    print(f"\nmodel sleeping {args.gpu_ms:g} ms an image, generated archive: device-busy = time inside predict / "
          f"wall time of the whole call (night), or of the span from the first predict to the last (span)")
    print("hidden = the share of the model's time that costs no wall time (vs the same path with the instant model)")
    print("head / tail = seconds before the first model call / after the last one (fixed costs of a night)")
    print(f"{'path':<11}{'frames':>8}{'seconds':>9}{'frames/s':>10}{'busy night':>12}{'busy span':>11}{'hidden':>8}"
          f"{'head s':>8}{'tail s':>8}")
    for t in gpu:
        night, span = t.busy_fractions()
        instant = median[("generated", t.path, 0.0)].seconds
        hidden = (instant + t.busy.busy - t.seconds) / t.busy.busy
        head, tail = t.head_tail
        print(f"{t.path:<11}{t.frames:>8}{t.seconds:>9.2f}{t.fps:>10.1f}{night:>12.1%}{span:>11.1%}{hidden:>8.0%}"
              f"{head:>8.2f}{tail:>8.2f}")
    flow_t, func_t = median[("generated", "flow", 0.0)], median[("generated", "functions", 0.0)]
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(f"flow ceiling: {flow_t.fps:.1f} frames/s; functions alone: {func_t.fps:.1f} frames/s; "
          f"ratio {flow_t.fps / func_t.fps:.2f}")


if __name__ == "__main__":
    main()
