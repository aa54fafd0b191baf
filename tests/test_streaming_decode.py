"""Issue 16 (9): frames stream from the file to the model; only the full-frame bool masks are kept.

predict_instance decodes one frame at a time (pydicom's iter_pixels / pixel_array(index=i)), hands the
model bounded batches and drops each batch's pixels after the call, so its memory beyond the masks is
a few frames whatever the cine's length; and the SEG is the one the whole-array decode gave.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

import pipeline.ingest as ingest_module
from flows.demo.archive import write_demo_archive
from pipeline.ingest import decode_frames, iter_frames, read_instance
from pipeline.inference import predict_instance
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.us_records import UsFrame
from tests import dicom_factory as f
from tests.test_bad_inputs import ThresholdModel
from tests.fake_models import prediction

CARD = SegAlgorithm(name="Sam2Rad", version="0.1.0", backbone_fingerprint="test:0", checkpoint_sha256="ab" * 32,
                    mode="auto", class_names=("bone",))


class InstantModel:
    """Answers at once with empty masks: what predict_instance itself holds is all that is measured."""

    class_names = ("bone",)

    def predict(self, images, mode="auto"):
        return [prediction(np.zeros(np.shape(im)[:2], dtype=bool), (0.0, 0.0, 1.0, 1.0), 0.5) for im in images]


ROWS, COLS = 128, 160


def _cine(kind: str, n_frames: int) -> pydicom.Dataset:
    grey = np.random.default_rng(n_frames).integers(0, 256, (n_frames, ROWS, COLS), dtype=np.uint8)
    if kind == "jpeg_ybr422":  # what real US cines mostly are
        return f.jpeg_baseline(grey, colour=True)
    if kind == "rle":
        return f.compressed(f.us_image(grey), RLELossless)
    if kind == "monochrome16":
        return f.monochrome16(grey)
    return f.us_image(grey, kind)


def _overhead(path: Path) -> tuple[int, int]:
    """(peak bytes traced during predict_instance beyond the masks it returns, decoded bytes of one frame)."""
    instance = read_instance(path)
    assert not isinstance(instance, ingest_module.IngestIssue), instance
    header = instance.header
    frame_bytes = instance.rows * instance.cols * int(header.SamplesPerPixel) * (int(header.BitsAllocated) // 8)
    tracemalloc.start()
    try:
        masks, _, _ = predict_instance(instance, InstantModel(), batch_size=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert masks.dtype == bool and masks.shape == (instance.n_frames, ROWS, COLS, 1)
    return peak - masks.nbytes, frame_bytes


@pytest.mark.parametrize("kind", ["MONOCHROME2", "RGB", "YBR_FULL_422", "rle", "monochrome16", "jpeg_ybr422"])
def test_predict_instance_memory_beyond_the_masks_is_a_few_frames_whatever_the_cine_length(tmp_path, kind):
    short, _ = _overhead(f.save(_cine(kind, 8), tmp_path / "short.dcm"))
    n_long = 96
    long, frame_bytes = _overhead(f.save(_cine(kind, n_long), tmp_path / "long.dcm"))
    # Nothing per frame is kept but the masks: 12 times the frames cost less than one more frame.
    assert long - short < frame_bytes, (kind, short, long, frame_bytes)
    # Well under the whole decoded cine (what a whole-array decode holds, before any float conversion).
    assert long < n_long * frame_bytes / 2, (kind, long, n_long * frame_bytes)


def test_frames_are_decoded_only_as_the_model_needs_them(tmp_path, monkeypatch):
    path = f.save(_cine("MONOCHROME2", 10), tmp_path / "cine.dcm")
    decoded = 0
    real = ingest_module.iter_grey_frames

    def counting(*args, **kwargs):
        nonlocal decoded
        for frame in real(*args, **kwargs):
            decoded += 1
            yield frame

    monkeypatch.setattr(ingest_module, "iter_grey_frames", counting)
    seen: list[tuple[int, int]] = []  # (images in the call, frames decoded so far)

    class Recording(InstantModel):
        def predict(self, images, mode="auto"):
            seen.append((len(images), decoded))
            return super().predict(images, mode)

    predict_instance(read_instance(path), Recording(), batch_size=4)
    assert seen == [(4, 4), (4, 8), (2, 10)]


def _masks_from_whole_array(instance, model) -> np.ndarray:
    """The former path: the whole pixel array decoded at once, then each frame through the model."""
    pixels = pydicom.dcmread(instance.path).pixel_array
    assert pixels.dtype == np.uint8 and pixels.shape == (instance.n_frames, instance.rows, instance.cols)
    masks = np.zeros((instance.n_frames, instance.rows, instance.cols, 1), dtype=bool)
    for n, image in enumerate(pixels, start=1):
        frame = UsFrame(instance.sop_uid, n, image, instance.calibration)
        pred = model.predict([frame.model_input])[0]
        masks[n - 1, :, :, 0] = frame.mask_to_full_frame(pred.masks[0])
    return masks


@pytest.mark.parametrize("transfer_syntax", [None, RLELossless, JPEGLSLossless])
def test_the_demo_cine_gives_the_same_seg_as_whole_array_decoding(tmp_path, transfer_syntax):
    archive = write_demo_archive(tmp_path / "demo", n_synthetic_studies=0, cine_frames=6,
                                 include_pydicom_examples=False)
    (path,) = [p for p in archive.files if p.name == "cine.dcm"]
    if transfer_syntax is not None:
        f.save(f.compressed(pydicom.dcmread(path), transfer_syntax), path)
    instance = read_instance(path)
    assert instance.is_multiframe and instance.n_frames == 6
    model = ThresholdModel()

    streamed, _, _ = predict_instance(instance, model, batch_size=4)
    whole = _masks_from_whole_array(instance, model)
    assert streamed.any() and np.array_equal(streamed, whole)
    assert np.array_equal(np.stack([fr.image for fr in iter_frames(instance)]), decode_frames(instance))

    writer = SegWriter(CARD)
    seg_streamed = pydicom.dcmread(writer.write(instance, streamed, tmp_path / "a").path)
    seg_whole = pydicom.dcmread(writer.write(instance, whole, tmp_path / "b").path)
    assert int(seg_streamed.NumberOfFrames) == int(seg_whole.NumberOfFrames)
    assert seg_streamed.PixelData == seg_whole.PixelData
    assert seg_streamed.SOPInstanceUID == seg_whole.SOPInstanceUID


def test_what_a_pixel_decoder_warns_reaches_the_row_and_header_warnings_do_not(tmp_path, monkeypatch):
    """Issue 16 (18): a frame that decodes with a decoder warning is still segmented, and its row says
    what the decoder said, once per instance; a warning from anywhere else (pydicom re-reading the
    header may quote a patient's name) is never recorded. The real decoders (OpenJPEG, CharLS,
    pylibjpeg-rle) stay silent about bits flipped inside entropy-coded data (docs/bad_inputs.md), so a
    decoder that warns is simulated here."""
    import warnings

    from pipeline import decode
    from pipeline.run_tables import InstanceMetrics

    real_stream = decode._frame_stream

    def warning_decoder(source, header, indices):
        for frame in real_stream(source, header, indices):
            warnings.warn("segment decoded to 4090 bytes, 4096 expected", UserWarning)
            warnings.warn_explicit("Invalid value 'Doe^Jane' for PN", UserWarning, "/site/pydicom/valuerep.py", 1)
            yield frame

    monkeypatch.setattr(decode, "_frame_stream", warning_decoder)
    monkeypatch.setattr(decode, "_DECODER_PACKAGES", ("tests/test_streaming_decode",))
    instance = read_instance(f.save(f.us_image(f.grey_cine(3, 48, 64), multiframe=True), tmp_path / "cine.dcm"))
    frames = list(iter_frames(instance))
    assert len(frames) == 3
    assert instance.decoder_messages == ["decoder: segment decoded to 4090 bytes, 4096 expected"]
    row = InstanceMetrics.for_result(instance, np.zeros((3, 48, 64, 1), dtype=bool), CARD, 0.1)
    assert row.warnings == "decoder: segment decoded to 4090 bytes, 4096 expected"
    assert "Doe" not in row.warnings


def test_a_sound_file_decodes_without_decoder_messages(tmp_path):
    instance = read_instance(f.save(f.us_image(f.grey_cine(3, 48, 64), multiframe=True), tmp_path / "cine.dcm"))
    list(iter_frames(instance))
    assert instance.decoder_messages == []
