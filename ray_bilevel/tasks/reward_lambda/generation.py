"""Algorithm 5 of the reward-λ task, one round per lower step: the guided generation at the current λ.

:class:`GuidedGeneration` is the base class of :class:`~ray_bilevel.tasks.reward_lambda.task.RewardLambdaTask` (and
so of the weighted sum): one generation is ``repeats`` batches of ``rounds`` guided rounds each (docs/algorithms.md
§2.3), at the strength β = β0/λ, each round after the first guided by the linearisation of the reward at the previous
round's images. The state of a generation is a plain dict (checkpointed by the task). The noise of each split comes
from seeds fixed per (task seed, split): every trial of a seed shares them, and validation and test never do.
"""
from __future__ import annotations

import zlib
from typing import Any

import torch

from ray_bilevel.guidance import Linearisation, linearise
from ray_bilevel.tasks.base import Task
from ray_bilevel.tasks.reward_lambda.settings import RewardLambdaSettings

__all__ = ["GuidedGeneration", "stable_seed"]


def stable_seed(*parts: Any) -> int:
    """A seed from ``parts`` that is the same in every process (CRC-32 of their text, 31 bits)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


class GuidedGeneration(Task):
    """The lower level of the reward-λ task: Algorithm 5 at the current λ (``lower_step``: one round).

    The task sets ``cfg``, ``backend`` (:func:`~ray_bilevel.tasks.reward_lambda.backends.make_backend`), ``beta0``
    and ``lam``, and calls :meth:`_reset_generation` whenever λ or the guidance changes."""

    cfg: RewardLambdaSettings
    backend: Any
    beta0: float
    lam: float

    @property
    def beta(self) -> float:
        """Guidance strength of the lower level, β = β0/λ (docs/algorithms.md §2.3, (11a)); β0 calibrated by default."""
        return self.beta0 / self.lam

    @staticmethod
    def _new_generation() -> dict[str, Any]:
        return {"repeat": 0, "round": 0, "lin": None, "done": [], "current": None}

    def _reset_generation(self) -> None:
        """A new guided generation (λ or the guidance changed); drops the cached test generation too."""
        self.gen: dict[str, Any] = self._new_generation()
        self._test: torch.Tensor | None = None  # the test-noise generation at the current λ (evaluate_test)

    def _noise_seed(self, split: str, *parts: Any) -> int:
        """Seeds of the evaluation noise: fixed per (task seed, split), so every trial of a seed shares them and
        validation and test never do (docs/algorithms.md §4)."""
        return stable_seed(self.cfg.eval_seed, self.cfg.seed, split, *parts)

    def _guidance_reward(self, x: torch.Tensor) -> torch.Tensor:
        """The reward Algorithm 5 guides on: r2 (lower level (11a))."""
        return self.backend.r2(x)

    def _y_star(self) -> float:
        """The fixed guidance target y* of the reward Algorithm 5 guides on (``target="fixed"``): ``cfg.y_star``."""
        return float(self.cfg.y_star)

    def _generation_complete(self) -> bool:
        return self.gen["repeat"] >= self.cfg.repeats

    def _advance(self, g: dict[str, Any], split: str) -> dict[str, float]:
        """One round of Algorithm 5 (docs/algorithms.md §2.3) for batch ``g["repeat"]`` at the strength β0/λ."""
        c = self.cfg
        z_T = self.backend.noise(c.guide_batch, self._noise_seed(split, "guide", g["repeat"]))
        lin = None if g["round"] == 0 else Linearisation(**g["lin"])
        x = self.backend.guided_round(z_T, lin, self.beta)
        if g["round"] < c.rounds - 1:
            new, r = linearise(self._guidance_reward, x, c.target, self._y_star(), c.delta)
            g["lin"] = {"g": new.g, "b": new.b, "y": new.y}
            g["round"] += 1
            g["current"] = x
        else:
            with torch.no_grad():
                r = self._guidance_reward(x)
            g["done"].append(x)
            g["repeat"] += 1
            g["round"], g["lin"], g["current"] = 0, None, None
        return {"round_reward": float(r.mean()), "beta": self.beta}

    def lower_step(self) -> dict[str, float]:
        """One round of the guided generation at the current λ, on the validation noise (the method's answer)."""
        if self._generation_complete():
            self._reset_generation()
        return self._advance(self.gen, "val")

    @staticmethod
    def _images(g: dict[str, Any]) -> torch.Tensor | None:
        parts = list(g["done"]) + ([g["current"]] if g["current"] is not None else [])
        return torch.cat(parts) if parts else None

    def _guided_images(self) -> torch.Tensor | None:
        return self._images(self.gen)
