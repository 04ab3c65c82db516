"""A learnable noise schedule for your own diffusers training loop (Algorithm 6, docs/algorithms.md §3;
docs/your_own_problem.md): :class:`ScheduleLearner` (:mod:`.learner`), its settings (:mod:`.config`) and its default
sampler and metric (:mod:`.upper`). Imports no Ray."""
from __future__ import annotations

from ray_bilevel.schedule_learner.config import PRESETS, ScheduleLearnerConfig, learner_config
from ray_bilevel.schedule_learner.learner import NoisyBatch, ScheduleLearner
from ray_bilevel.schedule_learner.upper import DDIMSampler, DomainFID

__all__ = ["ScheduleLearner", "ScheduleLearnerConfig", "NoisyBatch", "learner_config", "PRESETS", "DDIMSampler",
           "DomainFID"]
