"""Application 1 as Tasks: the entropy strength λ of reward-guided sampling (Algorithms 2 and 5).

docs/algorithms.md §2, docs/reward_lambda.md. Problem (9): the lower level tilts the pre-trained model
towards the reward r2, ``p*_λ ∝ p_data · exp(r2/λ)``, realised by gradient-guided sampling (Algorithm 5,
strength β = β0/λ, β0 calibrated so that the sampler draws p*_λ: :mod:`.calibration`); the upper level maximises
the mean of a per-sample score r1 of those samples (offline default ``upper="stroke_target"``: recognisable AND at
the target stroke weight; ``upper="alignment"``: the prompt alignment alone, as in the paper).

:class:`RewardLambdaTask` (``"reward_lambda"``), metric ``alignment`` (mode ``max``, i.e. minimise −alignment):

* ``hyper_step()`` — one iteration of Algorithm 2: draw ``pool_size`` pre-trained samples (a fresh pool each
  iteration by default, ``pool="fixed"`` reuses one), score r1 and r2, compute ∇F_γ(λ) in closed form
  (``method="exact"`` by default, ``"paper"`` = eq. (33)) and take the projected step λ ← max(λ − η ĝ, λ_min).
* ``lower_step()`` — one round of Algorithm 5 for one batch at the current λ; ``lower_budget`` = rounds × repeats
  rounds make one complete guided generation (the fixed-λ trial of the searchers).
* ``evaluate(final)`` — if guided images exist at the current λ: ``alignment`` and ``reward`` (means of r1, r2),
  ``fid_domain`` (digit-classifier features, guided vs pre-trained samples) and ``fid_domain_real`` (vs held-out
  real digits of the prompt's class). Otherwise (a bilevel run between λ steps) ``alignment`` and ``reward`` are
  self-normalised importance-weighted estimates of ``E_{p*_λ}[r1]``, ``E_{p*_λ}[r2]`` on the fixed pre-trained
  reference set, with ``guided_images = 0``. ``final=True`` first completes the guided generation at the current
  λ, then adds ``fid`` (Inception, guided vs pre-trained samples: the paper's measure, docs/algorithms.md §4).

The guided generation of Algorithm 5 (``lower_step``, the evaluation noise of each split) is
:class:`~ray_bilevel.tasks.reward_lambda.generation.GuidedGeneration`, the task's base class.

Units: with the offline model ``alignment`` (the mean of r1, the upper objective) is 100 · p_classifier(prompt
digit | x) (percent, the CLIP-score scale), times the ink window ``exp(−½((ink − ink_target)/ink_scale)²)`` with
``upper="stroke_target"`` (then ``prompt_alignment`` reports the class alignment alone); ``reward`` is ink in percent
of a fully inked canvas. Every report also carries ``lam``.

:class:`~ray_bilevel.tasks.reward_lambda.weighted_sum.WeightedSumTask` (``"weighted_sum"``, a baseline this task
offers; docs/algorithms.md §5): guidance on ``r2 + w · r1`` at a fixed λ,
the weight ``w`` being the searched variable. It has no hypergradient: its ``hyper_step`` performs one guided
round (the same work as ``lower_step``) and never moves ``w``, so under BilevelTrainable it is a fixed-w run.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ray_bilevel.config import ConfigError, resolve
from ray_bilevel.cost import once
from ray_bilevel.estimators.entropy_lambda import (
    lambda_hypergradient,
    lambda_statistics,
    project_lambda,
    propose_lambda,
)
from ray_bilevel.metrics.alignment import prompt_to_class
from ray_bilevel.metrics.features import digit_extractor, inception_extractor
from ray_bilevel.metrics.fid import FIDEvaluator
from ray_bilevel.space import SearchSpace
from ray_bilevel.tasks.reward_lambda.backends import make_backend
from ray_bilevel.tasks.reward_lambda.benchmark import SPEC
from ray_bilevel.tasks.reward_lambda.calibration import resolve_beta0
from ray_bilevel.tasks.reward_lambda.generation import GuidedGeneration, stable_seed
from ray_bilevel.tasks.reward_lambda.settings import (
    PRESETS,
    RewardLambdaSettings,
    check_settings,
    lambda_space,
)
from ray_bilevel.tasks.reward_lambda.stroke_target import resolve_ink_target

__all__ = ["RewardLambdaTask"]


class RewardLambdaTask(GuidedGeneration):
    """Algorithm 2 (λ from pre-trained samples) + Algorithm 5 (guided generation at λ) as a Task."""

    name = "reward_lambda"
    metric = "alignment"
    mode = "max"
    selection_metric = "alignment_val"
    settings_cls: type = RewardLambdaSettings
    presets: Mapping[str, Mapping[str, Any]] = PRESETS
    metric_modes = {"alignment": "max", "reward": "max", "fid": "min", "fid_domain": "min", "fid_domain_real": "min"}
    benchmark = SPEC

    @classmethod
    def search_space(cls) -> SearchSpace:
        return lambda_space()

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.cfg: RewardLambdaSettings = resolve(self.settings_cls, self.presets, config)
        cfg: RewardLambdaSettings = self.cfg
        check_settings(cfg)
        if cfg.model == "diffusers":  # a wrong model folder or prompt is the more useful error
            from ray_bilevel.tasks.reward_lambda.diffusers_backend import pipeline_kind

            pipeline_kind(cfg.model_path)
        elif cfg.model == "digits":
            prompt_to_class(cfg.prompt)
        # the stroke target of this model and prompt (stroke_target.py), before the backend builds r1 with it
        try:
            ink_target, self.ink_target_source = resolve_ink_target(cfg)
        except ConfigError:
            make_backend(dataclasses.replace(cfg, upper="alignment"))  # a missing model is the more useful error
            raise
        self.cfg = cfg = dataclasses.replace(cfg, ink_target=ink_target)
        self.backend = make_backend(cfg)  # first: a missing model is the more useful error
        self.beta0, self.beta0_source = resolve_beta0(cfg)
        self.lam = float(cfg.lam)
        self.outer_done = 0
        self.samples_seen = 0
        self.trajectory: list[dict[str, float]] = []
        self._reset_generation()
        self._refs: dict[str, dict[str, torch.Tensor]] = {}
        self._fixed_pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self._evaluators: dict[tuple[str, str], Any] = {}

    # -- the upper variable ------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        return {"lam": self.lam}

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        unknown = set(values) - {"lam"}
        if unknown:
            raise ConfigError(f"unknown hyperparameters {sorted(unknown)} for {self.name}; it has only 'lam'.")
        if "lam" in values:
            lam = float(values["lam"])
            if not (math.isfinite(lam) and lam >= self.cfg.lam_min):
                raise ConfigError(f"lam must be finite and >= lam_min={self.cfg.lam_min}, got {lam}.")
            if lam != self.lam:
                self.lam = lam
                self._reset_generation()

    # -- budgets -------------------------------------------------------------------------------
    @property
    def lower_budget(self) -> int:
        return self.cfg.rounds * self.cfg.repeats

    @property
    def outer_budget(self) -> int:
        return 1 if self.cfg.lam_search == "curve" else self.cfg.outer_steps

    # -- Algorithm 2 ---------------------------------------------------------------------------
    def _pool(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.pool == "fixed" and self._fixed_pool is not None:
            return self._fixed_pool
        seed = stable_seed(self.cfg.seed, "pool", 0 if self.cfg.pool == "fixed" else k)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            x = self.backend.sample(self.backend.noise(self.cfg.pool_size, seed), self.cfg.sample_batch)
            return self.backend.score(self.backend.r1, x), self.backend.score(self.backend.r2, x)

        if self.cfg.pool == "fixed":  # drawn again after a restore (not checkpointed): booked once (cost_flops)
            self._fixed_pool = once(f"fixed_pool:{self.backend.cost_key}:{seed}:{self.cfg.pool_size}", draw)
            return self._fixed_pool
        return draw()

    def _curve_step(self) -> dict[str, float]:
        """λ* from the whole closed-form curve F(λ) on the validation reference set (docs/algorithms.md §2.4): no
        pool beyond the reference set the evaluation draws anyway, no step size; the final evaluation's guided
        generation at λ* verifies it."""
        c, ref = self.cfg, self._reference("val")
        old = self.lam
        best = propose_lambda(ref["r1"], ref["r2"], c.lam_min, max(c.curve_lam_max, 2 * c.lam_min), c.curve_points,
                              c.curve_min_ess)
        self.lam = best["lam"]
        self.outer_done += 1
        self._reset_generation()
        row = {"lam_before": old, "hypergrad": -best["dF"], "hypergrad_norm": abs(best["dF"]), "F_curve": best["F"],
               "ess": best["ess"], "ess_fraction": best["ess_fraction"], "samples_seen": float(self.samples_seen)}
        self.trajectory.append({"outer_step": float(self.outer_done), "lam": self.lam, **row})
        return row

    def hyper_step(self) -> dict[str, float]:
        """One λ iteration of Algorithm 2 (docs/algorithms.md §2.4) from pre-trained samples; no guided sampling
        (``lam_search="curve"``: the whole curve at once, :meth:`_curve_step`)."""
        if self.cfg.lam_search == "curve":
            return self._curve_step()
        c = self.cfg
        a, b = self._pool(self.outer_done)
        grad = lambda_hypergradient(a, b, self.lam, c.gamma, c.method)
        stats = lambda_statistics(a, b, self.lam, c.gamma)
        old = self.lam
        self.lam = project_lambda(old, grad, c.lr_lam, c.lam_min, c.log_space)
        self.outer_done += 1
        self.samples_seen += 0 if (c.pool == "fixed" and self.outer_done > 1) else c.pool_size
        self._reset_generation()
        row = {
            "lam_before": old,
            "hypergrad": grad,
            "hypergrad_norm": abs(grad),
            "F_gamma": stats["F_gamma"],
            "ess": stats["ess"],
            "pool_r1": stats["r1_pool"],
            "pool_r2": stats["r2_pool"],
            "tilted_r1": stats["r1_tilted"],
            "tilted_r2": stats["r2_tilted"],
            "samples_seen": float(self.samples_seen),
            "projected": float(self.lam == c.lam_min),
        }
        self.trajectory.append({"outer_step": float(self.outer_done), "lam": self.lam, **row})
        return row

    def _tilt(self, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        """The exponent's reward of the closed-form target p ∝ p_data e^{tilt/λ} (docs/algorithms.md §2.1): r2."""
        return r2

    # -- evaluation --------------------------------------------------------------------------
    def _reference(self, split: str = "val") -> dict[str, torch.Tensor]:
        """Fixed pre-trained samples of ``split`` and their rewards: FID reference, importance-weighted estimates."""
        if split not in self._refs:
            c = self.cfg
            self._refs[split] = self.backend.reference(c.ref_samples, self._noise_seed(split, "reference"),
                                                       c.sample_batch)
        return self._refs[split]

    def _evaluator(self, kind: str, split: str) -> Any:
        if (kind, split) not in self._evaluators:
            c, ref = self.cfg, self._reference(split)["images"]
            ev: Any
            if kind == "domain":
                ev = FIDEvaluator(digit_extractor(), ref, shrinkage=c.fid_domain_shrinkage)
            elif kind == "domain_real":
                real = self.backend.real_images(c, split)
                ev = None if real is None else FIDEvaluator(
                    digit_extractor(), real, shrinkage=c.fid_domain_shrinkage,
                    cache_key=f"{c.dataset}|{split}|split{c.split_seed}|digit{self.backend.digit}|{real.shape[-1]}px")
            else:
                ev = FIDEvaluator(inception_extractor(allow_download=c.allow_download), ref, shrinkage=c.fid_shrinkage)
            self._evaluators[(kind, split)] = ev
        return self._evaluators[(kind, split)]

    def _fid_ok(self, n: int, dim: int, shrinkage: Any) -> bool:
        return n >= dim + 1 or shrinkage != 0.0

    def _metrics(self, x: torch.Tensor, split: str, suffix: str, inception: bool) -> dict[str, float]:
        """Alignment, reward and the FIDs of guided images ``x`` against ``split``'s references."""
        c = self.cfg
        out = {f"alignment{suffix}": float(self.backend.score(self.backend.r1, x).mean()),
               f"reward{suffix}": float(self.backend.score(self.backend.r2, x).mean())}
        if self.backend.alignment is not self.backend.r1:  # r1 is more than the prompt alignment
            out[f"prompt_alignment{suffix}"] = float(self.backend.score(self.backend.alignment, x).mean())
        if c.model == "digits" and self._fid_ok(len(x), 64, c.fid_domain_shrinkage):
            out[f"fid_domain{suffix}"] = self._evaluator("domain", split)(x.cpu())
            real = self._evaluator("domain_real", split)
            if real is not None:
                out[f"fid_domain_real{suffix}"] = real(x.cpu())
        if inception and c.final_inception and self._fid_ok(len(x), 2048, c.fid_shrinkage):
            out[f"fid{suffix}"] = self._evaluator("inception", split)(x.cpu())
        return out

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Validation metrics (``_val``). Without guided images yet (a bilevel run between λ steps) alignment and
        reward are the importance-weighted estimates of E_{p*_λ}[r1], E_{p*_λ}[r2] on the validation reference set;
        ``final=True`` first completes the guided generation at the current λ (part of the method's cost)."""
        ref = self._reference("val")
        out = {"lam": self.lam, "alignment_pretrained_val": float(ref["r1"].mean()),
               "reward_pretrained_val": float(ref["r2"].mean())}
        if self.cfg.ink_target is not None:  # the stroke target r1 used (derived for the prompt by default)
            out["ink_target"] = float(self.cfg.ink_target)
        if final:
            while not self._generation_complete():
                self.lower_step()
        x = self._guided_images()
        if x is None:  # the closed-form lower-level solution p*_λ on the reference set (docs/algorithms.md §2.1)
            w = torch.softmax(self._tilt(ref["r1"], ref["r2"]) / self.lam, dim=0)
            out.update(alignment_val=float((w * ref["r1"]).sum()), reward_val=float((w * ref["r2"]).sum()),
                       ess=float(1.0 / w.square().sum()), guided_images=0.0)
            return out
        out.update(self._metrics(x, "val", "_val", inception=False), guided_images=float(len(x)))
        return out

    def evaluate_test(self, full: bool = True) -> dict[str, float]:
        """Reporting: the validation generation (completed if needed) with the Inception FID, and a second guided
        generation at the same λ on the test noise, scored against the test reference set and real test digits
        (``full=False``: no Inception FID)."""
        while not self._generation_complete():
            self.lower_step()
        val = self._guided_images()
        assert val is not None  # the generation was just completed
        out = {"lam": self.lam, **self._metrics(val, "val", "_val", inception=full)}
        ref = self._reference("test")
        out.update(self._metrics(self._test_images(), "test", "", inception=full),
                   alignment_pretrained=float(ref["r1"].mean()), reward_pretrained=float(ref["r2"].mean()))
        return out

    def _test_images(self) -> torch.Tensor:
        """The complete guided generation at the current λ on the test noise (computed once per λ)."""
        if self._test is None:
            test = self._new_generation()
            while test["repeat"] < self.cfg.repeats:
                self._advance(test, "test")
            self._test = self._images(test)
        assert self._test is not None
        return self._test

    def test_scores(self) -> dict[str, torch.Tensor]:
        """Per-sample scores of the test-noise generation at the current λ (the images behind ``evaluate_test``'s
        un-suffixed ``alignment`` = mean of ``r1`` and ``reward`` = mean of ``r2``), float64 on the CPU: ``r1``,
        ``r2`` and ``prompt_alignment``. For intervals (standard errors) and paired comparisons across λ: every λ
        uses the same test noise."""
        x, be = self._test_images(), self.backend
        return {"r1": be.score(be.r1, x), "r2": be.score(be.r2, x), "prompt_alignment": be.score(be.alignment, x)}

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        g = self.gen
        return {"lam": self.lam, "outer_done": self.outer_done, "samples_seen": self.samples_seen,
                "trajectory": [dict(r) for r in self.trajectory],
                "gen": {"repeat": g["repeat"], "round": g["round"], "lin": g["lin"], "done": list(g["done"]),
                        "current": g["current"]}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lam = float(state["lam"])
        self.outer_done = int(state["outer_done"])
        self.samples_seen = int(state["samples_seen"])
        self.trajectory = [dict(r) for r in state["trajectory"]]
        g = state["gen"]
        self.gen = {"repeat": int(g["repeat"]), "round": int(g["round"]), "lin": g["lin"], "done": list(g["done"]),
                    "current": g["current"]}
        self._test = None

    def export(self, directory: str) -> None:
        """``reward_lambda.json`` (settings, λ trajectory) and PNG grids of guided and pre-trained samples."""
        from torchvision.utils import save_image

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        record = {"task": self.name, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                                   for k, v in asdict(self.cfg).items()},
                  "beta0": self.beta0, "beta0_source": self.beta0_source,
                  "ink_target": self.cfg.ink_target, "ink_target_source": self.ink_target_source,
                  "user_functions": self.backend.user_score_info(),
                  "hyperparameters": self.hyperparameters(), "trajectory": self.trajectory}
        (path / f"{self.name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        x = self._guided_images()
        if x is not None:
            save_image((x.cpu() + 1) / 2, path / f"{self.name}_guided.png", nrow=int(math.sqrt(len(x))) or 1)
        if "val" in self._refs:
            save_image((self._refs["val"]["images"][:64] + 1) / 2, path / f"{self.name}_pretrained.png", nrow=8)

