"""The overlapped chunk runner (pipeline/chunk_runner.py), without Prefect: the same rows and SEGs as the
serial path, in order; bounded queues; one bad study or instance fails alone; every instance recorded once.
Last, the nightly flow (Prefect local mode) on several chunks, one of which fails as a whole."""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from prefect.serializers import JSONSerializer

from pipeline import chunk_stages
from pipeline.chunk_pipe import RESULT_QUEUE_ITEMS
from pipeline.chunk_runner import ChunkResult, run_chunk
from pipeline.ledger import Ledger, Status
from pipeline.pacs import Outbox, PacsSettings, PacsUnreachable, RetryPolicy
from pipeline.pacs.folder import FolderArchive
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.studies import DateWindow
from pipeline.study_processing import InstanceRecorder, process_study
from tests import dicom_factory as f
from tests.fake_models import prediction

CARD = SegAlgorithm(name="Sam2Rad", version="0.1.0", backbone_fingerprint="test:0", checkpoint_sha256="ab" * 32,
                    mode="auto", class_names=("bone",))
WINDOW = DateWindow(dt.date(2026, 1, 1), dt.date(2026, 1, 1))


class ThresholdModel:
    """Bright pixels are bone; remembers the size of every call (and can refuse some images)."""

    class_names = ("bone",)

    def __init__(self, seconds_per_image: float = 0.0, refuse_cols: int | None = None) -> None:
        self.seconds_per_image, self.refuse_cols = seconds_per_image, refuse_cols
        self.batches: list[int] = []
        self.on_call = lambda images: None

    def predict(self, images, mode="auto"):
        self.on_call(images)
        self.batches.append(len(images))
        time.sleep(self.seconds_per_image * len(images))
        if self.refuse_cols is not None and any(np.asarray(im).shape[1] == self.refuse_cols for im in images):
            raise ValueError("an image this model cannot take")
        return [prediction(np.asarray(im) > 128, (0.0, 0.0, 4.0, 4.0), 0.9) for im in images]


def write_archive(inbox: Path, studies: int = 4, odd_one: tuple[int, int] | None = None, rows: int = 48) -> list[str]:
    """`studies` studies of two single frames and a 3-frame cine, `rows` x 64 pixels; `odd_one` (study,
    instance) is 70 columns wide."""
    uids = []
    for s in range(studies):
        study = f"1.2.826.0.1.3680043.8.498.{700 + s}"
        uids.append(study)
        for i in range(3):
            cols = 70 if odd_one == (s, i) else 64
            grey = f.grey_cine(3, rows, cols) if i == 2 else f.grey_image(rows, cols, seed=s * 3 + i)
            ds = f.us_image(grey, study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.{i + 1}")
            f.save(ds, inbox / f"s{s}" / f"{i}.dcm")
    return uids


def settings(tmp_path: Path) -> PacsSettings:
    return PacsSettings.from_env().replace(kind="folder", inbox=tmp_path / "inbox", outbox=tmp_path / "outbox",
                                           store_outbox=tmp_path / "store-outbox")


def chunk(tmp_path: Path, model, **hooks) -> ChunkResult:
    s = settings(tmp_path)
    refs = FolderArchive.from_settings(s).discover(WINDOW)
    return run_chunk(s, refs, None, "auto", 4, False, str(tmp_path / "runs" / "night"),
                     str(tmp_path / "ledger.sqlite"), model=model, algorithm=CARD,
                     fetch_retry_delays=hooks.pop("fetch_retry_delays", (0.0, 0.0)), **hooks)


def seg_masks(folder: Path) -> dict[str, bytes]:
    return {p.name: pydicom.dcmread(p).PixelData for p in sorted(folder.rglob("*.dcm"))}


def test_a_chunk_gives_the_serial_paths_rows_and_segs_in_order(tmp_path):
    studies = write_archive(tmp_path / "inbox")
    result = chunk(tmp_path, ThresholdModel())
    assert [r.study_uid for r in result.studies] == studies and not result.study_errors
    assert [row.sop_uid for row in result.studies[0].rows] == [f"{studies[0]}.1.{i}" for i in (1, 2, 3)]
    assert result.frames == 4 * 5 and all(r.stored == 3 for r in result.studies)
    assert all(row.path.startswith(str(tmp_path / "inbox")) for r in result.studies for row in r.rows)

    serial = tmp_path / "serial"  # the same archive through process_study, study by study
    archive = FolderArchive(tmp_path / "inbox", serial / "outbox")
    ledger = Ledger(serial / "ledger.sqlite")
    for ref in archive.discover(WINDOW):
        recorder = InstanceRecorder(ledger, CARD.fingerprint, ref.study_uid, archive, Outbox(serial / "store-outbox"),
                                    RetryPolicy(attempts=1))
        fetched = archive.fetch(ref, serial / "staging")
        outcome = process_study(fetched, ThresholdModel(), SegWriter(CARD), serial / "segs", on_result=recorder.record)
        [ours] = [r for r in result.studies if r.study_uid == ref.study_uid]
        assert [(a.sop_uid, a.status, a.mask_area_mean, a.confidence, a.seg_sop_uid) for a in outcome.rows] == \
               [(b.sop_uid, b.status, b.mask_area_mean, b.confidence, b.seg_sop_uid) for b in ours.rows]
    assert seg_masks(serial / "outbox") == seg_masks(tmp_path / "outbox")  # same SEG UIDs, same masks
    assert not any((tmp_path / "runs" / "staging").iterdir())  # every study's staged files removed


def test_frames_of_small_instances_share_a_model_batch(tmp_path):
    write_archive(tmp_path / "inbox", studies=2)
    model = ThresholdModel()
    chunk(tmp_path, model)
    assert model.batches == [4, 4, 2]  # 10 frames from 6 instances of 2 studies, 4 at a time


def test_the_reader_and_writer_stay_within_their_queues(tmp_path, monkeypatch):
    """A slow model: the reader decodes at most the frame queue plus a batch ahead of it. A slow writer:
    at most the result queue plus a batch of instances hold masks that are not written yet."""
    write_archive(tmp_path / "inbox", studies=6)
    decoded, predicted, ahead = [0], [0], []
    iter_frames = chunk_stages.iter_frames

    def counting_frames(instance):
        for frame in iter_frames(instance):
            decoded[0] += 1
            yield frame

    def note(images):
        ahead.append(decoded[0] - predicted[0])
        predicted[0] += len(images)

    monkeypatch.setattr(chunk_stages, "iter_frames", counting_frames)
    model = ThresholdModel(seconds_per_image=0.01)
    model.on_call = note
    assert chunk(tmp_path, model).frames == 30
    assert max(ahead) <= 2 * 4 + 4 + 1  # frame queue (2 x batch) + this batch + the frame the reader holds

    with_masks, written, unwritten = [0], [0], []
    prediction_class, write_instance = chunk_stages.InstancePrediction, chunk_stages.write_instance

    class CountedPrediction(prediction_class):
        def __init__(self, *args):
            super().__init__(*args)
            with_masks[0] += 1

    def slow_write(*args, **kwargs):
        unwritten.append(with_masks[0] - written[0])
        time.sleep(0.02)
        written[0] += 1
        return write_instance(*args, **kwargs)

    monkeypatch.setattr(chunk_stages, "InstancePrediction", CountedPrediction)
    monkeypatch.setattr(chunk_stages, "write_instance", slow_write)
    (tmp_path / "ledger.sqlite").unlink()
    assert chunk(tmp_path, ThresholdModel()).frames == 30
    assert 1 < max(unwritten) <= 4 + RESULT_QUEUE_ITEMS + 2


def test_memory_stays_flat_as_the_chunk_grows(tmp_path):
    """Peak traced memory of a chunk of 18 studies is about that of 6: only the queues' worth of frames
    and masks is held (all 18 studies' frames alone would be 5.8 MB; held all, 3x the studies would
    be about 3x the peak). Measured over 11 runs: 6 studies 2.0-2.8 MB, 18 studies 2.8-3.3 MB, ratio
    1.0-1.46, depending on how far the writer lags the model; 1.3 failed about one run in five."""
    import tracemalloc

    def peak(studies: int) -> int:
        folder = tmp_path / f"n{studies}"
        write_archive(folder / "inbox", studies=studies, rows=1024)
        tracemalloc.start()
        try:
            chunk(folder, ThresholdModel(seconds_per_image=0.002))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(1)  # first-use allocations (module caches) are not the chunk's
    small, large = peak(6), peak(18)
    assert large < 1.75 * small and large < 4_500_000, (small, large)


def test_a_study_that_cannot_be_fetched_fails_alone(tmp_path, monkeypatch):
    studies = write_archive(tmp_path / "inbox")
    fetch, calls = FolderArchive.fetch, []

    def flaky(self, ref, dest):
        calls.append(ref.study_uid)
        if ref.study_uid == studies[1]:
            raise PacsUnreachable("archive away")  # transient, tried again, still down
        if ref.study_uid == studies[2] and calls.count(studies[2]) == 1:
            raise PacsUnreachable("dropped once")  # transient, works the second time
        return fetch(self, ref, dest)

    monkeypatch.setattr(FolderArchive, "fetch", flaky)
    result = chunk(tmp_path, ThresholdModel())
    assert [r.study_uid for r in result.studies] == [studies[0], studies[2], studies[3]]
    assert list(result.study_errors) == [studies[1]] and "archive away" in result.study_errors[studies[1]]
    assert calls.count(studies[1]) == 3 and calls.count(studies[2]) == 2
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 9


def test_a_bad_instance_in_a_shared_batch_fails_alone(tmp_path):
    studies = write_archive(tmp_path / "inbox", odd_one=(1, 0))
    result = chunk(tmp_path, ThresholdModel(refuse_cols=70))
    rows = {row.sop_uid: row for r in result.studies for row in r.rows}
    assert rows[f"{studies[1]}.1.1"].status == "failed" and "cannot take" in rows[f"{studies[1]}.1.1"].error
    assert sum(row.status == "ok" for row in rows.values()) == 11 and not result.study_errors
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.entry(f"{studies[1]}.1.1", CARD.fingerprint).status is Status.FAILED


def test_every_instance_is_recorded_once_and_a_rerun_stores_nothing(tmp_path):
    write_archive(tmp_path / "inbox")
    recorded: list[str] = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def is_done(self, sop_uid):
            return self.inner.is_done(sop_uid)

        def record(self, row, seg):
            recorded.append(row.sop_uid)
            self.inner.record(row, seg)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    first = chunk(tmp_path, ThresholdModel(), recorder_for=lambda ref, rec: Counting(rec))
    assert sorted(recorded) == sorted(set(recorded)) and len(recorded) == 12
    ledger = Ledger(tmp_path / "ledger.sqlite")
    entries = [ledger.entry(uid, CARD.fingerprint) for uid in recorded]
    assert all(e.status is Status.DONE and e.attempts == 1 for e in entries)
    second = chunk(tmp_path, ThresholdModel(), recorder_for=lambda ref, rec: Counting(rec))
    assert len(recorded) == 12 and sum(r.stored for r in second.studies) == 0
    assert sum(r.already_done for r in second.studies) == 12 and sum(r.stored for r in first.studies) == 12
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 12


def test_a_gpu_slot_timeout_stops_the_chunk_and_keeps_what_was_settled(tmp_path):
    write_archive(tmp_path / "inbox")
    calls = [0]

    class Guard:
        def __enter__(self):
            calls[0] += 1
            if calls[0] == 3:
                raise TimeoutError("no gpu slot")

        def __exit__(self, *exc):
            return False

    before = threading.active_count()
    with pytest.raises(TimeoutError, match="no gpu slot"):
        chunk(tmp_path, ThresholdModel(), batch_guard=Guard)
    assert threading.active_count() == before  # the reader and writer stopped too
    assert not any((tmp_path / "runs" / "staging").iterdir())  # staged source DICOM removed
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.counts(CARD.fingerprint).get("pending", 0) == 0  # nothing half-recorded


def test_a_chunk_result_round_trips_through_prefects_json_serializer(tmp_path):
    write_archive(tmp_path / "inbox", studies=1)
    result = chunk(tmp_path, ThresholdModel())
    serializer = JSONSerializer()
    back = serializer.loads(serializer.dumps(result))
    assert back == result and isinstance(back, ChunkResult)


_NIGHT = """
import json
import numpy as np
from flows.runtime import default_device, load_model
from tests.fake_models import prediction

def predict(images, mode="auto"):  # instant; an image 70 columns wide stands for a GPU that never frees a slot
    if any(np.asarray(im).shape[1] == 70 for im in images):
        raise TimeoutError("no gpu slot")
    return [prediction(np.asarray(im) > 128, (0.0, 0.0, 4.0, 4.0), 0.9) for im in images]

load_model(None, default_device()).predict = predict  # the flow's own cached model
from flows.nightly import StudiesFailed, nightly
try:
    s = nightly(inbox={inbox!r}, outbox={outbox!r}, start_date="2026-01-01", output_dir={runs!r}, studies_per_chunk=1)
except StudiesFailed as exc:
    s = exc.summary
print("NIGHT", json.dumps({{k: s[k] for k in ("studies", "succeeded", "stored", "study_errors")}}))
"""


def test_the_nightly_flow_runs_chunks_side_by_side_and_a_failed_chunk_fails_its_studies(tmp_path):
    import json
    import os
    import subprocess
    import sys

    studies = write_archive(tmp_path / "inbox", studies=4, odd_one=(2, 1))
    script = _NIGHT.format(inbox=str(tmp_path / "inbox"), outbox=str(tmp_path / "outbox"), runs=str(tmp_path / "runs"))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=600)
    assert "NIGHT " in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    night = json.loads(out.stdout.split("NIGHT ", 1)[1].splitlines()[0])
    assert night["studies"] == 4 and list(night["study_errors"]) == [studies[2]]
    assert "no gpu slot" in night["study_errors"][studies[2]]
    assert night["succeeded"] == night["stored"] == 9  # the three other studies, four chunks of one study
    ledger = Ledger(tmp_path / "runs" / "ledger.sqlite")
    assert sum(ledger.counts().values()) == 9 and ledger.counts().get("done") == 9


def test_on_last_study_is_called_once_as_the_reader_starts_the_last_study(tmp_path, monkeypatch):
    """The nightly starts the next chunk then, so its start-up overlaps this chunk's last study."""
    import pipeline.chunk_stages as stages

    studies = write_archive(tmp_path / "inbox", studies=3)
    fetched: list[str] = []
    calls: list[list[str]] = []
    real_fetch = stages.fetch_with_retries

    def fetch(archive, study, *args):
        fetched.append(study.ref.study_uid)
        return real_fetch(archive, study, *args)

    monkeypatch.setattr(stages, "fetch_with_retries", fetch)
    chunk(tmp_path, ThresholdModel(), on_last_study=lambda: calls.append(list(fetched)))
    assert calls == [studies[:2]]  # once, after the first two fetches and before the last one


def test_a_chunk_starts_when_the_one_before_starts_its_last_study(monkeypatch):
    """flows.nightly._segment_chunks with stand-in chunk tasks: chunk 2 is submitted only once chunk 1
    has said it started its last study, never more than CHUNKS_IN_FLIGHT run at once, and a chunk that
    ends without saying so (failed, cached) does not hold the night up."""
    import concurrent.futures
    import threading
    from types import SimpleNamespace

    import flows.nightly as nightly
    from pipeline.night_chunks import NightChunk

    log: list[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(4)
    release = {i: threading.Event() for i in range(3)}

    def run(i: int, key: str) -> None:
        log.append(f"start {i}")
        if i != 1:  # chunk 1 ends without signalling, like a cached chunk
            time.sleep(0.1)  # its first studies
            log.append(f"signal {i}")
            nightly._LAST_STUDY_STARTED[key].set()
        release[i].wait(5)
        log.append(f"end {i}")

    def submit(refs, last_study_key):
        i = int(refs[0])
        log.append(f"submit {i}")
        future = pool.submit(run, i, last_study_key)
        state = SimpleNamespace(name="Completed", result=lambda: nightly.ChunkResult([], {}, 0, 0.0, 0.0, 0))
        return SimpleNamespace(wrapped_future=future, wait=lambda: future.result(), state=state)

    monkeypatch.setattr(nightly, "get_run_logger", lambda: SimpleNamespace(error=lambda *a: None))
    chunks = [NightChunk(chunk_id=str(i), studies=(str(i),)) for i in range(3)]
    threading.Timer(0.3, release[0].set).start()
    threading.Timer(0.6, release[1].set).start()
    threading.Timer(0.9, release[2].set).start()
    nightly._segment_chunks(chunks, submit)
    assert log.index("submit 1") > log.index("signal 0")  # after chunk 0 said it started its last study
    assert log.index("submit 1") < log.index("end 0")  # but before it ended: the two overlap
    assert log.index("submit 2") > log.index("end 0")  # two in flight at most: chunk 0 had to finish
    assert log.index("submit 2") > log.index("end 1")  # chunk 1 never signalled: chunk 2 waited for its end
    assert log.count("end 2") == 1  # and the night still finished
    assert not nightly._LAST_STUDY_STARTED  # no event left behind
