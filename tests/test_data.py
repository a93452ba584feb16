from pathlib import Path

import numpy as np
import pytest
import torch

from raytune_ctr import checks, data
from raytune_ctr.data import DataError
from raytune_ctr.spec import DataSpec

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def tiny_idx():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)


def test_digits_is_offline_and_fixed(data_dir):
    a = data.load(DataSpec(dataset="digits", data_dir=data_dir))
    b = data.load(DataSpec(dataset="digits", data_dir=data_dir))  # from the node cache
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.test) == 1797
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert b.source.endswith("digits.pt")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_gzipped_or_raw(tmp_path, tiny_idx, gz, write_idx):
    images, labels = tiny_idx
    write_idx(tmp_path / "fm", images, labels, gz)
    ds = data.load(DataSpec(dataset="fashion-mnist", data_dir=str(tmp_path / "fm")))
    assert ds.input_shape == (1, 28, 28) and len(ds.train) == 20
    assert torch.equal(ds.train.y, torch.from_numpy(labels.astype(np.int64)))
    mean, std = data.NORMALIZE["fashion-mnist"]
    assert torch.allclose(ds.train.x[3, 0] * std + mean, torch.from_numpy(images[3] / 255).float(),
                          atol=1e-5)


def test_truncated_idx_file_is_a_clear_error(tmp_path, tiny_idx, write_idx):
    write_idx(tmp_path / "fm", *tiny_idx, gz=False)
    f = tmp_path / "fm" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load(DataSpec(dataset="fashion-mnist", data_dir=str(tmp_path / "fm")))


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian(data_dir):
    ds = data.load(DataSpec(dataset="fashion-mnist", data_dir=data_dir))
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.source == str(DEBIAN_FASHION)
    assert sorted(ds.train.y.unique().tolist()) == list(range(10))


def test_offline_mnist_names_dataset_places_and_fix(data_dir):
    with pytest.raises(DataError) as e:
        data.load(DataSpec(dataset="mnist", data_dir=data_dir, download=False))
    msg = str(e.value)
    assert "'mnist'" in msg and data_dir in msg and "IDX files" in msg and "\n" not in msg


def test_offline_download_failure_is_one_line(data_dir, monkeypatch):
    from torchvision import datasets

    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")

    monkeypatch.setattr(datasets.MNIST, "__init__", offline)
    with pytest.raises(DataError) as e:
        data.load(DataSpec(dataset="mnist", data_dir=data_dir))
    assert "download failed (Error downloading train-images-idx3-ubyte.gz:)" in str(e.value)
    assert "\n" not in str(e.value)


def test_synthetic_shape_and_classes():
    ds = data.load(DataSpec(dataset="synthetic", image_size=16, channels=3, num_classes=5,
                            num_samples=64))
    assert ds.input_shape == (3, 16, 16) and len(ds.train) == 64
    assert int(ds.train.y.max()) < 5


def test_imagefolder_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny"
    rng = np.random.default_rng(0)
    rows = []
    for c in ("n01", "n02"):
        (root / "train" / c / "images").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / c / "images" / f"{c}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    for i, c in enumerate(("n02", "n01")):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG")
        rows.append(f"val_{i}.JPEG\t{c}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows))
    ds = data.load(DataSpec(dataset="imagefolder", data_dir=str(root), image_size=32))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 2 and not ds.in_memory
    assert [y for _, y in ds.test] == [1, 0]
    xb, yb = next(data.batches(ds.train, 4, seed=0))
    assert xb.shape == (4, 3, 32, 32)


def test_shards_cover_everything_once_and_match_in_length():
    n, world = 10, 3
    train = [data.shard_indices(n, r, world, seed=5, pad=True) for r in range(world)]
    assert len({len(s) for s in train}) == 1  # same step count on every rank
    assert set(torch.cat(train).tolist()) == set(range(n))
    test = [data.shard_indices(n, r, world, seed=None, pad=False) for r in range(world)]
    assert sorted(torch.cat(test).tolist()) == list(range(n))  # each test sample once


def test_a_dataset_is_one_registry_entry(tmp_path, monkeypatch):
    """What the spec and the loader know of a dataset comes from its entry alone."""
    import torch


    assert data.TEXT == {"glue-mrpc"} and "imagefolder" not in data.IN_MEMORY
    monkeypatch.setitem(data.REGISTRY, "noise", None)  # restored after the test

    @data.register("noise", lambda s: (1, 6, 6))
    def _noise(spec, tokenize=None):
        x, y = torch.zeros(8, 1, 6, 6), torch.zeros(8, dtype=torch.long)
        return data.Datasets(data.TensorSet(x, y), data.TensorSet(x, y), (1, 6, 6), 2, "zeros")

    s = checks.from_dict({"data": {"dataset": "noise", "data_dir": str(tmp_path)}})
    assert data.load(s.data).source == "zeros" and data.input_shape(s.data) == (1, 6, 6)
