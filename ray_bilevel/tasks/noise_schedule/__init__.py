"""The noise-schedule application (Algorithm 6 of the paper; docs/algorithms.md §3): settings and presets
(:mod:`.settings`), the task (:mod:`.task`), its evaluation (:mod:`.evaluation`) and exports (:mod:`.exports`)."""
from __future__ import annotations

from ray_bilevel.tasks.noise_schedule.settings import PRESETS, NoiseScheduleSettings, search_space
from ray_bilevel.tasks.noise_schedule.task import NoiseScheduleTask

__all__ = ["NoiseScheduleTask", "NoiseScheduleSettings", "PRESETS", "search_space"]
