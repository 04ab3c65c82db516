"""Upper-level reward r1 of Application 1 (docs/algorithms.md §2.1, §2.5): prompt alignment of generated images.

* :class:`ClassAlignment` — the offline default: the probability the shipped digit classifier gives the
  prompt's digit (``"a handwritten 7"`` / ``"a handwritten seven"`` → class 7, :func:`prompt_to_class`).
* :class:`CLIPScore` — the paper's CLIP score ``100 · max(cos(E_img, E_txt), 0)`` (torchmetrics' definition,
  ``openai/clip-vit-base-patch16`` in the released code) through ``transformers.CLIPModel``; weights load
  from a local folder or the local Hugging Face cache, and download only with ``allow_download=True``.

Both take images in [-1, 1], shape (B, C, H, W), return (B,) and are differentiable in the images (the
weighted-sum baseline guides on them). Each has one tested conversion function (docs/algorithms.md §6.15): the digit
classifier's own ``prepare`` and :func:`clip_preprocess`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_bilevel.config import ConfigError
from ray_bilevel.metrics.rewards import CLIP_MEAN, CLIP_STD, check_range

if TYPE_CHECKING:
    from transformers import CLIPModel

__all__ = ["prompt_to_class", "class_prompt", "ClassAlignment", "clip_preprocess", "CLIPScore", "DIGIT_WORDS"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_WORD_RE = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r"|nought)\b", re.IGNORECASE)
_DIGIT_RE = re.compile(r"(?<![\d.])(\d)(?![\d.])")


def prompt_to_class(prompt: str | int) -> int:
    """The digit a prompt names: ``"a handwritten 7"``, ``"a handwritten seven"``, ``"digit 3"``, or an int 0-9.

    Raises:
        ConfigError: the prompt names no digit, or several different ones.
    """
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        if 0 <= prompt <= 9:
            return prompt
        raise ConfigError(f"class {prompt} is not a digit; use 0-9.")
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string such as 'a handwritten 7', got {prompt!r}.")
    found = {int(m) for m in _DIGIT_RE.findall(prompt)}
    for word in _WORD_RE.findall(prompt):
        word = word.lower()
        if word == "nought":
            found.add(0)
        else:
            found.add(DIGIT_WORDS.index(word))
    if not found:
        raise ConfigError(f"prompt {prompt!r} names no digit; write e.g. 'a handwritten 7' or 'a handwritten seven'.")
    if len(found) > 1:
        raise ConfigError(f"prompt {prompt!r} names several digits {sorted(found)}; name exactly one.")
    return found.pop()


def class_prompt(digit: int) -> str:
    """The canonical prompt of a digit class, ``"a handwritten 7"``."""
    return f"a handwritten {prompt_to_class(digit)}"


class ClassAlignment(nn.Module):
    """``r1(x) = p_classifier(c | x)`` with c the prompt's digit; images in [-1, 1], any size, 1 or 3 channels.

    Args:
        classifier: a module mapping [-1, 1] images to 10 logits (default: the shipped digit CNN).
        log: return ``log p`` instead of ``p`` (a smoother guidance target).
    """

    name = "class_alignment"

    def __init__(self, classifier: nn.Module | None = None, log: bool = False) -> None:
        super().__init__()
        if classifier is None:
            from ray_bilevel.models.digit_classifier import load_digit_classifier

            classifier = load_digit_classifier()
        self.classifier = classifier
        self.log = bool(log)

    def forward(self, x: torch.Tensor, prompt: str | int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        check_range(x)
        if isinstance(prompt, (str, int)):
            target = torch.full((x.shape[0],), prompt_to_class(prompt), dtype=torch.long, device=x.device)
        else:
            target = torch.as_tensor(prompt, dtype=torch.long, device=x.device).expand(x.shape[0])
        logp = torch.log_softmax(self.classifier(x), dim=-1).gather(1, target.view(-1, 1)).squeeze(1)
        return logp if self.log else logp.exp()


def clip_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[-1, 1] images → ``(x+1)/2`` in [0, 1] → RGB → bicubic resize to ``size`` → CLIP normalisation.

    The differentiable counterpart of ``CLIPImageProcessor`` for square images (which resizes the short
    side and centre-crops; the same thing for a square input). Inputs outside [-1, 1] raise, so a [0, 1]
    or [0, 255] tensor is never silently misread (the released code's version-dependent bug, docs/algorithms.md §6.15).
    """
    check_range(x)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ConfigError(f"CLIP expects 1 or 3 channels, got {x.shape[1]}.")
    x = (x + 1) / 2
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                          antialias=bool(x.shape[-1] > size)).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(out: Any) -> torch.Tensor:
    """transformers 4 returns a tensor from ``get_*_features``, transformers 5 an output with ``pooler_output``."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScore(nn.Module):
    """CLIP score ``100 · max(cos(E_img(x), E_txt(prompt)), 0)`` per image (docs/algorithms.md §2.5).

    Args:
        model: a ``transformers.CLIPModel``; tokenizer: its tokenizer (``CLIPTokenizer`` or fast).
    """

    name = "clip_score"
    DEFAULT_MODEL = "openai/clip-vit-base-patch16"

    def __init__(self, model: CLIPModel, tokenizer: Any) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        # transformers types CLIPConfig.vision_config as dict | CLIPVisionConfig | None (it is a config once built)
        self.size = int(model.config.vision_config.image_size)  # type: ignore[union-attr, arg-type]
        self._text_cache: dict[str, tuple[torch.Tensor, dict[str, float]]] = {}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike = DEFAULT_MODEL, allow_download: bool = False
    ) -> CLIPScore:
        """Load a CLIP model from a local folder or the local HF cache; the network only with ``allow_download``."""
        from transformers import AutoTokenizer, CLIPModel

        local_only = not allow_download or os.path.isdir(name_or_path)
        try:
            model = CLIPModel.from_pretrained(name_or_path, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
        except OSError as exc:
            if allow_download:
                raise
            raise FileNotFoundError(
                f"CLIP weights {str(name_or_path)!r} are not available locally; pass allow_download=True "
                "(needs the Hugging Face Hub) or the path of a saved CLIPModel folder."
            ) from exc
        return cls(model, tokenizer)

    def _image_features(self, pixel_values: torch.Tensor) -> Any:
        return self.model.get_image_features(pixel_values=pixel_values)

    def text_features(self, prompt: str) -> torch.Tensor:
        """Normalised text embedding of ``prompt`` (cached; its cost is booked once per trial), shape (D,)."""
        from ray_bilevel.cost import cached, count_call

        def encode() -> torch.Tensor:
            tokens = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                feats = _features(
                    count_call(
                        "clip",
                        self.model,
                        self.model.get_text_features,
                        input_ids=tokens["input_ids"],
                        attention_mask=tokens.get("attention_mask"),
                    )
                )
            return F.normalize(feats[0].float(), dim=-1)

        return cached(self._text_cache, prompt, f"clip_text:{self.model.config.name_or_path}:{prompt}", encode)

    def forward(self, x: torch.Tensor, prompt: str) -> torch.Tensor:
        from ray_bilevel.cost import count_call

        text = self.text_features(prompt)  # first: its (cached) cost is not part of the per-image count
        img = _features(count_call("clip", self.model, self._image_features, clip_preprocess(x, self.size)))
        cos = F.normalize(img, dim=-1) @ text.to(img)
        return 100.0 * cos.clamp(min=0)
