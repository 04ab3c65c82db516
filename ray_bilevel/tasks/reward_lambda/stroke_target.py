"""The stroke target ``ink_target`` of ``upper="stroke_target"``, derived for the model and the prompt
(docs/reward_lambda.md).

The upper score r1 = alignment × exp(−½ ((ink − ink_target)/ink_scale)²) asks for strokes bolder than most
pre-trained samples of the prompt, but not a flooded canvas. "Most" is a property of the model and the prompt (a 1
has less ink than an 8), so the target is derived from the pre-trained model's samples for that prompt:

    ink_target = round(q_0.95(ink(u_i))),   u_i ~ p_data(· | prompt)                   (whole percent of the canvas)

the 95th percentile of their ink (:func:`derive_ink_target`). ``tools/lambda_problem.py --calibrate`` (or
``--stroke-target`` alone) computes it from the calibration pool of pre-trained samples of development seeds (>= 100;
never the test noise) and records it under ``stroke_targets`` in the model's calibration file, keyed by prompt;
a task with ``ink_target=None`` (the default) reads it (:func:`resolve_ink_target`) or stops with the command that
derives it. The shipped model's 7: q_0.95 = 17.81 over 2,048 samples (mean 12.48, sd 2.95), so 18.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.protocol import MIN_DEVELOPMENT_SEED
from ray_bilevel.tasks.reward_lambda.calibration import (
    CALIBRATED_MODELS,
    STEPS_KEY,
    calibration_command,
    calibration_path,
    entry_prompt,
    same_prompt,
)

__all__ = ["STROKE_QUANTILE", "derive_ink_target", "load_stroke_targets", "find_stroke_target", "resolve_ink_target",
           "write_stroke_target"]

#: The quantile of the pre-trained samples' ink the target sits at.
STROKE_QUANTILE = 0.95


def derive_ink_target(ink: Any) -> dict[str, float]:
    """``{"ink_target": round(q_0.95), "ink_q95", "ink_mean", "ink_sd", "n"}`` of pre-trained samples' ink (percent)."""
    x = torch.as_tensor(ink, dtype=torch.float64).flatten()
    if len(x) < 20 or not bool(torch.isfinite(x).all()):
        raise ConfigError(f"the stroke target needs >= 20 finite ink values of pre-trained samples, got {len(x)}.")
    q = float(torch.quantile(x, STROKE_QUANTILE))
    return {"ink_target": float(round(q)), "ink_q95": q, "ink_mean": float(x.mean()), "ink_sd": float(x.std()),
            "n": float(len(x))}


def load_stroke_targets(path: str | Path) -> list[dict[str, Any]]:
    """The ``stroke_targets`` records of a calibration file (``[]`` when there are none)."""
    path = Path(path)
    return list(json.loads(path.read_text()).get("stroke_targets", [])) if path.is_file() else []


def find_stroke_target(cfg: Any) -> dict[str, Any] | None:
    """The record for ``cfg``'s model and prompt at the same ``cfg_scale`` and the nearest number of steps (in log)."""
    if cfg.model not in CALIBRATED_MODELS:
        return None
    found = [r for r in load_stroke_targets(calibration_path(cfg.model_path))
             if same_prompt(entry_prompt(r), cfg.prompt, cfg.model)
             and math.isclose(float(r["conditions"].get("cfg_scale", 1.0)), float(cfg.cfg_scale))]
    if not found:
        return None
    return min(found, key=lambda r: abs(math.log(float(r["conditions"][STEPS_KEY])) - math.log(float(cfg.steps))))


def resolve_ink_target(cfg: Any) -> tuple[float | None, str]:
    """``(ink_target, source)``: the explicit setting, the derived record for the model and prompt, or ``(None,
    "unused")`` when r1 is not the stroke target. Raises a ConfigError naming the command when no record exists, or
    when the record was derived from the test noise or a benchmark seed."""
    if cfg.ink_target is not None:
        return float(cfg.ink_target), "setting"
    if cfg.upper != "stroke_target":
        return None, "unused"
    record = find_stroke_target(cfg)
    if record is None:
        where = calibration_path(cfg.model_path) if cfg.model in CALIBRATED_MODELS else f"model={cfg.model!r}"
        fix = (f"derive it with `{calibration_command(cfg)}`" if cfg.model in CALIBRATED_MODELS
               else "this model has no calibration file")
        raise ConfigError(f"ink_target=None asks for the stroke target derived for prompt {cfg.prompt!r}, but {where} "
                          f"records none; set ink_target explicitly or {fix} (docs/reward_lambda.md).")
    fitted = record.get("provenance", {}).get("fitted_on", {})
    seeds = [int(s) for s in fitted.get("seeds", [])]
    if not seeds or min(seeds) < MIN_DEVELOPMENT_SEED or fitted.get("noise") == "test":
        raise ConfigError(f"the stroke target for prompt {cfg.prompt!r} was derived from {fitted}, not from "
                          "development "
                          f"seeds >= {MIN_DEVELOPMENT_SEED} off the test noise; re-derive it with "
                          f"`{calibration_command(cfg)}` or set ink_target explicitly.")
    steps = record["conditions"][STEPS_KEY]
    return float(record["ink_target"]), (f"derived (q{STROKE_QUANTILE:g} of {int(record['n'])} pre-trained samples' "
                                         f"ink for {entry_prompt(record)!r} at steps={steps})")


def write_stroke_target(path: str | Path, record: Mapping[str, Any]) -> None:
    """Add ``record`` to the ``stroke_targets`` of the calibration file, replacing one for the same prompt and
    conditions (β0 entries are kept as they are)."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    keep = [r for r in data.get("stroke_targets", [])
            if entry_prompt(r) != entry_prompt(record) or r.get("conditions") != record.get("conditions")]
    data["stroke_targets"] = [*keep, dict(record)]
    path.write_text(json.dumps(data, indent=2) + "\n")
