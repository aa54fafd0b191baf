"""Bundled demo archive: pydicom's real ultrasound example files plus synthetic bone-ultrasound
studies (single frames and a cine loop) whose reference labels are known.

Every study is dated `study_date` (default: yesterday, so the nightly flow's default window finds
it). Reference labels go to `<references>/<SOPInstanceUID>.npz` (mask: frames x rows x cols bool,
spacing_mm), the form the audit reads.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UltrasoundImageStorage

from flows.demo.us_dicom import describe_pixels, make_cine, new_instance, ultrasound_region
from sam2rad.data.synthetic import SyntheticSample, generate

PYDICOM_US_EXAMPLES = ("examples_rgb_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm",
                       "examples_ybr_color.dcm", "ExplVR_BigEnd.dcm")


@dataclass(frozen=True)
class DemoArchive:
    inbox: Path
    references: Path
    files: tuple[Path, ...]
    study_date: str
    n_synthetic_instances: int


def demo_uid(*parts: object) -> str:
    """Stable UID for demo objects (2.25 + a hash), so re-creating the demo gives the same archive."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _region(sample: SyntheticSample) -> Dataset:
    x0, y0, x1, y1 = sample.imaging_region
    delta_cm = (float(sample.spacing_mm[1]) / 10, float(sample.spacing_mm[0]) / 10)
    return ultrasound_region((x0, y0, x1 - 1, y1 - 1), delta_cm, reference_pixel=(0, 0))  # DICOM: inclusive


def synthetic_us_dataset(frames: np.ndarray, sample: SyntheticSample, study_uid: str, series_uid: str,
                         sop_uid: str, patient_id: str, study_date: str, instance_number: int,
                         multiframe: bool) -> Dataset:
    """A US Image (or US Multi-frame) Storage instance holding grey frames (n, rows, cols) uint8."""
    ds = new_instance(UltrasoundImageStorage, sop_uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID = f"DEMO^{patient_id}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "020000"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.Modality, ds.Manufacturer = "US", "Sam2Rad synthetic demo"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance_number
    ds.BodyPartExamined = {"hip": "HIP", "wrist": "WRIST", "shoulder": "SHOULDER"}[sample.anatomy]
    ds.Laterality = "R"  # paired body parts need it (Type 2C)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    describe_pixels(ds, *frames.shape[1:])
    ds.SequenceOfUltrasoundRegions = Sequence([_region(sample)])
    if multiframe:
        make_cine(ds, frames.shape[0], frame_time_ms=40.0)
    ds.PixelData = np.ascontiguousarray(frames if multiframe else frames[0]).tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _save_reference(folder: Path, sop_uid: str, masks: np.ndarray, spacing: tuple[float, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{sop_uid}.npz", mask=masks.astype(bool), spacing_mm=np.asarray(spacing))


def write_demo_archive(root: str | Path, study_date: dt.date | None = None, n_synthetic_studies: int = 3,
                       images_per_study: int = 2, cine_frames: int = 6, size: tuple[int, int] = (300, 280),
                       include_pydicom_examples: bool = True) -> DemoArchive:
    """Write the demo archive under root/inbox and its reference labels under root/references."""
    root = Path(root)
    inbox, refs = root / "inbox", root / "references"
    day = (study_date or (dt.date.today() - dt.timedelta(days=1))).strftime("%Y%m%d")
    files: list[Path] = []
    if include_pydicom_examples:
        from pydicom.data import get_testdata_file

        for name in PYDICOM_US_EXAMPLES:
            ds = pydicom.dcmread(get_testdata_file(name))
            ds.StudyDate = day  # part of tonight's archive
            # Two of pydicom's files are the same image in two encodings, with the same UIDs:
            # give each file its own instance identity so both travel through the pipeline.
            ds.SOPInstanceUID = demo_uid("pydicom-example", name)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            files.append(_save(ds, inbox / "pydicom" / name))
    n_synth = 0
    for s in range(n_synthetic_studies):
        study_uid = demo_uid("demo-study", s)
        series_uid = demo_uid("demo-series", s)
        patient = f"SYN{s:03d}"
        for i in range(images_per_study):
            sample = generate(10_000 + 100 * s + i, size, anatomy=("hip", "wrist", "shoulder")[s % 3], text=True)
            sop = demo_uid("demo-instance", s, i)
            ds = synthetic_us_dataset(sample.image[None], sample, study_uid, series_uid, sop, patient, day, i + 1, False)
            files.append(_save(ds, inbox / f"synthetic-{s}" / f"{i + 1:03d}.dcm"))
            _save_reference(refs, sop, sample.mask[None], sample.spacing_mm)
            n_synth += 1
    if cine_frames:
        # A cine sweep: the probe slides, so the bone surface drifts a few pixels per frame.
        sample = generate(20_000, size, anatomy="hip", text=True)
        shifts = np.round(np.linspace(0, 12, cine_frames)).astype(int)
        frames = np.stack([np.roll(sample.image, k, axis=0) for k in shifts])
        masks = np.stack([np.roll(sample.mask, k, axis=0) for k in shifts])
        frames[:, : sample.imaging_region[1]] = sample.image[None, : sample.imaging_region[1]]  # text stays put
        sop = demo_uid("demo-cine", 0)
        ds = synthetic_us_dataset(frames, sample, demo_uid("demo-cine-study"), demo_uid("demo-cine-series"),
                                  sop, "SYNCINE", day, 1, True)
        files.append(_save(ds, inbox / "synthetic-cine" / "cine.dcm"))
        _save_reference(refs, sop, masks, sample.spacing_mm)
        n_synth += 1
    return DemoArchive(inbox, refs, tuple(files), day, n_synth)


def reset(root: str | Path) -> None:
    """Remove a previous demo archive (only the folders this module writes)."""
    for sub in ("inbox", "references"):
        shutil.rmtree(Path(root) / sub, ignore_errors=True)
