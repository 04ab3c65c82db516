"""The reward-λ application (Algorithms 2 and 5 of the paper; docs/algorithms.md §2): settings, presets and
search spaces (:mod:`.settings`), the task (:mod:`.task`), the weighted-sum baseline it offers
(:mod:`.weighted_sum`) and the models and scorers behind both (:mod:`.backends`)."""
from __future__ import annotations

from ray_bilevel.tasks.reward_lambda.settings import PRESETS, RewardLambdaSettings, WeightedSumSettings
from ray_bilevel.tasks.reward_lambda.task import RewardLambdaTask
from ray_bilevel.tasks.reward_lambda.weighted_sum import WeightedSumTask

__all__ = ["RewardLambdaTask", "RewardLambdaSettings", "WeightedSumTask", "WeightedSumSettings", "PRESETS"]
