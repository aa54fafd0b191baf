"""DICOM-SEG writing: dciodvfy-clean, identity, frame references, round trips, UIDs, atomic writes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.seg import SegmentationTypeValues
from highdicom.sr.coding import CodedConcept
from pydicom.data import get_testdata_file
from pydicom.pixels import unpack_bits

from pipeline.ingest import UsInstance, decode_frames, read_instance
from pipeline.seg import (
    TISSUE,
    SegAlgorithm,
    SegmentClass,
    SUPPORTED_SEGMENTATION_TYPES,
    SegWriter,
    derive_seg_uids,
    read_seg_masks,
    write_seg,
)
from pipeline.seg.writer import remove_partial_files
from tests.dicom_factory import (
    SECONDARY_CAPTURE,
    add_region,
    grey_cine,
    grey_image,
    jpeg_baseline,
    save,
    us_image,
)

DCIODVFY = Path(sys.executable).parent / "dciodvfy"
PYDICOM_US_FILES = [
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "examples_jpeg2k.dcm",
    "examples_ybr_color.dcm",
    "ExplVR_BigEnd.dcm",
]
CARD = SegAlgorithm(
    name="Sam2Rad",
    version="0.1.0",
    backbone_fingerprint="sam2.1_hiera_t:1a2b3c",
    checkpoint_sha256="ab" * 32,
    mode="auto",
    class_names=("bone",),
)
JOINT = SegmentClass("joint", TISSUE, CodedConcept("39352004", "SCT", "Joint"), (128, 174, 128))


def secondary_capture(ds):
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.ConversionType = "WSD"
    return ds


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's 'Error' lines (warnings are allowed)."""
    out = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def threshold_masks(instance: UsInstance, n_classes: int = 1) -> np.ndarray:
    """Stand-in for the model: bright pixels are class 1, mid-grey ones class 2."""
    grey = decode_frames(instance)
    masks = [grey > 60]
    if n_classes == 2:
        masks.append((grey > 20) & (grey <= 60))
    return np.stack(masks, axis=-1)


def pydicom_masks(seg: pydicom.Dataset, source_sop_uid: str, n_frames: int) -> np.ndarray:
    """Decode a SEG with pydicom alone (independent of highdicom and of our reader)."""
    rows, cols, count = int(seg.Rows), int(seg.Columns), int(seg.NumberOfFrames)
    # LABELMAP SEGs also describe segment 0, the background
    n_segments = sum(int(s.SegmentNumber) > 0 for s in seg.SegmentSequence)
    if seg.SegmentationType == "BINARY":
        pixels = unpack_bits(seg.PixelData)[: count * rows * cols].reshape(count, rows, cols).astype(bool)
    else:  # RLE-compressed 8-bit labels: pydicom's own decoder
        pixels = seg.pixel_array.reshape(count, rows, cols)
    masks = np.zeros((n_frames, rows, cols, n_segments), bool)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source_sop_uid
        frame = int(ref.get("ReferencedFrameNumber", 1)) - 1
        if seg.SegmentationType == "BINARY":
            # with one segment highdicom puts the identification in the shared functional groups
            identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
            segment = int(identification[0].ReferencedSegmentNumber)
            masks[frame, ..., segment - 1] = pixels[index]
        else:
            for segment in range(1, n_segments + 1):
                masks[frame, ..., segment - 1] = pixels[index] == segment
    return masks


@pytest.fixture(scope="module")
def pydicom_instances() -> dict[str, UsInstance]:
    instances = {}
    for name in PYDICOM_US_FILES:
        item = read_instance(get_testdata_file(name))
        assert isinstance(item, UsInstance), item
        instances[name] = item
    return instances


def test_dciodvfy_is_available():
    assert DCIODVFY.exists(), "dicom3tools installs dciodvfy next to the venv's python"


@pytest.mark.parametrize("kind", SUPPORTED_SEGMENTATION_TYPES)
@pytest.mark.parametrize("name", PYDICOM_US_FILES)
def test_pydicom_us_files_get_valid_segs_that_round_trip(name, kind, pydicom_instances, tmp_path):
    source = pydicom_instances[name]
    masks = threshold_masks(source)
    written = SegWriter(CARD, segmentation_type=kind).write(source, masks, tmp_path)

    assert written.path.exists() and written.n_frames == source.n_frames
    assert dciodvfy_errors(written.path) == []

    # highdicom reads it back, frame by frame identical
    assert np.array_equal(read_seg_masks(written.path, source.sop_uid), masks)
    seg = hd.seg.segread(written.path)
    assert seg.SegmentationType == kind.value
    expected_syntax = "1.2.840.10008.1.2.5" if kind is SegmentationTypeValues.LABELMAP else "1.2.840.10008.1.2.1"
    assert seg.file_meta.TransferSyntaxUID == expected_syntax

    # pydicom alone agrees, and the identity is the source's
    ds = pydicom.dcmread(written.path)
    assert np.array_equal(pydicom_masks(ds, source.sop_uid, source.n_frames), masks)
    assert ds.PatientID == source.header.get("PatientID", "")
    assert ds.StudyInstanceUID == source.study_uid
    assert ds.Modality == "SEG"
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.series_uid
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.sop_uid
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPClassUID == source.sop_class_uid


def test_cine_seg_is_one_object_citing_every_source_frame(pydicom_instances, tmp_path):
    source = pydicom_instances["examples_ybr_color.dcm"]
    written = SegWriter(CARD).write(source, threshold_masks(source), tmp_path)
    ds = pydicom.dcmread(written.path)
    assert int(ds.NumberOfFrames) == 30 and len(list(tmp_path.glob("*.dcm"))) == 1
    refs = [item.DerivationImageSequence[0].SourceImageSequence[0] for item in ds.PerFrameFunctionalGroupsSequence]
    assert [int(r.ReferencedFrameNumber) for r in refs] == list(range(1, 31))
    assert {r.ReferencedSOPClassUID for r in refs} == {source.sop_class_uid}
    # each SEG frame has a unique dimension index (segment, temporal position)
    index_values = [tuple(i.FrameContentSequence[0].DimensionIndexValues) for i in ds.PerFrameFunctionalGroupsSequence]
    assert len(set(index_values)) == 30
    # the stand-in single-frame SOP class used to drive highdicom left no trace
    assert "1.2.840.10008.5.1.4.1.1.6.1" not in str(ds)


@pytest.mark.parametrize("kind", SUPPORTED_SEGMENTATION_TYPES)
def test_two_class_cine_keeps_classes_and_frames_apart(kind, tmp_path):
    ds = jpeg_baseline(grey_cine(6, 48, 64), colour=True)
    source = read_instance(save(ds, tmp_path / "cine.dcm"))
    card = SegAlgorithm("Sam2Rad", "0.1.0", "bb", "cd" * 32, "semi", ("bone", "joint"))
    masks = threshold_masks(source, 2)
    written = SegWriter(card, segmentation_type=kind, segment_classes={"joint": JOINT}).write(
        source, masks, tmp_path / "out"
    )
    assert dciodvfy_errors(written.path) == []
    assert np.array_equal(read_seg_masks(written.path, source.sop_uid), masks)
    seg = pydicom.dcmread(written.path)
    assert np.array_equal(pydicom_masks(seg, source.sop_uid, 6), masks)
    assert [s.SegmentLabel for s in seg.SegmentSequence if s.SegmentNumber > 0] == ["bone", "joint"]
    assert seg.SegmentSequence[-1].SegmentAlgorithmType == "SEMIAUTOMATIC"


def _with_frame_of_reference(ds):
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.PositionReferenceIndicator = ""
    return ds


@pytest.mark.parametrize("make", [
    lambda: us_image(grey_image(), multiframe=True),
    lambda: _with_frame_of_reference(us_image(grey_image())),
    lambda: _with_frame_of_reference(us_image(grey_cine(3))),
    lambda: secondary_capture(us_image(grey_image(), "RGB")),
], ids=["one-frame-cine", "single-with-frame-of-reference", "cine-with-frame-of-reference", "secondary-capture"])
def test_less_common_sources_get_valid_segs(make, tmp_path):
    source = read_instance(save(make(), tmp_path / "src.dcm"))
    assert isinstance(source, UsInstance), source
    masks = threshold_masks(source)
    written = SegWriter(CARD).write(source, masks, tmp_path / "out")
    assert dciodvfy_errors(written.path) == []
    assert np.array_equal(read_seg_masks(written.path, source.sop_uid), masks)
    seg = pydicom.dcmread(written.path)
    refs = [i.DerivationImageSequence[0].SourceImageSequence[0] for i in seg.PerFrameFunctionalGroupsSequence]
    assert {r.ReferencedSOPClassUID for r in refs} == {source.sop_class_uid}
    if source.is_multiframe:
        assert [int(r.ReferencedFrameNumber) for r in refs] == list(source.frame_numbers)


def test_empty_masks_still_make_a_valid_seg_with_every_frame(tmp_path):
    source = read_instance(save(us_image(grey_cine(4)), tmp_path / "cine.dcm"))
    masks = np.zeros((4, source.rows, source.cols, 1), bool)
    written = write_seg(source, masks, CARD, tmp_path / "out")
    assert written.n_frames == 4
    assert dciodvfy_errors(written.path) == []
    assert not read_seg_masks(written.path, source.sop_uid).any()


def test_segment_codes_algorithm_and_equipment(pydicom_instances, tmp_path):
    source = pydicom_instances["examples_rgb_color.dcm"]
    ds = pydicom.dcmread(SegWriter(CARD).write(source, threshold_masks(source), tmp_path).path)
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "bone"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    prop = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("85756007", "SCT")
    assert (prop.CodeValue, prop.CodingSchemeDesignator) == ("272673000", "SCT")
    assert len(segment.RecommendedDisplayCIELabValue) == 3
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "Sam2Rad" and algorithm.AlgorithmVersion == "0.1.0"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    for value in (CARD.backbone_fingerprint, CARD.checkpoint_sha256, "mode=auto"):
        assert value in algorithm.AlgorithmParameters
    manufacturers = [e.Manufacturer for e in ds.ContributingEquipmentSequence]
    assert "Sam2Rad Pipeline" in manufacturers
    assert "PatientOrientation" in ds


def test_pixel_measures_follow_the_calibration(tmp_path):
    ds = add_region(us_image(grey_image(48, 64)), (4, 4, 59, 43), delta_cm=(0.02, 0.03))
    source = read_instance(save(ds, tmp_path / "cal.dcm"))
    seg = pydicom.dcmread(SegWriter(CARD).write(source, threshold_masks(source), tmp_path / "out").path)
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.3, 0.2])  # [row, column] in mm
    assert dciodvfy_errors(Path(seg.filename)) == []

    uncalibrated = read_instance(save(us_image(grey_image(48, 64)), tmp_path / "raw.dcm"))
    seg = pydicom.dcmread(SegWriter(CARD).write(uncalibrated, threshold_masks(uncalibrated), tmp_path / "o2").path)
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]


def test_same_input_gives_same_uids_and_different_models_do_not(pydicom_instances, tmp_path):
    source = pydicom_instances["examples_ybr_color.dcm"]
    masks = threshold_masks(source)
    first = SegWriter(CARD).write(source, masks, tmp_path / "a")
    second = SegWriter(CARD).write(source, masks, tmp_path / "b")
    assert (first.sop_uid, first.series_uid, first.series_number) == (
        second.sop_uid, second.series_uid, second.series_number,
    )
    a, b = pydicom.dcmread(first.path), pydicom.dcmread(second.path)
    assert a.DimensionIndexSequence[0].DimensionOrganizationUID == b.DimensionIndexSequence[0].DimensionOrganizationUID
    assert first.sop_uid.startswith("2.25.") and len(first.sop_uid) <= 64

    # rewriting into the same folder replaces the SEG in place
    again = SegWriter(CARD).write(source, masks, tmp_path / "a")
    assert again.path == first.path and len(list((tmp_path / "a").iterdir())) == 1

    other_mode = SegAlgorithm(**{**CARD.__dict__, "mode": "manual"})
    assert SegWriter(other_mode).uids_for(source).sop_uid != first.sop_uid
    labelmap = SegWriter(CARD, segmentation_type="LABELMAP").uids_for(source)
    assert labelmap.sop_uid != first.sop_uid
    # one SEG series per source series and model
    assert derive_seg_uids(source.series_uid, "1.2.3", CARD.fingerprint, "BINARY").series_uid == first.series_uid


def test_failed_write_leaves_no_file_and_keeps_the_previous_seg(pydicom_instances, tmp_path, monkeypatch):
    source = pydicom_instances["examples_rgb_color.dcm"]
    masks = threshold_masks(source)
    previous = SegWriter(CARD).write(source, masks, tmp_path / "kept")
    previous_bytes = previous.path.read_bytes()

    def crash_mid_write(self, target, *args, **kwargs):
        target.write(b"DICM" * 1000)  # some bytes already on disk ...
        raise RuntimeError("simulated crash mid-write")  # ... then the process dies

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", crash_mid_write)
    for folder in ("fresh", "kept"):
        with pytest.raises(RuntimeError, match="simulated crash"):
            SegWriter(CARD).write(source, masks, tmp_path / folder)
    assert list((tmp_path / "fresh").iterdir()) == []
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [previous.path.name]
    assert previous.path.read_bytes() == previous_bytes


def test_killed_process_never_leaves_a_partial_seg(tmp_path):
    """SIGKILL mid-write: no file under the SEG's name; the hidden partial is swept up afterwards."""
    script = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np, highdicom as hd
        from pydicom.data import get_testdata_file
        from pipeline.ingest import read_instance
        from pipeline.seg import SegAlgorithm, SegWriter

        def slow_save(self, target, *a, **k):
            target.write(b"partial" * 1000); target.flush()
            print("writing", flush=True); time.sleep(60)

        hd.seg.Segmentation.save_as = slow_save
        source = read_instance(get_testdata_file("examples_rgb_color.dcm"))
        card = SegAlgorithm(**{CARD.__dict__!r})
        SegWriter(card).write(source, np.zeros((1, 240, 320, 1), bool), {str(tmp_path)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert list(tmp_path.glob("*.dcm")) == []
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".") and p.name.endswith(".partial") for p in leftovers)
    assert remove_partial_files(tmp_path) == len(leftovers)
    assert list(tmp_path.iterdir()) == []


def test_bad_masks_and_cards_are_refused(pydicom_instances):
    source = pydicom_instances["examples_rgb_color.dcm"]
    writer = SegWriter(CARD)
    with pytest.raises(ValueError, match="shape"):
        writer.build(source, np.zeros((1, 10, 10, 1), bool))
    with pytest.raises(ValueError, match="boolean"):
        writer.build(source, np.full((1, 240, 320, 1), 3, np.uint8))
    overlapping = np.ones((1, 240, 320, 2), bool)
    card2 = SegAlgorithm("Sam2Rad", "1", "bb", "0" * 64, "auto", ("bone", "joint"))
    with pytest.raises(ValueError, match="overlap"):
        SegWriter(card2, segmentation_type="LABELMAP", segment_classes={"joint": JOINT}).build(source, overlapping)
    with pytest.raises(ValueError, match="SNOMED"):
        SegWriter(card2)
    with pytest.raises(ValueError, match="sha256"):
        SegAlgorithm("Sam2Rad", "1", "bb", "not-a-hash", "auto", ("bone",))
    with pytest.raises(ValueError, match="mode"):
        SegAlgorithm("Sam2Rad", "1", "bb", "0" * 64, "fully-automatic", ("bone",))
    # 2-D / 3-D shorthands are accepted for one frame / one class
    assert writer.build(source, np.zeros((240, 320), bool)).NumberOfFrames == 1
