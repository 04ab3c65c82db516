"""One λ: the guidance strength β0 that makes guided sampling draw the tilted distribution p*_λ (docs/reward_lambda.md).

The closed-form hypergradient (docs/algorithms.md §2.2) differentiates ``F(λ) = −E_{p*_λ}[r1]`` with
``p*_λ ∝ p_data · exp(r2/λ)``; the sampler (Algorithm 5) draws with strength ``β = β0/λ``. Both describe the same
distribution only for the right β0.

**Derivation (first order).** The score of p*_λ at noise level t is ``∇ log p_t + ∇_{z_t} log E[e^{r2(x_0)/λ} | z_t]``;
replacing the posterior of x_0 by its mean û_0(z_t) (Tweedie; exact for a linear r2 as t → 0) gives the extra
term ``∇_{z_t} r2(û_0)/λ``. Algorithm 5 with a fixed target y* adds ``−β ∇ ½ (y* − r2(û_0))² = β (y* − r2(û_0))
∇_{z_t} r2(û_0)``. The two agree when ``β (y* − r2) = 1/λ``, i.e. ``β = β0/λ`` with ``β0 ≈ 1/(y* − E[r2])`` as long
as y* lies far above the rewards the sampler reaches (ink: y* = 100, E[r2] ≈ 13-25, so β0 ≈ 0.011-0.013).

**Calibration.** The approximation is first order, so β0 is fitted once per model, reward, prompt and target: the guided
mean of r2 measured on a λ sweep at a probe β0 (:func:`fit_beta0`, least squares) is matched to the
importance-weighted prediction
``E_{p*_λ}[r2] = Σ_i softmax(r2/λ)_i r2_i`` over pre-trained samples, at the λ where the prediction is reliable
(effective sample size of the weights large enough). ``tools/lambda_problem.py --calibrate`` fits it and writes
:data:`CALIBRATION_FILE` next to the model; a task with ``beta0=None`` (the offline default) reads it
(:func:`resolve_beta0`).

**What an entry is for.** The file sits next to the model (the shipped one, or the folder of ``model="diffusers"``),
so an entry belongs to that model; it is used only for the same reward (the built-in name, or the user function's
import path), the same prompt (:func:`entry_prompt`; the digits model compares the digit the prompt names, so
"a handwritten seven" uses the 7's entry and "a handwritten 3" never does) and equal :data:`MATCH_KEYS`, at the
nearest number of sampler steps. Anything else is refused with the command that fits it (:func:`calibration_command`).

**Data.** β0 is a hand-chosen constant of every λ method, so it is fitted on development seeds (>= 100) and the
validation noise only (:mod:`ray_bilevel.protocol`); each entry records the split and seeds it was fitted on
(``provenance.fitted_on``), with the command and commit. :func:`resolve_beta0` refuses an entry fitted on the test
split or on benchmark seeds, and warns about one that does not record them (:func:`provenance_problem`).
"""
from __future__ import annotations

import json
import math
import shlex
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.metrics.alignment import prompt_to_class
from ray_bilevel.models.cond_unet import COND_UNET_DIR
from ray_bilevel.protocol import MIN_DEVELOPMENT_SEED, TUNING_SPLIT
from ray_bilevel.tasks.reward_lambda.settings import PRESETS, RewardLambdaSettings
from ray_bilevel.tasks.reward_lambda.user_scores import spec_name

__all__ = ["CALIBRATION_FILE", "MATCH_KEYS", "STEPS_KEY", "calibration_path", "load_calibrations", "entry_prompt",
           "same_prompt", "find_calibration", "calibration_command", "provenance_problem", "resolve_beta0",
           "tilted_means", "derived_beta0", "fit_beta0", "write_calibration"]

#: The calibration record, next to the model's ``config.json`` (shipped: ``assets/cond_unet_mnist16/``).
CALIBRATION_FILE = "guidance_calibration.json"
#: Settings a calibration must match exactly to be used: they change what β means.
MATCH_KEYS = ("reward", "y_star", "target", "reduction", "cfg_scale")
#: Among matching entries the one fitted at the nearest number of sampler steps is used (β0 depends on it: the
#: shipped model needs 0.0075 at 20 DDIM steps, 0.013 at 4).
STEPS_KEY = "steps"
#: The models whose folder holds a calibration file (Stable Diffusion by hub name has none: set beta0).
CALIBRATED_MODELS = ("digits", "diffusers")
#: The probe β0 the calibration command starts from (the shipped calibration's).
PROBE_BETA0 = 0.01


def calibration_path(model_path: str | Path | None = None) -> Path:
    """The calibration file of the model in ``model_path`` ("" or None: the shipped digits model)."""
    if model_path:
        return Path(model_path) / CALIBRATION_FILE
    return COND_UNET_DIR / CALIBRATION_FILE


def load_calibrations(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a calibration file (``[]`` when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    return list(record.get("entries", []))


def entry_prompt(entry: Mapping[str, Any]) -> str | None:
    """The prompt an entry was fitted for: ``conditions.prompt``, else (entries before issue #23)
    ``provenance.fitted_on.prompt``; None when it records none (such an entry matches no prompt)."""
    prompt = entry.get("conditions", {}).get("prompt")
    if prompt is None:
        prompt = entry.get("provenance", {}).get("fitted_on", {}).get("prompt")
    return None if prompt is None else str(prompt)


def same_prompt(have: str | None, want: str, model: str) -> bool:
    """Whether a record's prompt ``have`` is the task's ``want``: the same digit for the digits model, else the same
    text (whitespace and case aside)."""
    if have is None:
        return False
    if model == "digits":
        try:
            return prompt_to_class(have) == prompt_to_class(want)
        except ConfigError:
            return False
    return " ".join(have.split()).lower() == " ".join(str(want).split()).lower()


def _matches(entry: Mapping[str, Any], cfg: Any) -> bool:
    cond = entry.get("conditions", {})
    if not same_prompt(entry_prompt(entry), cfg.prompt, cfg.model):
        return False
    for key in MATCH_KEYS:
        want = spec_name(cfg.reward) if key == "reward" else getattr(cfg, key)
        have = cond.get(key)
        if isinstance(want, float) or isinstance(have, float):
            if have is None or not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif have != want:
            return False
    return True


def _steps_distance(entry: Mapping[str, Any], steps: int) -> float:
    have = entry.get("conditions", {}).get(STEPS_KEY)
    return 0.0 if have is None else abs(math.log(float(have)) - math.log(float(steps)))


def find_calibration(cfg: Any) -> dict[str, Any] | None:
    """The calibration entry for ``cfg`` (a model with a folder: :data:`CALIBRATED_MODELS`): the same prompt and reward,
    :data:`MATCH_KEYS` equal, fitted at the nearest number of sampler steps (in log); None if no entry matches."""
    if cfg.model not in CALIBRATED_MODELS:
        return None
    found = [e for e in load_calibrations(calibration_path(cfg.model_path)) if _matches(e, cfg)]
    return min(found, key=lambda e: _steps_distance(e, cfg.steps)) if found else None


def provenance_problem(entry: Mapping[str, Any]) -> tuple[str, bool] | None:
    """What is wrong with the data an entry was fitted on, or None: ``(problem, refuse)``. ``refuse`` is True when
    the entry records the test split or a seed below the development range, False when it records no split or seeds."""
    fitted = entry.get("provenance", {}).get("fitted_on", {})
    split, seeds = fitted.get("split"), fitted.get("seeds")
    if split is None or not seeds:
        return "records no split and seeds it was fitted on (provenance.fitted_on.split / .seeds)", False
    low = [s for s in seeds if int(s) < MIN_DEVELOPMENT_SEED]
    if split != TUNING_SPLIT or low:
        return (f"was fitted on split={split!r}, seeds={list(seeds)}, not on the {TUNING_SPLIT!r} split and "
                f"development seeds >= {MIN_DEVELOPMENT_SEED}"), True
    return None


def resolve_beta0(cfg: Any) -> tuple[float, str]:
    """``(β0, source)``: the explicit ``cfg.beta0``, or the model's calibration when ``cfg.beta0`` is None.

    Raises ConfigError if there is no matching entry or the entry was fitted on the test split or benchmark seeds;
    warns if the entry does not record its split and seeds."""
    if cfg.beta0 is not None:
        return float(cfg.beta0), "setting"
    entry = find_calibration(cfg)
    where = calibration_path(cfg.model_path) if cfg.model in CALIBRATED_MODELS else f"model={cfg.model!r}"
    if entry is None:
        wanted = {"prompt": cfg.prompt, **{k: getattr(cfg, k) for k in MATCH_KEYS}, "reward": spec_name(cfg.reward)}
        raise ConfigError(
            f"beta0=None asks for the calibrated guidance strength, but {where} has no calibration for "
            f"{wanted}; set beta0 explicitly or fit one with `{calibration_command(cfg)}` "
            "(development seeds, validation split; docs/reward_lambda.md).")
    fitted = entry.get("conditions", {}).get(STEPS_KEY)
    note = "" if fitted in (None, cfg.steps) else f", fitted at steps={fitted}, used at steps={cfg.steps}"
    problem = provenance_problem(entry)
    if problem is not None:
        text = (f"the calibration in {where} for steps={fitted} {problem[0]}; refit it with "
                f"`{calibration_command(cfg)}` (validation split) or set beta0 explicitly.")
        if problem[1]:
            raise ConfigError(text)
        warnings.warn(text, UserWarning, stacklevel=3)
        note += ", unrecorded data"
    return float(entry["beta0"]), f"calibrated ({CALIBRATION_FILE}{note})"


#: Settings the calibration command passes on when they differ from the quick preset (what an entry is keyed by).
_COMMAND_KEYS = ("model", "model_path", "prompt", "reward", "upper", "ink_target", "alignment", "steps", "cfg_scale",
                 "y_star", "target", "reduction", "device")


def calibration_command(cfg: Any) -> str:
    """The command that fits β0 (and the stroke target, :mod:`.stroke_target`) for ``cfg`` on development seeds and
    the validation split: ``tools/lambda_problem.py --calibrate`` with every keyed setting that differs from
    the quick preset."""
    base = RewardLambdaSettings(**PRESETS["quick"])
    sets = []
    for key in _COMMAND_KEYS:
        value = getattr(cfg, key)
        if value != getattr(base, key):
            shown = spec_name(value) if callable(value) else value
            sets.append("--set " + shlex.quote(f"{key}={shown}"))
    return " ".join(["python tools/lambda_problem.py --preset quick --calibrate --seeds 100-104",
                     f"--beta0 {PROBE_BETA0} --repeats 1 --lams 0.4642-100 --pool 2048", *sets])


def tilted_means(r2: Any, lam: float, **scores: Any) -> dict[str, float]:
    """Self-normalised importance estimates of ``E_{p*_λ}[s]`` for each score ``s`` (and r2 itself) from
    pre-trained samples, with the effective sample size ``ess = 1/Σ w²`` of ``w = softmax(r2/λ)``."""
    b = torch.as_tensor(r2, dtype=torch.float64).flatten()
    w = torch.softmax(b / float(lam), dim=0)
    out = {"r2": float((w * b).sum()), "ess": float(1.0 / w.square().sum())}
    for name, values in scores.items():
        out[name] = float((w * torch.as_tensor(values, dtype=torch.float64).flatten()).sum())
    return out


def derived_beta0(y_star: float, mean_r2: float) -> float:
    """The first-order mapping of the module docstring: ``β0 = 1/(y* − E[r2])``."""
    if not y_star > mean_r2:
        raise ConfigError(f"the derivation needs y* above the rewards, got y*={y_star}, E[r2]={mean_r2}.")
    return 1.0 / (y_star - mean_r2)


def fit_beta0(betas: Sequence[float], measured: Sequence[float], lams: Sequence[float],
              predicted: Sequence[float]) -> tuple[float, dict[float, float]]:
    """Fit β0 of ``β = β0/λ`` so that guided means match the tilted predictions.

    Args:
        betas, measured: guided mean of r2 measured at guidance strengths ``betas`` > 0 (any probe β0; the
            curve must increase with β; it is interpolated linearly in log β).
        lams, predicted: the λ to match and the predictions ``E_{p*_λ}[r2]`` there.

    The fit is the least-squares β0 in reward units, ``argmin Σ_λ (m(β0/λ) − E_{p*_λ}[r2])²`` with m the
    interpolated curve, so the λ where guidance moves r2 most weigh most. Also returns, per λ, the exact
    inversion ``λ β̂(λ)`` with ``m(β̂(λ)) = E_{p*_λ}[r2]`` (a diagnostic of how far β ∝ 1/λ holds); predictions
    outside the measured range are left out of both. Returns ``(β0, {λ: λ β̂(λ)})``.
    """
    pts = sorted((float(b), float(m)) for b, m in zip(betas, measured) if b > 0)
    if len(pts) < 2:
        raise ConfigError("fit_beta0 needs guided means at two or more guidance strengths > 0.")
    logb = [math.log(b) for b, _ in pts]
    ms = [m for _, m in pts]
    if any(m2 <= m1 for m1, m2 in zip(ms, ms[1:])):
        raise ConfigError(f"the measured reward must increase with the guidance strength, got {ms}.")

    def curve(lb: float) -> float:  # m at log β, linear in log β, constant beyond the measured range
        if lb <= logb[0]:
            return ms[0]
        if lb >= logb[-1]:
            return ms[-1]
        k = max(i for i in range(len(logb) - 1) if logb[i] <= lb)
        return ms[k] + (lb - logb[k]) / (logb[k + 1] - logb[k]) * (ms[k + 1] - ms[k])

    per_lam: dict[float, float] = {}
    for lam, p in zip(lams, predicted):
        if not ms[0] <= p <= ms[-1]:
            continue
        k = max(i for i in range(len(ms) - 1) if ms[i] <= p)
        frac = (p - ms[k]) / (ms[k + 1] - ms[k])
        per_lam[float(lam)] = float(lam) * math.exp(logb[k] + frac * (logb[k + 1] - logb[k]))
    if not per_lam:
        raise ConfigError("no prediction lies inside the measured range; widen the λ sweep.")
    targets = [(lam, p) for lam, p in zip(lams, predicted) if float(lam) in per_lam]
    lo, hi = math.log(min(per_lam.values())), math.log(max(per_lam.values()))
    if hi - lo < 1e-12:
        return math.exp(lo), per_lam
    grid = [lo + (hi - lo) * i / 4000 for i in range(4001)]  # the minimiser lies between the per-λ inversions
    loss = [sum((curve(g - math.log(lam)) - p) ** 2 for lam, p in targets) for g in grid]
    return math.exp(grid[min(range(len(grid)), key=loss.__getitem__)]), per_lam


def write_calibration(path: str | Path, entry: Mapping[str, Any]) -> None:
    """Add ``entry`` to the calibration file, replacing an entry with the same matching conditions."""
    path = Path(path)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["about"] = ("Guidance strength beta = beta0 / lambda calibrated so that Algorithm 5 draws the tilted "
                       "distribution p*_lambda of the closed-form hypergradient; docs/reward_lambda.md. Written by "
                       "tools/lambda_problem.py --calibrate on development seeds and the validation noise only "
                       "(provenance.fitted_on).")
    keep = [e for e in record.get("entries", [])
            if entry_prompt(e) != entry_prompt(entry)
            or any(e.get("conditions", {}).get(k) != entry["conditions"].get(k) for k in (*MATCH_KEYS, STEPS_KEY))]
    record["entries"] = [*keep, dict(entry)]
    path.write_text(json.dumps(record, indent=2) + "\n")
