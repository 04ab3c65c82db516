"""Tests for ray_bilevel.data: sources, splits, resizing, user data and error messages."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray_bilevel.config import ConfigError  # noqa: E402
from ray_bilevel.data import ImageData, load_images, mnist5k_csv_path  # noqa: E402


def _first_csv_row() -> np.ndarray:
    with gzip.open(mnist5k_csv_path(), "rt") as fh:
        return np.array([float(v) for v in fh.readline().split(",")])


def test_mnist5k_matches_the_csv_and_is_in_range():
    d = load_images()
    assert isinstance(d, ImageData) and d.name == "mnist5k"
    assert d.images.shape == (5000, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    assert torch.equal(d.labels.bincount(), torch.full((10,), 500))
    row = _first_csv_row()  # ground truth: pixel p -> p / 127.5 - 1
    expected = torch.tensor(row[:784] / 127.5 - 1.0, dtype=torch.float32).view(1, 28, 28)
    assert torch.allclose(d.images[0], expected, atol=1e-6) and int(d.labels[0]) == int(row[784])


def test_mnist5k_parse_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    a = load_images()
    assert (tmp_path / "mnist5k_v1.npy").is_file()
    b = load_images()  # from the cache
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_split_is_deterministic_disjoint_and_balanced():
    full = load_images()
    tr = load_images(split="train")
    ho = load_images(split="heldout")
    assert len(tr) == 4000 and len(ho) == 1000
    assert torch.equal(ho.images, load_images(split="heldout").images)  # same args, same split
    assert not torch.equal(ho.images, load_images(split="heldout", split_seed=1).images)
    # disjoint and complete: match every image back to its row of the full set
    flat = full.images.view(5000, -1)
    keys = {flat[i].numpy().tobytes(): i for i in range(5000)}
    idx_tr = {keys[x.numpy().tobytes()] for x in tr.images.view(4000, -1)}
    idx_ho = {keys[x.numpy().tobytes()] for x in ho.images.view(1000, -1)}
    assert len(keys) == 5000 and not (idx_tr & idx_ho) and len(idx_tr | idx_ho) == 5000
    counts = ho.labels.bincount(minlength=10)
    assert counts.min() >= 60 and counts.max() <= 140, counts  # ~100 each, not all 8s and 9s
    assert len(load_images(split="heldout", heldout_fraction=0.1)) == 500


def test_resize_and_pad_sizes():
    r = load_images(image_size=16, split="heldout")
    assert r.images.shape == (1000, 1, 16, 16) and r.images.min() >= -1 and r.images.max() <= 1
    p = load_images(image_size=32, resize="pad", split="heldout")
    assert p.images.shape == (1000, 1, 32, 32)
    ref = load_images(split="heldout").images
    assert torch.equal(p.images[:, :, 2:30, 2:30], ref) and (p.images[:, :, :2] == -1).all()
    # area-like downsampling of a constant image keeps the constant
    u = load_images(image_size=7, split="heldout")
    assert torch.allclose(u.images.mean(dim=(1, 2, 3)), ref.mean(dim=(1, 2, 3)), atol=0.02)
    with pytest.raises(ConfigError, match="cannot pad"):
        load_images(image_size=16, resize="pad")
    assert load_images(channels=3, split="heldout").images.shape == (1000, 3, 28, 28)


def test_sklearn_digits():
    from sklearn.datasets import load_digits

    d = load_images("digits")
    ref = load_digits()
    assert d.images.shape == (1797, 1, 8, 8)
    assert torch.allclose(d.images[:, 0], torch.tensor(ref.images / 8.0 - 1.0, dtype=torch.float32), atol=1e-6)
    assert torch.equal(d.labels, torch.tensor(ref.target))


@pytest.mark.parametrize(
    "layout, dtype",
    [("NHW", "uint8"), ("NHWC", "uint8"), ("NCHW", "float01"), ("NHWC3", "float11"), ("NCHW3", "int64")],
)
def test_npz_round_trip(tmp_path, layout, dtype):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 3, 6, 7)).astype(np.uint8)  # ground truth, channels-first
    grey = u8[:, :1]
    src = {"NHW": grey[:, 0], "NHWC": grey.transpose(0, 2, 3, 1), "NCHW": grey,
           "NHWC3": u8.transpose(0, 2, 3, 1), "NCHW3": u8}[layout]
    arr = {"uint8": src, "float01": src / 255.0, "float11": src / 127.5 - 1.0, "int64": src.astype(np.int64)}[dtype]
    labels = np.arange(5)
    np.savez(tmp_path / "x.npz", images=arr, labels=labels)
    d = load_images(str(tmp_path / "x.npz"))
    truth = torch.tensor((u8 if layout.endswith("3") else grey) / 127.5 - 1.0, dtype=torch.float32)
    assert d.images.shape == truth.shape and torch.allclose(d.images, truth, atol=1e-6)
    assert torch.equal(d.labels, torch.arange(5))
    sub = load_images(tmp_path / "x.npz", split="train", heldout_fraction=0.4, image_size=8, resize="pad", channels=1)
    assert sub.images.shape == (3, 1, 8, 8)


def test_png_folder_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(3, 9, 9)).astype(np.uint8)
    for i, g in enumerate(grey):
        Image.fromarray(g, mode="L").save(tmp_path / f"img{i}.png")
    d = load_images(str(tmp_path))
    assert d.labels is None and d.images.shape == (3, 1, 9, 9)
    assert torch.allclose(d.images[:, 0], torch.tensor(grey / 127.5 - 1.0, dtype=torch.float32), atol=1e-6)
    # one RGB image of another size: everything becomes RGB; sizes need image_size
    rgb = rng.integers(0, 256, size=(5, 4, 3)).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "z_rgb.png")
    with pytest.raises(ConfigError, match="image_size"):
        load_images(str(tmp_path))
    d = load_images(str(tmp_path), image_size=9, resize="pad")
    assert d.images.shape == (4, 3, 9, 9)
    assert torch.allclose(
        d.images[0], torch.tensor(grey[0] / 127.5 - 1.0, dtype=torch.float32).expand(3, 9, 9), atol=1e-6
    )
    assert torch.allclose(
        d.images[3, :, 2:7, 2:6], torch.tensor(rgb.transpose(2, 0, 1) / 127.5 - 1.0, dtype=torch.float32), atol=1e-6
    )


def test_mnist_needs_root_or_download(tmp_path):
    with pytest.raises(ConfigError, match="root=.*download=True"):
        load_images("mnist")
    with pytest.raises(ConfigError, match="MNIST not found"):
        load_images("mnist", root=str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "mnist5"}, r"unknown dataset 'mnist5'.*mnist5k"),
        ({"dataset": "/no/such/dir"}, "does not exist"),
        ({"split": "testing"}, "unknown split"),
        ({"heldout_fraction": 0.0}, r"heldout_fraction must be in \(0, 1\)"),
        ({"heldout_fraction": 1.5}, r"heldout_fraction must be in \(0, 1\)"),
        ({"resize": "crop"}, "unknown resize mode"),
        ({"image_size": 0}, "image_size"),
        ({"channels": 2}, "channels"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_images(**kwargs)


def test_user_data_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no .png"):
        load_images(str(empty))
    cases = {
        "nokey.npz": ({"x": np.zeros((2, 4, 4))}, "no key 'images'"),
        "empty.npz": ({"images": np.zeros((0, 4, 4))}, "empty"),
        "rank.npz": ({"images": np.zeros((2, 4))}, "rank 3 or 4"),
        "chan.npz": ({"images": np.zeros((2, 5, 4, 4))}, "channel axis"),
        "range.npz": ({"images": np.full((2, 4, 4), 3.0)}, r"\[0, 1\] or \[-1, 1\]"),
        "int.npz": ({"images": np.full((2, 4, 4), 300)}, "0..255"),
        "nan.npz": ({"images": np.full((2, 4, 4), np.nan)}, "NaN"),
        "lab.npz": ({"images": np.zeros((2, 4, 4)), "labels": np.zeros(3, dtype=int)}, "labels"),
    }
    for fname, (arrays, match) in cases.items():
        np.savez(tmp_path / fname, **arrays)
        with pytest.raises(ConfigError, match=match):
            load_images(str(tmp_path / fname))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="neither a folder"):
        load_images(str(tmp_path / "a.txt"))
