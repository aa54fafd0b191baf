"""Ingest: selection, grouping, decoding every photometric/transfer syntax, and bad input."""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, JPEGLSNearLossless

import pipeline.decode
from pipeline.decode import DecodeError
from pipeline.ingest import (
    IngestIssue,
    IngestLimits,
    IssueCode,
    IssueKind,
    UsInstance,
    decode_frames,
    decode_issue,
    ingest,
    ingest_fetched,
    instance_from_dataset,
    iter_frames,
    read_instance,
)
from pipeline.studies import FetchedStudy, StudyRef
from tests import dicom_factory as factory
from tests.dicom_factory import (
    BAD_INPUTS,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    compressed,
    grey_cine,
    grey_image,
    jpeg_baseline,
    monochrome16,
    save,
    us_image,
)

PYDICOM_US_FILES = {
    "examples_rgb_color.dcm": ("RGB", 1),
    "examples_palette.dcm": ("PALETTE COLOR", 1),
    "examples_jpeg2k.dcm": ("YBR_RCT", 1),
    "examples_ybr_color.dcm": ("YBR_FULL_422", 30),
    "ExplVR_BigEnd.dcm": ("RGB", 1),
}


@pytest.mark.parametrize("name", sorted(PYDICOM_US_FILES))
def test_pydicom_ultrasound_files_ingest_and_decode(name):
    photometric, n_frames = PYDICOM_US_FILES[name]
    item = read_instance(get_testdata_file(name))
    assert isinstance(item, UsInstance), item
    assert item.photometric == photometric and item.n_frames == n_frames
    frames = decode_frames(item)
    assert frames.shape == (n_frames, item.rows, item.cols) and frames.dtype == np.uint8
    assert 0 < frames.mean() < 255 and frames.std() > 5  # a real picture, not a constant
    assert item.is_multiframe == (n_frames > 1)


def test_cine_decodes_frame_by_frame_with_1_based_numbers():
    item = read_instance(get_testdata_file("examples_ybr_color.dcm"))
    frames = list(iter_frames(item))
    assert [f.frame_number for f in frames] == list(range(1, 31))
    assert all(f.image.shape == (240, 320) for f in frames)
    assert np.array_equal(np.stack([f.image for f in frames]), decode_frames(item))
    # successive frames differ: each is its own picture
    assert not np.array_equal(frames[0].image, frames[15].image)


LOSSLESS_ENCODINGS = {
    "MONOCHROME2 native": lambda g: us_image(g),
    "MONOCHROME1 native": lambda g: us_image(g, "MONOCHROME1"),
    "RGB native": lambda g: us_image(g, "RGB"),
    "YBR_FULL native": lambda g: us_image(g, "YBR_FULL"),
    "YBR_FULL_422 native": lambda g: us_image(g, "YBR_FULL_422"),
    "PALETTE COLOR 16-bit LUT": lambda g: us_image(g, "PALETTE COLOR"),
    "12-bit little endian": lambda g: monochrome16(g),
    "12-bit big endian": lambda g: monochrome16(g, big_endian=True),
    "12-bit with VOI window": lambda g: monochrome16(g, window=True),
    "RLE MONOCHROME2": lambda g: compressed(us_image(g), RLELossless),
    "RLE RGB": lambda g: compressed(us_image(g, "RGB"), RLELossless),
    "RLE MONOCHROME1": lambda g: compressed(us_image(g, "MONOCHROME1"), RLELossless),
    "JPEG-LS lossless MONOCHROME2": lambda g: compressed(us_image(g), JPEGLSLossless),
    "JPEG-LS lossless RGB": lambda g: compressed(us_image(g, "RGB"), JPEGLSLossless),
    "JPEG 2000 lossless MONOCHROME2": lambda g: compressed(us_image(g), JPEG2000Lossless),
    "JPEG 2000 lossless YBR_RCT": lambda g: _relabel(compressed(us_image(g, "RGB"), JPEG2000Lossless), "YBR_RCT"),
}


def _relabel(ds, photometric):
    # A colour JPEG 2000 codestream carries its own component transform; DICOM labels it RCT/ICT.
    ds.PhotometricInterpretation = photometric
    return ds


LOSSY_ENCODINGS = {
    "JPEG baseline MONOCHROME2": lambda g: jpeg_baseline(g),
    "JPEG baseline YBR_FULL_422": lambda g: jpeg_baseline(g, colour=True),
    "JPEG 2000 lossy YBR_ICT": lambda g: _relabel(_lossy(us_image(g, "RGB"), JPEG2000, j2k_cr=[10]), "YBR_ICT"),
    "JPEG-LS near-lossless": lambda g: _lossy(us_image(g), JPEGLSNearLossless, jls_error=2),
}


def _lossy(ds, ts, **kwargs):
    ds.compress(ts, generate_instance_uid=False, **kwargs)
    return ds


def _ingest_written(ds, tmp_path: Path) -> UsInstance:
    item = read_instance(save(ds, tmp_path / "x.dcm"))
    assert isinstance(item, UsInstance), item
    return item


@pytest.mark.parametrize("encoding", sorted(LOSSLESS_ENCODINGS))
def test_lossless_encodings_decode_to_the_exact_grey(encoding, tmp_path):
    truth = grey_image()
    item = _ingest_written(LOSSLESS_ENCODINGS[encoding](truth), tmp_path)
    assert np.array_equal(decode_frames(item)[0], truth)


@pytest.mark.parametrize("encoding", sorted(LOSSY_ENCODINGS))
def test_lossy_encodings_decode_close_to_the_grey(encoding, tmp_path):
    truth = grey_image()
    item = _ingest_written(LOSSY_ENCODINGS[encoding](truth), tmp_path)
    error = np.abs(decode_frames(item)[0].astype(int) - truth)
    assert error.max() <= 8 and error.mean() < 2


@pytest.mark.parametrize("make", [
    lambda c: jpeg_baseline(c, colour=True),
    lambda c: compressed(us_image(c, "RGB"), RLELossless),
    lambda c: monochrome16(c, big_endian=True),
    lambda c: us_image(c, "YBR_FULL_422"),
], ids=["jpeg-ybr422", "rle-rgb", "12bit-big-endian", "native-ybr422"])
def test_synthetic_cines_decode_every_frame(make, tmp_path):
    truth = grey_cine(5)
    item = _ingest_written(make(truth), tmp_path)
    assert item.is_multiframe and item.n_frames == 5
    frames = decode_frames(item)
    assert frames.shape == truth.shape
    assert np.abs(frames.astype(int) - truth).max() <= 8


def _as_us(name: str):
    """A pydicom test file (CT/MR/SC) relabelled as an ultrasound image, read in memory."""
    import pydicom

    ds = pydicom.dcmread(get_testdata_file(name))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.Modality = "US"
    return ds


def test_jpeg_lossless_and_extended_decode_like_pydicom():
    # No Python encoder writes JPEG lossless (process 14) or 12-bit extended (process 2/4), so use
    # pydicom's own files of those transfer syntaxes and compare with an independent rendering.
    lossless = _as_us("SC_rgb_jpeg_gdcm.dcm")
    item = instance_from_dataset(lossless)
    assert item.transfer_syntax_uid == "1.2.840.10008.1.2.4.70"
    rgb = lossless.pixel_array.astype(float)
    expected = np.rint(rgb @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert np.array_equal(decode_frames(item)[0], expected)

    extended = _as_us("JPGExtended.dcm")
    item = instance_from_dataset(extended)
    assert item.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
    raw = extended.pixel_array.astype(float)
    low, high = raw.min(), raw.max()  # 12-bit without a window: the instance's own range
    expected = np.rint((raw - low) / (high - low) * 255).astype(np.uint8)
    assert np.abs(decode_frames(item)[0].astype(int) - expected).max() <= 1


def test_in_memory_dataset_ingests_like_a_file():
    ds = us_image(grey_image(), "RGB")
    item = instance_from_dataset(ds)
    assert isinstance(item, UsInstance) and item.path is None
    assert np.array_equal(decode_frames(item)[0], grey_image())


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_each_bad_input_gets_a_clear_reason(name, tmp_path):
    writer, expected_code = BAD_INPUTS[name]
    issue = read_instance(writer(tmp_path / f"{name}.dcm"))
    assert isinstance(issue, IngestIssue), issue
    assert issue.code.value == expected_code
    assert len(issue.reason) > 10
    expected_kind = IssueKind.SKIPPED if expected_code == "not_ultrasound" else IssueKind.FAILED
    assert issue.kind is expected_kind


def test_bad_inputs_do_not_stop_the_batch(tmp_path):
    for name, (writer, _) in BAD_INPUTS.items():
        writer(tmp_path / "bad" / f"{name}.dcm")
    good = [
        save(us_image(grey_image(), "RGB"), tmp_path / "good" / "a.dcm"),
        save(jpeg_baseline(grey_cine(3), colour=True), tmp_path / "good" / "nested" / "b.dcm"),
    ]
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), tmp_path / "good" / "c.dcm")
    result = ingest([tmp_path])
    assert sorted(i.path.name for i in result.instances) == ["a.dcm", "b.dcm", "c.dcm"]
    codes = {i.path.stem: i.code.value for i in result.issues}
    assert codes == {name: code for name, (_, code) in BAD_INPUTS.items()}
    for inst in result.instances:  # and the good ones decode
        assert decode_frames(inst).shape[0] == inst.n_frames
    assert good[0].exists()


def test_frame_limit_rejects_before_any_pixel_is_read(tmp_path, monkeypatch):
    path = factory.huge_cine_file(tmp_path / "huge.dcm")

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(pipeline.decode, "iter_pixels", no_decoding)
    monkeypatch.setattr("pipeline.ingest.pixel_data_issue", no_decoding)
    issue = read_instance(path)
    assert issue.code is IssueCode.TOO_MANY_FRAMES and "2000" in issue.reason and "1000" in issue.reason


def test_frame_limit_is_configurable(tmp_path):
    path = save(us_image(grey_cine(3)), tmp_path / "cine.dcm")
    assert read_instance(path, IngestLimits(max_frames=2)).code is IssueCode.TOO_MANY_FRAMES
    assert isinstance(read_instance(path, IngestLimits(max_frames=3)), UsInstance)
    with pytest.raises(ValueError):
        IngestLimits(max_frames=0)
    # With the limit raised, the lying header is caught by the pixel-length check instead.
    huge = factory.huge_cine_file(tmp_path / "huge.dcm")
    limits = IngestLimits(max_frames=5000, min_rows=8, min_cols=8)
    assert read_instance(huge, limits).code is IssueCode.TRUNCATED


def test_truncated_compressed_file_is_reported(tmp_path):
    path = save(compressed(us_image(grey_image(64, 64)), JPEG2000Lossless), tmp_path / "j2k.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    issue = read_instance(path)
    assert issue.code is IssueCode.TRUNCATED


def test_corrupt_compressed_pixels_fail_at_decode_with_a_record(tmp_path, caplog):
    ds = jpeg_baseline(grey_image())
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 definitely not a JPEG stream \xff\xd9"])
    item = _ingest_written(ds, tmp_path)
    with pytest.raises(DecodeError, match="could not be decoded"):
        decode_frames(item)
    with pytest.raises(ValueError):
        list(iter_frames(item))
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]  # the record says it all
    issue = decode_issue(item, DecodeError("pixel data could not be decoded: x"))
    assert issue.code is IssueCode.DECODE_ERROR and issue.sop_uid == item.sop_uid


@pytest.mark.parametrize("writer, code", [
    (factory.segmentation_file, IssueCode.SEGMENTATION),
    (factory.structured_report_file, IssueCode.STRUCTURED_REPORT),
    (factory.presentation_state_file, IssueCode.PRESENTATION_STATE),
    (lambda p: factory.secondary_capture_file(p, "OT"), IssueCode.NOT_ULTRASOUND),
])
def test_non_image_and_non_us_objects_are_skipped(writer, code, tmp_path):
    issue = read_instance(writer(tmp_path / "x.dcm"))
    assert issue.kind is IssueKind.SKIPPED and issue.code is code


def test_secondary_capture_is_taken_only_when_modality_is_us(tmp_path):
    item = read_instance(factory.secondary_capture_file(tmp_path / "sc.dcm", "US"))
    assert isinstance(item, UsInstance) and not item.is_multiframe


def test_grouping_by_study_and_series(tmp_path):
    layout = {("S1", "A"): 2, ("S1", "B"): 1, ("S2", "C"): 2}
    for (study, series), count in layout.items():
        for k in range(count):
            ds = us_image(grey_image(), study_uid=f"1.2.3.{study[1]}", series_uid=f"1.2.3.{study[1]}.{ord(series)}")
            save(ds, tmp_path / study / series / f"{k}.dcm")
    studies = ingest([tmp_path]).studies()
    shape = {s.study_uid: {x.series_uid: len(x.instances) for x in s.series} for s in studies}
    assert shape == {"1.2.3.1": {"1.2.3.1.65": 2, "1.2.3.1.66": 1}, "1.2.3.2": {"1.2.3.2.67": 2}}


def test_fetched_study_refuses_other_studies_and_duplicates(tmp_path):
    mine = save(us_image(grey_image(), study_uid="1.2.3.1", sop_uid="1.2.3.1.9"), tmp_path / "a.dcm")
    copy = save(us_image(grey_image(), study_uid="1.2.3.1", sop_uid="1.2.3.1.9"), tmp_path / "b.dcm")
    other = save(us_image(grey_image(), study_uid="1.2.3.2"), tmp_path / "c.dcm")
    result = ingest_fetched(FetchedStudy(StudyRef("1.2.3.1"), [mine, copy, other]))
    assert [i.path.name for i in result.instances] == ["a.dcm"]
    assert {i.path.name: i.code for i in result.issues} == {
        "b.dcm": IssueCode.DUPLICATE_INSTANCE,
        "c.dcm": IssueCode.WRONG_STUDY,
    }


def test_missing_input_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ingest([tmp_path / "nope"])


def test_no_phi_in_repr_logs_or_warnings(tmp_path, caplog):
    ds = us_image(grey_image())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setting and saving the bad values is not under test
        ds.PatientName = "Secret"  # single-component name: pydicom/highdicom warn and quote it
        ds.PatientID = "PID-SECRET-42"
        ds.PatientBirthDate = "1970.01.01"  # invalid DA: pydicom warns and quotes it
        path = save(ds, tmp_path / "phi.dcm")
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = read_instance(path)
        decode_frames(item)
        from pipeline.seg import SegAlgorithm, SegWriter

        card = SegAlgorithm("sam2rad", "1", "bb", "0" * 64, "auto", ("bone",))
        SegWriter(card).write(item, np.zeros((1, item.rows, item.cols, 1), bool), tmp_path / "out")
    said = caplog.text + " ".join(str(w.message) for w in caught) + repr(item)
    for secret in ("Secret", "PID-SECRET-42", "1970.01.01", "19700101"):
        assert secret not in said
    assert item.patient_id == "PID-SECRET-42"
