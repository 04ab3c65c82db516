"""The weighted-sum baseline of the reward-λ task (docs/algorithms.md §5): guidance on ``r2 + w · r1`` at a fixed λ.

It has no hypergradient: its ``hyper_step`` performs one guided round (the same work as ``lower_step``) and never
moves ``w``, so under BilevelTrainable it is a fixed-w run. The λ task offers it as its ``weighted_sum`` method.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.space import SearchSpace
from ray_bilevel.tasks.reward_lambda.settings import WEIGHTED_SUM_PRESETS, WeightedSumSettings, weight_space
from ray_bilevel.tasks.reward_lambda.task import RewardLambdaTask

__all__ = ["WeightedSumTask"]


class WeightedSumTask(RewardLambdaTask):
    """Baseline of docs/algorithms.md §5: Algorithm 5 on ``r2 + w · r1`` (r1 differentiable: the digit classifier or CLIP)."""

    name = "weighted_sum"
    settings_cls = WeightedSumSettings
    presets = WEIGHTED_SUM_PRESETS
    baselines = ("default", "grid", "random", "bayes", "tpe")

    @classmethod
    def search_space(cls) -> SearchSpace:
        return weight_space()

    @classmethod
    def task_methods(cls) -> Mapping[str, Any]:
        return {}

    cfg: WeightedSumSettings  # resolved from settings_cls

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        if not math.isfinite(self.cfg.w) or self.cfg.w < 0:
            raise ConfigError(f"the weight w must be a finite number >= 0, got w={self.cfg.w}.")
        self.w = float(self.cfg.w)

    def hyperparameters(self) -> dict[str, float]:
        return {"w": self.w}

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        unknown = set(values) - {"w"}
        if unknown:
            raise ConfigError(f"unknown hyperparameters {sorted(unknown)} for weighted_sum; it has only 'w'.")
        if "w" in values and float(values["w"]) != self.w:
            self.w = float(values["w"])
            self._reset_generation()

    def _guidance_reward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend.r2(x) + self.w * self.backend.r1(x)

    def _tilt(self, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return r2 + self.w * r1

    @property
    def outer_budget(self) -> int:
        return self.lower_budget

    def hyper_step(self) -> dict[str, float]:
        """No hypergradient exists for w: one guided round at fixed w (so BilevelTrainable runs a fixed-w trial)."""
        return {**self.lower_step(), "hypergrad_norm": 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "w": self.w}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.w = float(state["w"])
