"""Dataset readers: PNG folder layout, NPZ, in-memory; splits; export round trips; error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam2rad.data import (
    InMemoryDataset,
    NpzDataset,
    PngFolderDataset,
    Sample,
    export_npz,
    export_png_folder,
    from_synthetic,
    generate_set,
    split_by_names,
    train_val_split,
)


@pytest.fixture(scope="module")
def synthetic():
    return generate_set(6, seed=3, size=(64, 80))


def _write_pair(root, name, image, mask, mask_suffix=".png"):
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "gts").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "imgs" / f"{name}.png")
    Image.fromarray(mask).save(root / "gts" / f"{name}{mask_suffix}")


def test_png_round_trip_of_a_synthetic_set(tmp_path, synthetic):
    root = export_png_folder(synthetic, tmp_path / "set")
    ds = PngFolderDataset(root)
    assert len(ds) == 6 and ds.names == sorted(s.name for s in from_synthetic(synthetic))
    by_name = {s.name: s for s in from_synthetic(synthetic)}
    for sample in ds:
        ref = by_name[sample.name]
        np.testing.assert_array_equal(sample.image, ref.image)
        np.testing.assert_array_equal(sample.foreground, ref.mask)
        assert set(np.unique(sample.mask)) <= {0, 1}  # 0/255 on disk reads back as 0/1
        assert sample.spacing_mm == pytest.approx(ref.spacing_mm)
    written = np.asarray(Image.open(root / "gts" / f"{ds.names[0]}.png"))
    assert set(np.unique(written)) == {0, 255}


def test_npz_round_trip(tmp_path, synthetic):
    paths = export_npz(synthetic, tmp_path / "npz")
    assert len(paths) == 6 and all(p.suffix == ".npz" for p in paths)
    ds = NpzDataset(tmp_path / "npz")
    ref = {s.name: s for s in from_synthetic(synthetic)}
    for sample in ds:
        np.testing.assert_array_equal(sample.image, ref[sample.name].image)
        np.testing.assert_array_equal(sample.mask, ref[sample.name].mask)
        assert sample.mask.dtype == bool
        assert sample.spacing_mm == ref[sample.name].spacing_mm
    assert len(NpzDataset(paths[0])) == 1 and len(NpzDataset(paths[:2])) == 2


def test_npz_without_spacing(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.zeros((8, 9), np.uint8), mask=np.ones((8, 9), np.uint8))
    sample = NpzDataset(tmp_path)[0]
    assert sample.spacing_mm is None and sample.name == "a" and sample.image.shape == (8, 9)


def test_in_memory_from_synthetic_and_samples(synthetic):
    ds = InMemoryDataset(synthetic)
    assert len(ds) == 6 and ds.names[0] == f"synthetic_0000_{synthetic[0].anatomy}"
    np.testing.assert_array_equal(ds[0].image, synthetic[0].image)
    again = InMemoryDataset([ds[1], ds[2]])
    assert again.names == ds.names[1:3]
    assert ds[1:3].names == ds.names[1:3]


def test_multiclass_and_colour_and_palette(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (20, 30)).astype(np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    _write_pair(tmp_path, "multi", rgb, labels)
    palette = Image.frombytes("P", (30, 20), labels.tobytes())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "imgs" / "pal.png")
    palette.save(tmp_path / "gts" / "pal.png")
    ds = PngFolderDataset(tmp_path)
    multi = ds.by_name("multi")
    assert multi.image.shape == (20, 30, 3)
    np.testing.assert_array_equal(multi.mask, labels)  # label values kept
    pal = ds.by_name("pal")
    assert pal.image.shape == (20, 30)
    np.testing.assert_array_equal(pal.mask, labels)  # palette indices are the labels
    assert multi.spacing_mm is None


def test_16bit_image_scaled_and_spacing_sidecar(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gts").mkdir()
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(tmp_path / "imgs" / "deep.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "gts" / "deep.png")
    (tmp_path / "spacing_mm.json").write_text(json.dumps({"deep": [0.2, 0.25]}))
    sample = PngFolderDataset(tmp_path)[0]
    assert sample.image.dtype == np.uint8 and sample.image.max() == 255
    assert sample.spacing_mm == (0.2, 0.25)


def test_train_val_split_is_seeded_and_disjoint(synthetic):
    ds = InMemoryDataset(synthetic)
    train, val = train_val_split(ds, val_fraction=0.34, seed=1)
    assert len(val) == 2 and len(train) == 4
    assert set(train.names).isdisjoint(val.names) and set(train.names) | set(val.names) == set(ds.names)
    assert train_val_split(ds, 0.34, seed=1)[1].names == val.names
    others = {tuple(train_val_split(ds, 0.34, seed=s)[1].names) for s in range(10)}
    assert len(others) > 1
    assert len(train_val_split(ds, 0.01, seed=0)[1]) == 1  # at least one when asked for any
    assert len(train_val_split(ds, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ds, 1.0)
    with pytest.raises(ValueError, match="no training samples"):
        train_val_split(InMemoryDataset(synthetic[:1]), 0.5)


def test_split_by_names(synthetic):
    ds = InMemoryDataset(synthetic)
    train, val = split_by_names(ds, [ds.names[0]])
    assert val.names == [ds.names[0]] and len(train) == 5
    train, val = split_by_names(ds, ds.names[:1], ds.names[2:4])
    assert train.names == ds.names[2:4]
    with pytest.raises(ValueError, match="not in the dataset"):
        split_by_names(ds, ["nope"])
    with pytest.raises(ValueError, match="both train and validation"):
        split_by_names(ds, ds.names[:2], ds.names[1:3])


def test_missing_folders_and_empty(tmp_path):
    with pytest.raises(ValueError, match="missing folder"):
        PngFolderDataset(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gts").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        PngFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="empty dataset"):
        NpzDataset(tmp_path / "imgs")
    with pytest.raises(ValueError, match="missing NPZ"):
        NpzDataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="empty dataset"):
        InMemoryDataset([])


def test_unpaired_and_shape_mismatch(tmp_path):
    img = np.zeros((10, 12), np.uint8)
    _write_pair(tmp_path, "a", img, img)
    Image.fromarray(img).save(tmp_path / "imgs" / "lonely.png")
    with pytest.raises(ValueError, match=r"images without masks \['lonely'\]"):
        PngFolderDataset(tmp_path)
    (tmp_path / "imgs" / "lonely.png").unlink()
    Image.fromarray(img).save(tmp_path / "gts" / "orphan.png")
    with pytest.raises(ValueError, match=r"masks without images \['orphan'\]"):
        PngFolderDataset(tmp_path)
    (tmp_path / "gts" / "orphan.png").unlink()
    Image.fromarray(np.zeros((11, 12), np.uint8)).save(tmp_path / "gts" / "a.png")
    with pytest.raises(ValueError, match="sample 'a'.*10x12.*11x12"):
        PngFolderDataset(tmp_path)


def test_colour_mask_and_bad_npz_rejected(tmp_path):
    rgb_mask = np.zeros((6, 6, 3), np.uint8)
    rgb_mask[0, 0] = (255, 0, 0)
    _write_pair(tmp_path / "p", "c", np.zeros((6, 6), np.uint8), rgb_mask)
    with pytest.raises(ValueError, match="colour mask"):
        PngFolderDataset(tmp_path / "p")[0]
    np.savez(tmp_path / "no_mask.npz", image=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['mask'\]"):
        NpzDataset(tmp_path / "no_mask.npz")
    np.savez(tmp_path / "shape.npz", image=np.zeros((4, 4), np.uint8), mask=np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="does not match image shape"):
        NpzDataset(tmp_path / "shape.npz")[0]


def test_sample_validation():
    with pytest.raises(ValueError, match="uint8"):
        Sample(np.zeros((4, 4), np.float32), np.zeros((4, 4), bool), None, "x")
    with pytest.raises(ValueError, match="does not match"):
        Sample(np.zeros((4, 4), np.uint8), np.zeros((4, 3), bool), None, "x")
    with pytest.raises(ValueError, match="spacing_mm"):
        Sample(np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), (0.1, -1.0), "x")
    with pytest.raises(ValueError, match="H, W, 3"):
        Sample(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), bool), None, "x")
