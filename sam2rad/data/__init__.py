"""Data for Sam2Rad: synthetic bone ultrasound and image/mask dataset readers (numpy/scipy/Pillow only)."""

from sam2rad.data.datasets import (
    InMemoryDataset,
    NpzDataset,
    PngFolderDataset,
    Sample,
    SampleDataset,
    export_npz,
    export_png_folder,
    from_synthetic,
    read_image,
    read_mask,
    split_by_names,
    train_val_split,
)
from sam2rad.data.synthetic import ANATOMIES, FIELDS_OF_VIEW, SyntheticSample, generate, generate_set

__all__ = [
    "ANATOMIES",
    "FIELDS_OF_VIEW",
    "InMemoryDataset",
    "NpzDataset",
    "PngFolderDataset",
    "Sample",
    "SampleDataset",
    "SyntheticSample",
    "export_npz",
    "export_png_folder",
    "from_synthetic",
    "generate",
    "generate_set",
    "read_image",
    "read_mask",
    "split_by_names",
    "train_val_split",
]
