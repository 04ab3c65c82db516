"""Tune on validation, report on test: no tuning code path reads the test split, and the λ bilevel method's own
guided generation is part of its timed trial (its cost), not of the reporting evaluation.

The guard (:func:`_forbid_test`) makes every way into the test split raise, and runs: each task's estimator paths at
smoke size (the smoke defaults, the quick preset's estimator settings, the noise schedule's surrogate and Gaussian ZO
paths), every harness method's trials in-process (searchers, PBT's checkpoint exploit, actor reuse), and the β0
calibration script (tools/lambda_problem.py), which must read only the validation noise of development seeds."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ray_bilevel.benchmark.methods import offered_methods
from ray_bilevel.protocol import BENCHMARK_SEEDS, MIN_DEVELOPMENT_SEED
from ray_bilevel.tasks import get_task

REPO = Path(__file__).resolve().parent.parent


class SplitReadError(AssertionError):
    pass


def _noise_schedule_test_seeds(seeds=BENCHMARK_SEEDS) -> set[int]:
    """The seeds of the noise schedule's test-split noise (domain and final samples) for ``seeds``, read off
    ``NoiseScheduleTask._noise`` itself (so a change of its formula moves the guard with it)."""
    import ray_bilevel.tasks.noise_schedule.task as ns_task
    from ray_bilevel.tasks.noise_schedule.settings import NoiseScheduleSettings

    drawn: list[int] = []
    real = ns_task.initial_noise
    ns_task.initial_noise = lambda n, shape, seed: drawn.append(int(seed))  # type: ignore[assignment]
    try:
        for seed in seeds:
            fake = SimpleNamespace(cfg=SimpleNamespace(eval_seed=NoiseScheduleSettings.eval_seed, seed=seed,
                                                       eval_samples=-1), eval_noise=None, shape=(1, 2, 2))
            for kind in ("domain", "final"):
                ns_task.NoiseScheduleTask._noise(fake, 1, "test", kind)
    finally:
        ns_task.initial_noise = real
    return set(drawn)


def _forbid_test(monkeypatch) -> None:
    """Make every way into the test split raise: real test images, the test noise / reference seeds, and the seeded
    noise of the noise schedule's test evaluation (by split, and by its seeds wherever it would be drawn)."""
    import ray_bilevel.tasks.noise_schedule.task as ns_task
    from ray_bilevel.tasks.noise_schedule.evaluation import UpperMetrics
    from ray_bilevel.tasks.reward_lambda.backends import DigitsBackend
    from ray_bilevel.tasks.reward_lambda.task import RewardLambdaTask

    real, noise_seed, real_images = UpperMetrics.real, RewardLambdaTask._noise_seed, DigitsBackend.real_images
    ns_noise, initial_noise = ns_task.NoiseScheduleTask._noise, ns_task.initial_noise
    test_seeds = _noise_schedule_test_seeds()

    def guarded_real(self, split):
        if split == "test":
            raise SplitReadError("noise_schedule read its test images")
        return real(self, split)

    def guarded_seed(self, split, *parts):
        if split == "test":
            raise SplitReadError("reward_lambda drew its test noise or reference set")
        return noise_seed(self, split, *parts)

    def guarded_images(self, cfg, split):
        if split == "test":
            raise SplitReadError("reward_lambda read its test digits")
        return real_images(self, cfg, split)

    def guarded_ns_noise(self, n, split, kind="domain"):
        if split == "test":
            raise SplitReadError("noise_schedule drew its test noise")
        return ns_noise(self, n, split, kind)

    def guarded_initial_noise(n, shape, seed):
        if int(seed) in test_seeds:
            raise SplitReadError(f"noise_schedule drew its test noise (seed {seed})")
        return initial_noise(n, shape, seed)

    monkeypatch.setattr(UpperMetrics, "real", guarded_real)
    monkeypatch.setattr(RewardLambdaTask, "_noise_seed", guarded_seed)
    monkeypatch.setattr(DigitsBackend, "real_images", guarded_images)
    monkeypatch.setattr(ns_task.NoiseScheduleTask, "_noise", guarded_ns_noise)
    monkeypatch.setattr(ns_task, "initial_noise", guarded_initial_noise)


def _quick_estimators(name: str) -> dict[str, Any]:
    """The quick preset's estimator settings at smoke size: its keys that the smoke preset does not size."""
    if name == "noise_schedule":
        from ray_bilevel.tasks.noise_schedule.settings import PRESETS
    else:
        from ray_bilevel.tasks.reward_lambda.settings import PRESETS
    return {k: v for k, v in PRESETS["quick"].items() if k not in PRESETS["smoke"]}


#: Every estimator path of the tasks at smoke size. The noise schedule's smoke default is the ZO penalty (z_fid_grad
#: "zo"), its quick preset z copied from y with SM-only steps; "surrogate" is the differentiable-FID penalty
#: (surrogate.py), "cg" its γ → ∞ limit by conjugate gradients, and "gaussian" the paper's ZO schedule gradient.
#: The λ task: the exact and the released (33) estimators on fresh and fixed pools.
PATHS = [
    ("noise_schedule", {}),
    ("noise_schedule", _quick_estimators("noise_schedule")),
    ("noise_schedule", {"z_fid_grad": "surrogate"}),
    ("noise_schedule", {"z_fid_grad": "surrogate", "surrogate_covariance": "diagonal", "zo_q_estimator": "gaussian"}),
    ("noise_schedule", {"z_fid_grad": "surrogate", "z_solve": "cg", "cg_iters": 3}),
    ("reward_lambda", _quick_estimators("reward_lambda")),
    ("reward_lambda", {"method": "paper", "pool": "fixed"}),
    ("weighted_sum", _quick_estimators("reward_lambda")),
]


@pytest.mark.parametrize("name, extra", PATHS, ids=[f"{n}-{json.dumps(e, sort_keys=True)}" for n, e in PATHS])
def test_no_tuning_path_reads_the_test_split(name, extra, monkeypatch):
    _forbid_test(monkeypatch)
    task = get_task(name)({"preset": "smoke", "seed": 0, **extra})
    for _ in range(2):
        task.hyper_step()
        task.lower_step()
        task.evaluate()
    final = task.evaluate(final=True)
    key = task.tuning_metric()
    assert key.endswith("_val") and key in final
    assert not any(k in final for k in (task.metric, "fid", "is"))  # test values are never in a tuning report
    with pytest.raises(SplitReadError):  # the guard is real: reporting does read the test split
        task.evaluate_test(full=False)


def test_the_noise_schedule_test_noise_guard_is_real(monkeypatch):
    """Reporting draws the test noise; the guard stops it both through ``_noise`` and at the seed itself."""
    import ray_bilevel.tasks.noise_schedule.task as ns_task

    task = get_task("noise_schedule")({"preset": "smoke", "seed": 0})
    seed = min(_noise_schedule_test_seeds([0]))
    # no seed's test noise is another seed's validation noise (development seeds included)
    assert not _noise_schedule_test_seeds(range(200)) & {task.cfg.eval_seed + 7919 * s for s in range(200)}
    _forbid_test(monkeypatch)
    with pytest.raises(SplitReadError, match="test noise"):
        task.samples(4, "test")
    with pytest.raises(SplitReadError, match=f"seed {seed}"):
        ns_task.initial_noise(4, task.shape, seed)  # a path that computed the test seed by itself


# -- every harness method's trials, in-process -----------------------------------------------------------------------
def _is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}


def _trial_configs(spec: Any, n: int, seed: int = 0):
    """Yield up to ``n`` trial configs as the method's Tuner would start them, and take each trial's last report
    back (``generator.send``) for the searcher; no Ray: grid values, sampled domains or ``search_alg.suggest``."""
    import numpy as np
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.sample import Domain

    consts = {k: v for k, v in spec.param_space.items() if not isinstance(v, Domain) and not _is_grid(v)}
    searched = {k: v for k, v in spec.param_space.items() if k not in consts}
    rng = np.random.RandomState(seed)
    if spec.search_alg is None or isinstance(spec.search_alg, BasicVariantGenerator):
        for i in range(n):
            hyper = {k: (v["grid_search"][i % len(v["grid_search"])] if _is_grid(v) else v.sample(random_state=rng))
                     for k, v in searched.items()}
            yield {**consts, **hyper}
        return
    for i in range(n):
        hyper = spec.search_alg.suggest(f"t{i}")
        if not isinstance(hyper, dict):  # finished (a greedy pass shorter than n) or nothing to suggest
            return
        result = yield {**consts, **hyper}
        spec.search_alg.on_trial_complete(f"t{i}", result=result)


def _until_done(trainable: Any, forbidden: set[str]) -> dict[str, Any]:
    while True:
        report = trainable.train()
        leaked = forbidden & set(report)
        assert not leaked, f"a trial reported test values {sorted(leaked)}"
        if report["done"]:
            return report


#: The harness's methods on both paper tasks (each task's baselines and own methods, and every generic method).
HARNESS = [(task, method) for task in ("reward_lambda", "noise_schedule") for method in offered_methods(task)]


@pytest.mark.parametrize("task_name, method", HARNESS, ids=[f"{t}-{m}" for t, m in HARNESS])
def test_every_harness_method_trial_stays_off_the_test_split(task_name, method, monkeypatch, tmp_path):
    """Each method's trials as compare.py starts them (build_experiment's trainable, constants and searcher), run
    in-process at smoke size with the test split forbidden: two trials for a searcher (the second one on a reused
    actor, after the searcher saw the first one's report), PBT's and PB2's exploit through a checkpoint. (In-process,
    because a monkeypatch does not reach Ray's worker processes; the trainables are the ones Tune runs.)"""
    from ray.tune.schedulers import PopulationBasedTraining

    from ray_bilevel.benchmark.methods import build_experiment
    from ray_bilevel.benchmark.trainables import trainable_class
    from ray_bilevel.tasks import task_ref

    _forbid_test(monkeypatch)
    cls = get_task(task_name)
    base = {"task": task_ref(task_name), "preset": "smoke", "seed": 0}
    spec = build_experiment(task_name, method, base, cls.tuning_metric(), cls.mode, trials=2,
                            budget=cls.benchmark.budget("smoke"), seed=0, max_concurrent=1)
    trial_cls = get_task(spec.trial_task or task_name)
    forbidden = {trial_cls.metric, cls.metric, "fid", "is"}
    trainable_cls = trainable_class(spec.bilevel, spec.param_space)
    configs = _trial_configs(spec, 1 if method in ("default", "bilevel") else 2)
    config, trainable, checkpoint, ran = next(configs), None, None, 0
    while True:
        if trainable is None:
            trainable = trainable_cls(config=config)
        else:
            assert trainable.reset(config)  # actor reuse: the next trial on the same actor
        if checkpoint is not None:  # PBT's exploit: the second trial continues the first one's checkpoint
            trainable.load_checkpoint(checkpoint)
        elif isinstance(spec.scheduler, PopulationBasedTraining):  # pbt, pb2
            assert not forbidden & set(trainable.train())
            trainable.save_checkpoint(str(tmp_path))
            checkpoint = str(tmp_path)
        last = _until_done(trainable, forbidden)
        assert spec.metric in last and spec.metric.endswith("_val")
        ran += 1
        try:
            config = configs.send(last)
        except StopIteration:
            break
    trainable.stop()
    assert ran >= 1


def test_trainables_never_report_test_values_unless_asked(ray_local, tmp_path, monkeypatch):
    from ray import tune

    from ray_bilevel import BilevelTrainable

    analysis = tune.run(BilevelTrainable, config={"task": "noise_schedule", "preset": "smoke", "seed": 0},
                        stop={"done": True}, storage_path=str(tmp_path), verbose=0)
    last = analysis.trials[0].last_result
    assert "fid_domain_val" in last and "fid_domain" not in last and last["cpu_s"] > 0


def test_lambda_bilevel_generation_is_inside_its_timed_trial():
    """The λ bilevel answer is a guided generation at the learned λ: its last step makes it (booked in ``cpu_s``)."""
    from ray_bilevel.benchmark.trainables import BenchBilevelTrainable

    trainable = BenchBilevelTrainable(config={"task": "reward_lambda", "preset": "smoke", "seed": 0})
    reports = []
    while not (reports and reports[-1]["done"]):
        reports.append(trainable.train())
    c = trainable.task.cfg
    assert reports[0]["guided_images"] == 0  # between λ steps: no generation yet
    assert reports[-1]["guided_images"] == c.guide_batch * c.repeats and "alignment_val" in reports[-1]
    assert reports[-1]["cpu_s"] > reports[0]["cpu_s"] > 0
    generated = trainable.task._guided_images()
    assert generated is not None and len(generated) == c.guide_batch * c.repeats
    trainable.stop()


# -- the β0 calibration script ----------------------------------------------------------------------------------------
def _lambda_problem():
    spec = importlib.util.spec_from_file_location(
        "_lambda_problem_under_test", REPO / "tools" / "lambda_problem.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: A few seconds of calibration: smoke sampler, 4 images per seed and λ, three λ a decade apart.
CALIBRATION_ARGS = [
    "--preset",
    "smoke",
    "--beta0",
    "0.01",
    "--pool",
    "48",
    "--min-ess",
    "4",
    "--lams",
    "0.4642,4.642,46.42",
]


@pytest.mark.slow
def test_calibration_reads_only_the_validation_noise_of_development_seeds(monkeypatch, tmp_path):
    """``lambda_problem.py --calibrate`` runs with the test split forbidden, writes an entry that names its split and
    seeds (and command, commit), and the task reads it; the test split and benchmark seeds are refused."""
    from ray_bilevel.models.cond_unet import COND_UNET_DIR
    from ray_bilevel.tasks.reward_lambda import RewardLambdaTask
    from ray_bilevel.tasks.reward_lambda.calibration import calibration_path, load_calibrations, provenance_problem

    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        shutil.copy(COND_UNET_DIR / name, tmp_path / name)
    lp = _lambda_problem()
    _forbid_test(monkeypatch)
    lp.main([*CALIBRATION_ARGS, "--calibrate", "--seeds", "100-101", "--set", f"model_path={tmp_path}",
             "--out", str(tmp_path / "cal.json")])
    (entry,) = load_calibrations(calibration_path(tmp_path))
    fitted, prov = entry["provenance"]["fitted_on"], entry["provenance"]
    assert fitted["split"] == "val" and fitted["seeds"] == [100, 101] and provenance_problem(entry) is None
    assert "--calibrate" in prov["command"] and "commit" in prov and entry["beta0"] > 0
    task = RewardLambdaTask({"preset": "smoke", "seed": 0, "model_path": str(tmp_path)})
    assert task.beta0 == entry["beta0"]
    # another prompt gets its own β0 and stroke target, from the same development data, keyed by its prompt
    from ray_bilevel.tasks.reward_lambda.stroke_target import load_stroke_targets

    lp.main([*CALIBRATION_ARGS, "--calibrate", "--seeds", "100-101", "--set", f"model_path={tmp_path}",
             "--set", "prompt=a handwritten 3", "--out", str(tmp_path / "cal3.json")])
    entries = {e["conditions"]["prompt"]: e for e in load_calibrations(calibration_path(tmp_path))}
    targets = {r["conditions"]["prompt"]: r for r in load_stroke_targets(calibration_path(tmp_path))}
    assert set(entries) == set(targets) == {"a handwritten 7", "a handwritten 3"} and entries["a handwritten "
                                                                                              "7"] == entry
    for record in (*entries.values(), *targets.values()):
        assert min(record["provenance"]["fitted_on"]["seeds"]) >= MIN_DEVELOPMENT_SEED
    three = RewardLambdaTask({"preset": "smoke", "seed": 0, "model_path": str(tmp_path), "prompt": "a handwritten 3"})
    assert three.beta0 == entries["a handwritten 3"]["beta0"]
    assert three.cfg.ink_target == targets["a handwritten 3"]["ink_target"]
    with pytest.raises(SplitReadError):  # the guard is real: the F(λ) table on the test noise reads the test split
        lp.run({"preset": "smoke", "beta0": 0.01}, 48, 4.0, tmp_path / "t.pt", seeds=[0], split="test",
               lams=[0.4642, 4.642])
    for bad in (
        ["--split", "test"],
        ["--seeds", "0-4"],
        ["--seeds", f"{MIN_DEVELOPMENT_SEED - 1},{MIN_DEVELOPMENT_SEED}"],
    ):
        with pytest.raises(SystemExit) as exc:
            lp.main([*CALIBRATION_ARGS, "--calibrate", *bad, "--out", str(tmp_path / "refused.json")])
        assert exc.value.code == 2, bad
    assert not (tmp_path / "refused.json").exists()


def test_shipped_calibration_names_the_validation_split_and_development_seeds():
    from ray_bilevel.tasks.reward_lambda.calibration import calibration_path, load_calibrations, provenance_problem

    entries = load_calibrations(calibration_path())
    assert entries
    for entry in entries:
        fitted, prov = entry["provenance"]["fitted_on"], entry["provenance"]
        assert fitted["split"] == "val" and fitted["split"] != "test"
        assert min(fitted["seeds"]) >= MIN_DEVELOPMENT_SEED and not set(fitted["seeds"]) & set(BENCHMARK_SEEDS)
        assert provenance_problem(entry) is None
        assert "--calibrate" in prov["command"] and len(prov["commit"]) == 40


def test_calibration_entries_fitted_on_test_or_benchmark_seeds_are_refused(tmp_path):
    from ray_bilevel.config import ConfigError
    from ray_bilevel.models.cond_unet import COND_UNET_DIR
    from ray_bilevel.tasks.reward_lambda import RewardLambdaTask
    from ray_bilevel.tasks.reward_lambda.calibration import CALIBRATION_FILE, write_calibration

    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        shutil.copy(COND_UNET_DIR / name, tmp_path / name)
    cond = {"prompt": "a handwritten 7", "reward": "ink", "y_star": 100.0, "target": "fixed", "reduction": "sum",
            "cfg_scale": 1.0, "steps": 4}
    config = {"preset": "smoke", "seed": 0, "model_path": str(tmp_path), "ink_target": 18.0}
    for fitted in (
        {"split": "test", "seeds": [100]},
        {"split": "val", "seeds": [0]},
        {"split": "val", "seeds": [99, 100]},
    ):
        write_calibration(tmp_path / CALIBRATION_FILE,
                          {"conditions": cond, "beta0": 0.01, "provenance": {"fitted_on": fitted}})
        with pytest.raises(ConfigError, match="development seeds >= 100"):
            RewardLambdaTask(config)
    write_calibration(tmp_path / CALIBRATION_FILE, {"conditions": cond, "beta0": 0.01})  # records nothing: a warning
    with pytest.warns(UserWarning, match="records no split and seeds"):
        task = RewardLambdaTask(config)
    assert task.beta0 == 0.01 and "unrecorded data" in task.beta0_source
    assert RewardLambdaTask({**config, "beta0": 0.02}).beta0 == 0.02  # an explicit β0 needs no calibration
