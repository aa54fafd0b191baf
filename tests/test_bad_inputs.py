"""Issue 16: bad and hostile inputs in a folder archive never stop the night.

Each class puts one bad file beside a good instance of the same study and runs the nightly path
without Prefect (discover -> fetch -> ingest -> model -> SEG), with a threshold model. Every bad file
ends as a row or a rejected-file entry with a named reason, and the good file still gets its SEG.
docs/bad_inputs.md is the table of these classes and outcomes.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest

from pipeline.ingest import ingest, read_instance
from pipeline.pacs.folder import FolderArchive
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.studies import DateWindow
from pipeline.study_processing import process_study
from tests import dicom_factory as f
from tests.fake_models import prediction

CARD = SegAlgorithm(name="Sam2Rad", version="0.1.0", backbone_fingerprint="test:0", checkpoint_sha256="ab" * 32,
                    mode="auto", class_names=("bone",))
WINDOW = DateWindow(dt.date(2026, 1, 1), dt.date(2026, 1, 1))
DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")


class ThresholdModel:
    """Stand-in for Sam2Rad: bright pixels are bone."""

    class_names = ("bone",)

    def predict(self, images, mode="auto"):
        return [prediction(np.asarray(im) > 128, (0.0, 0.0, 4.0, 4.0), 0.9)
                for im in images]


@dataclass
class Night:
    rows: list
    rejected: list
    seg_paths: list[Path]
    good_sop: str


def run_night(tmp_path: Path, make_bad: Callable[[Path], object]) -> Night:
    """A good instance and a bad file (made by make_bad(inbox)) through discover -> fetch -> process_study."""
    inbox, staging, segs = tmp_path / "inbox", tmp_path / "staging", tmp_path / "segs"
    good = f.us_image(f.grey_image(64, 64))
    f.save(good, inbox / "good.dcm")
    make_bad(inbox)
    archive = FolderArchive(inbox, tmp_path / "outbox")
    rows, seg_paths = [], []
    for ref in archive.discover(WINDOW):
        fetched = archive.fetch(ref, staging)
        out = segs / ref.study_uid
        out.mkdir(parents=True, exist_ok=True)
        outcome = process_study(fetched, ThresholdModel(), SegWriter(CARD), out)
        rows += outcome.rows
        seg_paths += [s.path for s in outcome.segs]
    return Night(rows, archive.rejected, seg_paths, str(good.SOPInstanceUID))


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


# -- builders of bad files: each takes the inbox -------------------------------------------------------

def _good(**identity) -> pydicom.Dataset:
    return f.us_image(f.grey_image(64, 64), **identity)


def _saved(change: Callable[[pydicom.Dataset], object], name: str = "bad.dcm", **identity) -> Callable[[Path], Path]:
    def make(inbox: Path) -> Path:
        ds = _good(**identity)
        change(ds)
        return f.save(ds, inbox / name)
    return make


def _factory(writer: Callable[[Path], Path]) -> Callable[[Path], Path]:
    return lambda inbox: writer(inbox / "bad.dcm")


def _delete(*keywords: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        ds["PixelData"].VR = "OB"  # pydicom needs BitsAllocated to choose OB/OW otherwise
        for keyword in keywords:
            delattr(ds, keyword)
    return change


def _set(**values) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return change


def deeply_nested(inbox: Path, depth: int = 3000) -> Path:
    """A US instance whose ContentSequence nests `depth` levels (undefined lengths), written byte by byte."""
    path = f.save(_good(), inbox / "nested.dcm")
    data = path.read_bytes()
    at = data.find(b"\xe0\x7f\x10\x00O")  # the PixelData element (tags are written in ascending order)
    opening = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    path.write_bytes(data[:at] + opening * depth + closing * depth + data[at:])
    return path


def fifo(inbox: Path) -> Path:
    path = inbox / "pipe.dcm"
    os.mkfifo(path)
    return path


def link_outside(inbox: Path) -> Path:
    outside = f.save(_good(), inbox.parent / "elsewhere" / "outside.dcm")
    (inbox / "link.dcm").symlink_to(outside)
    return inbox / "link.dcm"


def link_to_etc_passwd(inbox: Path) -> Path:
    (inbox / "passwd.dcm").symlink_to("/etc/passwd")
    return inbox / "passwd.dcm"


def broken_link(inbox: Path) -> Path:
    (inbox / "broken.dcm").symlink_to(inbox / "nothing-here.dcm")
    return inbox / "broken.dcm"


def zero_bytes(inbox: Path) -> Path:
    (inbox / "empty.dcm").write_bytes(b"")
    return inbox / "empty.dcm"


def truncated_header(inbox: Path) -> Path:
    path = f.save(_good(), inbox / "cut.dcm")
    path.write_bytes(path.read_bytes()[:300])
    return path


def random_bytes(inbox: Path) -> Path:
    (inbox / "noise.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return inbox / "noise.dcm"


def _frames_mismatch(ds: pydicom.Dataset) -> None:
    cine = f.us_image(f.grey_cine(2, 64, 64))
    ds.update(cine)
    ds.NumberOfFrames = 3  # pixel data holds 2


def _rgb16(ds: pydicom.Dataset) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = np.zeros((64, 64, 3), dtype="<u2").tobytes()


def _rgb16_with_8bit_samples(ds: pydicom.Dataset) -> None:
    _rgb16(ds)
    ds.PixelData = np.zeros((64, 64, 3), dtype=np.uint8).tobytes()  # 8-bit samples labelled 16-bit


def _short_palette(ds: pydicom.Dataset) -> None:
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", b"\0\0" * 4)  # 4 entries, 256 declared


def huge_element_length(inbox: Path) -> Path:
    """A private OB element declaring 4 GB, before the patient and study groups: every later element
    (StudyInstanceUID included) is swallowed by it."""
    path = f.save(_good(), inbox / "huge_length.dcm")
    data = path.read_bytes()
    creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 4) + b"ACME"
    huge = struct.pack("<HH", 0x0009, 0x1001) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0) + b"xx"
    at = data.find(b"\x10\x00\x10\x00PN")  # PatientName: group 0009 goes just before it
    path.write_bytes(data[:at] + creator + huge + data[at:])
    return path


# What a reason must name (issue 16 (14): the attribute and the problem, never a library's message).
REASON_NAMES = {
    "rgb16_with_8bit_samples": "BitsAllocated is 16 but PixelData holds 12288 bytes, the size of 8-bit samples",
    "short_palette_lut": "RedPaletteColorLookupTableData holds 8 bytes; RedPaletteColorLookupTableDescriptor declares 256",
    "huge_element_length": "element (0009,1001) (a private element) declares a length of 4294967280 bytes",
    "truncated_pixels": "expected from Rows x Columns x SamplesPerPixel x BitsAllocated",
    "memory_bomb": "declares 3221225472 bytes decoded (4096 x 4096 x 3 samples x 64 frames x 1 byte), more than "
                   "the budget of 2147483648 bytes (SAM2RAD_MAX_DECODED_BYTES)",
}

GOOD_STUDY = f.STUDY_UID
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1000099"


def ct_only_study(inbox: Path) -> Path:
    """A study of the window with a CT instance and no US instance: not discovered, yet not silent."""
    path = f.ct_image_file(inbox / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = OTHER_STUDY
    return f.save(ds, path)


def _no_study_date(ds: pydicom.Dataset) -> None:
    del ds.StudyDate


def duplicate_of_good(name: str, study_uid: str | None = None) -> Callable[[Path], Path]:
    """Another file with the good instance's SOP Instance UID and other pixels (in its study or another one)."""
    def make(inbox: Path) -> Path:
        ds = pydicom.dcmread(inbox / "good.dcm")
        ds.PixelData = np.full((64, 64), 200, np.uint8).tobytes()
        if study_uid:
            ds.StudyInstanceUID = study_uid
        return f.save(ds, inbox / name)
    return make

def _overlong_identity(ds: pydicom.Dataset) -> None:
    """Issue 16 (13): a 2360-character PatientName (and other values over their VR's maximum length)."""
    ds.PatientName = "Longname^" + "Q" * 2351
    ds.PatientID = "P" * 80  # LO: 64
    ds.AccessionNumber = "A" * 40  # SH: 16
    ds.StudyID = "S" * 30  # SH: 16
    ds.ReferringPhysicianName = "Ref^" + "R" * 100  # PN: 64 per component group


def memory_bomb(inbox: Path) -> Path:
    """Issue 16 (9): a tiny JPEG 2000 file declaring 64 RGB frames of 4096x4096 (3 GiB decoded)."""
    from pydicom.encaps import encapsulate, generate_fragmented_frames
    from pydicom.uid import JPEG2000Lossless

    ds = f.compressed(_good(), JPEG2000Lossless)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1)))
    ds.Rows = ds.Columns = 4096
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.NumberOfFrames, ds.SOPClassUID = 64, "1.2.840.10008.5.1.4.1.1.3.1"
    ds.PixelData = encapsulate([frame] * 64)
    return f.save(ds, inbox / "bomb.dcm")


def damaged_j2k(inbox: Path) -> Path:
    """Issue 16 (18): JPEG 2000 with one bit flipped in its SIZ (8-bit samples now declared 16-bit) and its
    EOC marker lost: pylibjpeg-openjpeg decodes it without a word."""
    from pydicom.encaps import encapsulate, generate_fragmented_frames
    from pydicom.uid import JPEG2000Lossless

    ds = f.compressed(_good(), JPEG2000Lossless)
    frame = bytearray(b"".join(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))))
    frame[42] ^= 0x08  # Ssiz of component 0: precision 8 -> 16
    frame[-2:] = b"\0\0"  # EOC
    ds.PixelData = encapsulate([bytes(frame)])
    return f.save(ds, inbox / "damaged_j2k.dcm")


# name -> (builder(inbox), where the outcome is ("row" | "rejected" | "segmented"), code)
CLASSES: dict[str, tuple[Callable[[Path], object], str, str]] = {
    # files that are not usable DICOM at all: refused at discovery
    "not_dicom_text": (_factory(f.not_dicom_file), "rejected", "not_dicom"),
    "zero_bytes": (zero_bytes, "rejected", "not_dicom"),
    "random_bytes": (random_bytes, "rejected", "not_dicom"),
    "truncated_header": (truncated_header, "rejected", "unreadable"),
    "deeply_nested_sequences": (deeply_nested, "rejected", "unreadable"),
    "fifo": (fifo, "rejected", "not_regular_file"),
    "symlink_outside_inbox": (link_outside, "rejected", "link_outside_inbox"),
    "symlink_to_etc_passwd": (link_to_etc_passwd, "rejected", "link_outside_inbox"),
    "broken_symlink": (broken_link, "rejected", "broken_link"),
    "missing_study_uid": (_saved(_delete("StudyInstanceUID")), "rejected", "missing_identity"),
    "missing_sop_uid": (_saved(_delete("SOPInstanceUID")), "rejected", "missing_identity"),
    "sop_uid_path_traversal": (_saved(lambda ds: None, sop_uid="../../x"), "rejected", "invalid_uid"),
    "study_uid_path_traversal": (_saved(lambda ds: None, study_uid="../../../x"), "rejected", "invalid_uid"),
    "study_uid_absolute_path": (_saved(lambda ds: None, study_uid="/tmp/sam2rad-abs"), "rejected", "invalid_uid"),
    "uid_too_long": (_saved(lambda ds: None, sop_uid="1." + "2" * 70), "rejected", "invalid_uid"),
    "uid_with_letters": (_saved(lambda ds: None, sop_uid="1.2.abc"), "rejected", "invalid_uid"),
    # files of a study that is never fetched: no US instance in it, or no StudyDate to place it in a window
    "ct_only_study": (ct_only_study, "rejected", "not_ultrasound"),
    "no_study_date": (_saved(_no_study_date, study_uid=OTHER_STUDY), "rejected", "no_study_date"),
    # a second file with a SOP Instance UID already seen: the first file in path order (good.dcm) wins
    "duplicate_sop_uid_same_study": (duplicate_of_good("z_copy.dcm"), "rejected", "duplicate_sop_uid"),
    "duplicate_sop_uid_other_study": (duplicate_of_good("z_other.dcm", OTHER_STUDY), "rejected", "duplicate_sop_uid"),
    "huge_element_length": (huge_element_length, "rejected", "unreadable"),
    # DICOM that is not an ultrasound image: a skipped row
    "ct_image": (_factory(f.ct_image_file), "row", "not_ultrasound"),
    "mr_secondary_capture": (_factory(lambda p: f.secondary_capture_file(p, "MR")), "row", "not_ultrasound"),
    "segmentation": (_factory(f.segmentation_file), "row", "segmentation"),
    "structured_report": (_factory(f.structured_report_file), "row", "structured_report"),
    "presentation_state": (_factory(f.presentation_state_file), "row", "presentation_state"),
    "retired_us_sop_class": (_saved(_set(SOPClassUID="1.2.840.10008.5.1.4.1.1.6")), "row", "unsupported_sop_class"),
    # ultrasound images that cannot be segmented: a failed row
    "series_uid_invalid": (_saved(_set(SeriesInstanceUID="1.2.3/../4")), "row", "invalid_uid"),
    "missing_series_uid": (_saved(_delete("SeriesInstanceUID")), "row", "missing_identity"),
    "truncated_pixels": (_factory(f.truncated_file), "row", "truncated"),
    "no_pixel_data": (_factory(f.no_pixel_data_file), "row", "no_pixel_data"),
    "empty_pixel_data": (_saved(_set(PixelData=b"")), "row", "no_pixel_data"),
    "frame_count_mismatch": (_saved(_frames_mismatch), "row", "truncated"),
    "unsupported_transfer_syntax": (_factory(f.unsupported_transfer_syntax_file), "row", "unsupported_transfer_syntax"),
    "unknown_transfer_syntax": (_saved(lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4.5")), "row",
                                "unsupported_transfer_syntax"),
    "one_pixel": (_factory(f.one_pixel_file), "row", "image_too_small"),
    "zero_rows": (_saved(_set(Rows=0)), "row", "image_too_small"),
    "oversize_declared": (_saved(_set(Rows=8192, Columns=8192)), "row", "image_too_large"),
    "zero_frames": (_factory(f.zero_frame_cine_file), "row", "no_frames"),
    "frames_negative": (_saved(_set(NumberOfFrames=-1)), "row", "no_frames"),
    "huge_cine": (_factory(f.huge_cine_file), "row", "too_many_frames"),
    "missing_rows": (_saved(_delete("Rows")), "row", "unsupported_pixel_format"),
    "missing_bits_allocated": (_saved(_delete("BitsAllocated")), "row", "unsupported_pixel_format"),
    "missing_bits_stored": (_saved(_delete("BitsStored")), "row", "unsupported_pixel_format"),
    "missing_photometric": (_saved(_delete("PhotometricInterpretation")), "row", "unsupported_pixel_format"),
    "bits_allocated_zero": (_saved(_set(BitsAllocated=0)), "row", "unsupported_pixel_format"),
    "unknown_photometric": (_saved(_set(PhotometricInterpretation="CMYK")), "row", "unsupported_pixel_format"),
    "samples_mismatch": (_saved(_set(SamplesPerPixel=3)), "row", "unsupported_pixel_format"),
    "palette_without_lut": (_saved(_set(PhotometricInterpretation="PALETTE COLOR")), "row", "unsupported_pixel_format"),
    "rgb16_with_8bit_samples": (_saved(_rgb16_with_8bit_samples), "row", "unsupported_pixel_format"),
    "short_palette_lut": (_saved(_short_palette), "row", "unsupported_pixel_format"),
    "memory_bomb": (memory_bomb, "row", "over_budget"),
    # odd real-world identity values: segmented, the SEG is valid
    "patient_sex_u": (_saved(_set(PatientSex="U")), "segmented", "ok"),
    "patient_sex_lowercase": (_saved(_set(PatientSex="m")), "segmented", "ok"),
    "patient_sex_word": (_saved(_set(PatientSex="MALE")), "segmented", "ok"),
    "overlong_patient_name": (_saved(_overlong_identity), "segmented", "ok"),
    "damaged_j2k_codestream": (damaged_j2k, "segmented", "ok"),
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_bad_file_gets_a_reason_and_the_good_one_a_seg(name, tmp_path):
    make, where, code = CLASSES[name]
    night = run_night(tmp_path, make)
    good_rows = [r for r in night.rows if r.sop_uid == night.good_sop]
    assert [r.status for r in good_rows] == ["ok"], [(r.status, r.error) for r in good_rows]
    others = [r for r in night.rows if r.sop_uid != night.good_sop]
    reasons = [r.reason for r in night.rejected] + [r.error or "" for r in others]
    if name in REASON_NAMES:
        assert any(REASON_NAMES[name] in reason for reason in reasons), reasons
    assert not any("numpy" in reason.lower() or "uint0" in reason for reason in reasons), reasons
    if where == "rejected":
        assert others == [], [(r.path, r.error_code, r.error) for r in others]
        assert [r.code for r in night.rejected] == [code], night.rejected
        assert night.rejected[0].reason
        if code == "duplicate_sop_uid":
            assert str(Path(night.rejected[0].path).parent / "good.dcm") in night.rejected[0].reason, night.rejected
            assert [Path(r.path).name for r in good_rows] == ["good.dcm"]  # the winner's pixels were segmented
        if code == "not_ultrasound":
            assert night.rejected[0].reason.startswith("modality CT is not ultrasound"), night.rejected
        assert len(night.seg_paths) == 1
    elif where == "row":
        assert night.rejected == []
        assert [r.error_code for r in others] == [code], [(r.error_code, r.error) for r in others]
        assert others[0].status in ("failed", "skipped") and others[0].error
        assert len(night.seg_paths) == 1
    else:
        assert night.rejected == [] and [r.status for r in others] == ["ok"], [(r.error_code, r.error) for r in others]
        assert len(night.seg_paths) == 2
        for seg in night.seg_paths:
            ds = pydicom.dcmread(seg, stop_before_pixels=True)
            assert ds.PatientSex in ("", "M", "F", "O")
            assert dciodvfy_errors(seg) == [], seg


def test_the_suite_covers_at_least_forty_classes():
    assert len(CLASSES) >= 40


def test_hostile_uids_create_nothing_outside_the_run_folders(tmp_path):
    """Study/SOP UIDs that are paths: rejected before any folder or file is made from them."""
    def hostile(inbox: Path) -> None:
        f.save(_good(study_uid="../../../escaped"), inbox / "a.dcm")
        f.save(_good(sop_uid="../../escaped-sop"), inbox / "b.dcm")
        f.save(_good(study_uid=str(tmp_path.parent / "abs-escaped")), inbox / "c.dcm")

    night = run_night(tmp_path, hostile)
    assert sorted(r.code for r in night.rejected) == ["invalid_uid"] * 3
    assert not list(tmp_path.parent.glob("*escaped*")) and not list(tmp_path.rglob("*escaped*"))
    assert len(night.seg_paths) == 1


def test_patient_values_never_reach_rows_or_reasons(tmp_path):
    """A SEG failure whose exception quotes the patient's values: the row says <redacted>."""
    from pipeline.phi import redact

    ds = _good()
    ds.PatientName, ds.PatientID, ds.PatientSex = "Doe^Jane", "MRN-4242", "U"
    message = "Invalid value for PatientName 'Doe^Jane' (MRN-4242), PatientSex: 'U'; sex u"
    cleaned = redact(message, ds)
    assert "Doe" not in cleaned and "Jane" not in cleaned and "MRN-4242" not in cleaned
    assert "'U'" not in cleaned and " u" not in cleaned and "<redacted>" in cleaned
    assert "PatientSex" in cleaned  # the attribute is named, its value is not


# -- the `sam2rad segment` path: ingest() of files and folders given on the command line ------------------

def test_segment_ingest_gives_a_fifo_an_issue_instead_of_does_not_exist(tmp_path):
    good = f.save(_good(), tmp_path / "in" / "good.dcm")
    pipe = fifo(tmp_path / "in")
    result = ingest([tmp_path / "in"])
    assert [i.path for i in result.instances] == [good]
    assert [(i.path, i.code.value) for i in result.issues] == [(pipe, "not_regular_file")]
    result = ingest([pipe, good])  # named explicitly
    assert [i.code.value for i in result.issues] == ["not_regular_file"] and len(result.instances) == 1


def test_segment_ingest_of_missing_bits_allocated_is_an_issue_not_a_crash(tmp_path):
    bad = _saved(_delete("BitsAllocated"))(tmp_path)
    good = f.save(_good(), tmp_path / "good.dcm")
    result = ingest([bad, good])
    assert [i.path for i in result.instances] == [good]
    assert result.issues[0].code.value == "unsupported_pixel_format" and "BitsAllocated" in result.issues[0].reason


def test_segment_keeps_the_first_file_of_a_duplicate_sop_uid_and_names_it(tmp_path):
    """Issue 16 (11): the same rule as the nightly: first file in sorted path order wins, the later one is
    a skipped duplicate_sop_uid issue naming the winner."""
    first = f.save(_good(), tmp_path / "in" / "a" / "first.dcm")
    ds = pydicom.dcmread(first)
    ds.PixelData = np.full((64, 64), 200, np.uint8).tobytes()
    later = f.save(ds, tmp_path / "in" / "b.dcm")
    result = ingest([tmp_path / "in"])
    assert [i.path for i in result.instances] == [first]
    assert [(i.path, i.code.value, i.kind.value) for i in result.issues] == [(later, "duplicate_sop_uid", "skipped")]
    assert str(first) in result.issues[0].reason


def test_segment_ingest_names_an_element_whose_length_swallows_the_file(tmp_path):
    result = ingest([huge_element_length(tmp_path)])
    assert result.instances == [] and result.issues[0].code.value == "unreadable"
    assert REASON_NAMES["huge_element_length"] in result.issues[0].reason


def test_segment_ingest_refuses_invalid_uids(tmp_path):
    bad = _saved(lambda ds: None, sop_uid="../../x")(tmp_path)
    result = ingest([bad])
    assert result.instances == [] and result.issues[0].code.value == "invalid_uid"
    assert result.issues[0].sop_uid is None  # the row never carries the hostile value


def test_deep_nesting_in_segment_ingest_is_an_issue(tmp_path):
    path = deeply_nested(tmp_path)
    result = ingest([path])
    assert result.instances == [] and result.issues[0].code.value == "unreadable"




def test_a_killed_run_stages_under_the_output_folder_and_the_next_start_sweeps_it(tmp_path):
    """Issue 16 (16): a run killed mid-study (SIGKILL) leaves its fetched source DICOM under
    <output_dir>/staging, never in the system temp folder, and the next start removes it; a live
    run's staging folder (another chunk worker, this process) is left alone."""
    import signal
    import tempfile

    from pipeline.staging import staging_root, study_staging, sweep_stale_staging

    out, system_tmp = tmp_path / "runs", tmp_path / "system-tmp"
    system_tmp.mkdir()
    script = f"""
import os, signal, shutil
from pipeline.staging import study_staging
with study_staging({str(out)!r}) as staging:
    shutil.copy({str(f.save(_good(), tmp_path / "src.dcm"))!r}, staging / "x.dcm")
    os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "TMPDIR": str(system_tmp)}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    left = list(staging_root(out).rglob("*.dcm"))
    assert len(left) == 1 and not list(system_tmp.iterdir())
    with study_staging(out) as live:  # this process's folder is live: kept
        assert sweep_stale_staging(out) == 1
        assert live.is_dir() and not list(staging_root(out).rglob("*.dcm"))
    assert list(staging_root(out).iterdir()) == []
    assert not list(Path(tempfile.gettempdir()).glob(f"sam2rad-fetch-*{os.getpid()}*"))


def test_the_night_scans_the_inbox_once_not_once_per_study(tmp_path, monkeypatch):
    """Issue 16 (17): discover builds the index; each study's fetch (a fresh archive object, as in the
    flow's segment-study task) uses it from the StudyRef instead of scanning the inbox again."""
    import pipeline.pacs.folder as folder

    inbox = tmp_path / "inbox"
    for k in range(3):
        f.save(_good(study_uid=f"{OTHER_STUDY}.{k}"), inbox / f"s{k}" / "a.dcm")
    scans = []
    real_scan = folder.scan_with_rejections
    monkeypatch.setattr(folder, "scan_with_rejections", lambda root: scans.append(root) or real_scan(root))
    studies = FolderArchive(inbox, tmp_path / "outbox").discover(WINDOW)
    fetched = [FolderArchive(inbox, tmp_path / "outbox").fetch(ref, tmp_path / "staging") for ref in studies]
    assert len(studies) == 3 and [len(x.files) for x in fetched] == [1, 1, 1]
    assert len(scans) == 1


# -- the real nightly flow (Prefect local mode) on a hostile inbox, with PHI markers everywhere ---------------

PHI = {"PatientName": "Phimark^Zelda", "PatientID": "PHIMARK-ID-77", "PatientBirthDate": "19111111",
       "AccessionNumber": "PHIMARKACC", "StudyDescription": "PHIMARK study", "ReferringPhysicianName": "Phimark^Doc",
       "InstitutionName": "PHIMARK Hospital", "OtherPatientIDs": "PHIMARK-OTHER", "PatientAge": "077Y"}
PHI_MARKERS = ("phimark", "zelda", "19111111")


def test_a_hostile_night_finishes_and_leaks_no_patient_data(tmp_path):
    """Deep nesting, a FIFO, a link to /etc/passwd, hostile UIDs, missing BitsAllocated and PatientSex 'U'
    in one inbox: the night finishes, good instances (in the same studies) get SEGs, every bad file has
    a row or a rejected entry, nothing is created outside the run folders, and no PHI marker appears in
    the logs, tables, ledger or the Prefect artifact."""
    import json

    import pandas as pd

    inbox = tmp_path / "inbox"

    def phi(ds: pydicom.Dataset) -> pydicom.Dataset:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        return ds

    good = [phi(_good()) for _ in range(2)]
    for i, ds in enumerate(good):
        f.save(ds, inbox / f"good{i}.dcm")
    sex_u = phi(_good())
    sex_u.PatientSex = "U"
    f.save(sex_u, inbox / "sex_u.dcm")
    no_bits = phi(_good())
    no_bits["PixelData"].VR = "OB"
    del no_bits.BitsAllocated
    f.save(no_bits, inbox / "no_bits.dcm")
    f.save(phi(_good(sop_uid="../../x")), inbox / "traversal.dcm")
    f.save(phi(_good(study_uid="../../../escaped")), inbox / "study_traversal.dcm")
    deeply_nested(inbox)
    fifo(inbox)
    link_to_etc_passwd(inbox)

    script = f"""
import asyncio, json
from prefect.client.orchestration import get_client
from flows.nightly import nightly, SUMMARY_ARTIFACT, StudiesFailed
s = nightly(inbox={str(inbox)!r}, outbox={str(tmp_path / 'outbox')!r}, start_date="2026-01-01",
            output_dir={str(tmp_path / 'runs')!r})
async def art():
    async with get_client() as c:
        return [x.data for x in await c.read_latest_artifacts()]
print("SUMMARY", json.dumps(s))
print("ARTIFACTS", json.dumps(asyncio.run(art())))
"""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "2",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.split("SUMMARY ", 1)[1].splitlines()[0])
    artifacts = out.stdout.split("ARTIFACTS ", 1)[1].splitlines()[0]
    assert summary["succeeded"] == 3 and summary["failed"] == 1 and summary["stored"] == 3
    assert sorted(r["code"] for r in summary["rejected"]) == sorted(
        ["invalid_uid", "invalid_uid", "unreadable", "not_regular_file", "link_outside_inbox"])
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 3
    run_dir = Path(summary["run_dir"])
    table = pd.read_csv(run_dir / "nightly_instances.csv")
    assert table[table.status == "failed"].error_code.tolist() == ["unsupported_pixel_format"]
    assert len(pd.read_csv(run_dir / "nightly_rejected.csv")) == 5
    assert not list(tmp_path.parent.glob("*escaped*")) and not list(tmp_path.rglob("*escaped*"))
    assert (tmp_path / "runs" / "staging").is_dir()  # studies were staged under the output folder (issue 16 (16))
    assert list((tmp_path / "runs" / "staging").iterdir()) == []  # and cleaned up
    texts = {"log": out.stdout + out.stderr, "artifacts": artifacts}
    # Everything the run wrote but the SEGs themselves (which must carry the patient's identity).
    texts |= {str(p): p.read_bytes().decode("latin-1") for p in (tmp_path / "runs").rglob("*")
              if p.is_file() and p.suffix != ".dcm"}
    assert any(name.endswith("ledger.sqlite") for name in texts) and any(name.endswith(".csv") for name in texts)
    for name, text in texts.items():
        for marker in PHI_MARKERS:
            assert marker not in text.lower(), f"{marker} in {name}"


@pytest.mark.parametrize("delta", [1e300, float("nan"), -0.01, 0.0, 50.0])
def test_implausible_calibration_is_refused_with_a_reason(delta):
    """Issue 16 (15): PhysicalDelta 1e300, NaN, negative: the region is not calibrated, and a note says why."""
    from pipeline.calibration import CalibrationSource, calibration_from_dataset

    ds = f.add_region(_good(), (0, 0, 63, 63), (delta, 0.01))
    calibration = calibration_from_dataset(ds)
    assert calibration.source is CalibrationSource.UNCALIBRATED and calibration.row_spacing_mm is None
    assert any("PhysicalDeltaX is not a plausible spacing" in note for note in calibration.notes), calibration.notes
    assert calibration.crop_bounds(64, 64) is not None  # the imaging region still crops the image


def test_overlong_identity_values_are_cut_to_their_vr_and_never_logged(tmp_path, caplog):
    """Issue 16 (13): PatientName of 2360 characters -> 64 in the SEG (PN: 64 per component group), LO/SH
    values cut to 64/16, an over-long code string emptied; the log names the attributes, never a value."""
    import logging

    from pipeline.seg.conform import conform_lengths

    caplog.set_level(logging.DEBUG)
    night = run_night(tmp_path, _saved(_overlong_identity))
    assert len(night.seg_paths) == 2
    for seg in night.seg_paths:
        ds = pydicom.dcmread(seg, stop_before_pixels=True)
        if str(ds.PatientName).startswith("Longname"):
            assert str(ds.PatientName) == ("Longname^" + "Q" * 2351)[:64]
            assert (len(ds.PatientID), len(ds.AccessionNumber), len(ds.StudyID)) == (64, 16, 16)
        assert dciodvfy_errors(seg) == []
    assert "QQQQ" not in caplog.text and "PPPP" not in caplog.text and "PatientName" in caplog.text
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientAge = "A" * 70 + "=" + "B" * 10, "0077Y"
    assert conform_lengths(ds) == ["PatientName", "PatientAge"]
    assert str(ds.PatientName) == "A" * 64 + "=" + "B" * 10 and ds.PatientAge in (None, "")


def test_a_memory_bomb_is_refused_from_its_header_quickly_and_in_little_memory(tmp_path, monkeypatch):
    """Issue 16 (9): a few-KB JPEG 2000 file declaring 3 GiB decoded is refused (over_budget) before any
    decoding, in well under a second of work and a few MB; SAM2RAD_MAX_DECODED_BYTES moves the budget."""
    import time
    import tracemalloc

    bomb = memory_bomb(tmp_path)
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    started = time.monotonic()
    result = ingest([bomb])
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.instances == [] and [i.code.value for i in result.issues] == ["over_budget"]
    assert REASON_NAMES["memory_bomb"] in result.issues[0].reason
    assert peak < 20 * 2**20 and elapsed < 10, (peak, elapsed)
    monkeypatch.setenv("SAM2RAD_MAX_DECODED_BYTES", str(4 * 2**30))
    assert [type(x).__name__ for x in [read_instance(bomb)]] == ["UsInstance"]
    monkeypatch.setenv("SAM2RAD_MAX_DECODED_BYTES", "1000")  # a 64x64 8-bit image holds 4096 bytes
    good = read_instance(f.save(_good(), tmp_path / "good.dcm"))
    assert good.code.value == "over_budget" and "budget of 1000 bytes" in good.reason
    monkeypatch.setenv("SAM2RAD_MAX_DECODED_BYTES", "lots")
    with pytest.raises(ValueError, match="SAM2RAD_MAX_DECODED_BYTES"):
        read_instance(bomb)


def test_a_damaged_jpeg2000_codestream_is_segmented_with_a_warning_in_its_row(tmp_path):
    """Issue 16 (18): the decoders say nothing about a JPEG 2000 codestream whose SIZ disagrees with the header
    or whose EOC is gone; the row's warnings column does. (Bits flipped inside the entropy-coded data are
    not seen: docs/bad_inputs.md.)"""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless

    from pipeline.j2k_check import j2k_warnings

    night = run_night(tmp_path, damaged_j2k)
    rows = {Path(r.path).name: r for r in night.rows}
    assert rows["damaged_j2k.dcm"].status == "ok" and rows["good.dcm"].warnings is None
    assert rows["damaged_j2k.dcm"].warnings == (
        "JPEG 2000 frame 1: SIZ component 0 declares 16-bit unsigned samples, BitsStored is 8 and "
        "PixelRepresentation 0; JPEG 2000 frame 1: tile-part lengths run past the end of the codestream (no EOC marker)")
    ds = f.compressed(f.us_image(f.grey_cine(3, 64, 64)), JPEG2000Lossless)
    assert j2k_warnings(ds.PixelData, ds, 3) == ()  # a sound codestream: no warning
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=3)))
    frame[8:12] = (32).to_bytes(4, "big")  # SIZ Xsiz: 32 columns
    ds.BitsStored = 7
    assert j2k_warnings(encapsulate([bytes(frame)]), ds, 1) == (
        "JPEG 2000 frame 1: SIZ declares 32x64 pixels, Columns x Rows is 64x64",
        "JPEG 2000 frame 1: SIZ component 0 declares 8-bit unsigned samples, BitsStored is 7 and PixelRepresentation 0")
