"""Algorithm 6 task (noise_schedule), smoke preset: the "Done when" list of issue 3 and docs/algorithms.md §3.4."""
from __future__ import annotations

import io
import json
import math

import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.tasks import get_task
from ray_bilevel.tasks.noise_schedule import NoiseScheduleTask

pytestmark = [pytest.mark.filterwarnings("ignore:FID with"), pytest.mark.filterwarnings("ignore:noise_schedule. "
                                                                                        "projected:UserWarning")]


def smoke(seed: int = 0, **over) -> NoiseScheduleTask:
    return NoiseScheduleTask({"task": "noise_schedule", "preset": "smoke", "seed": seed, **over})


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
def test_registered_and_budgets():
    assert get_task("noise_schedule") is NoiseScheduleTask
    task = smoke()
    c = task.cfg
    assert task.outer_budget == 3 and task.lower_budget == 1 * 2 + 2 * 2
    assert task.hyperparameters() == {"start": 0.0, "end": 1.0, "tau": 1.0, "eps": 0.008}
    for _ in range(task.outer_budget):
        task.hyper_step()
    assert task.lower_steps == task.lower_budget  # the fixed-schedule baseline trains exactly as long
    fixed = smoke(tau=1.2)
    assert fixed.hyperparameters()["tau"] == 1.2
    for _ in range(fixed.lower_budget):
        out = fixed.lower_step()
    assert fixed.hyperparameters()["tau"] == 1.2 and out["samples_seen"] == task.lower_budget * c.batch_size


def test_one_outer_step_changes_q_and_keeps_it_feasible():
    task = smoke(seed=1, tau=1.3, start=0.05, end=0.95)
    q0 = task.hyperparameters()
    warm = task.hyper_step()  # warm-up: no hyperparameter update
    assert warm["warmup"] == 1.0 and task.hyperparameters() == q0
    out = task.hyper_step()
    q1 = task.hyperparameters()
    assert q1 != q0 and out["hypergrad_norm"] > 0 and math.isfinite(out["hypergrad_norm"])
    task.schedule.check_feasible()
    for name, (lo, hi) in task.schedule.bounds.items():
        assert lo <= q1[name] <= hi
    assert q1["end"] > q1["start"]
    # each parameter moved by at most its hyper learning rate (Adam's first step is ~lr * sign)
    for name in q0:
        assert abs(q1[name] - q0[name]) <= getattr(task.cfg, f"lr_{name}") * 1.001
    assert float(task.schedule.alphas_cumprod()[-1]) <= 1e-3


def test_penalty_network_is_really_updated_and_separate():
    task = smoke(seed=2)
    task.hyper_step()
    y_before = [p.detach().clone() for p in task.y.parameters()]
    out = task.hyper_step()
    assert out["zy_distance"] > 0 and not params_equal(task.z, task.y)
    assert all(p is q for p, q in zip(task.opt_z.param_groups[0]["params"], task.z.parameters()))
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(task.z.parameters(), task.y.parameters()))
    # the z steps and the schedule step never touch y; only y's own inner steps do
    y_after = list(task.y.parameters())
    assert sum(float((a - b).abs().sum()) for a, b in zip(y_before, y_after)) > 0
    z_state = [p.detach().clone() for p in task.z.parameters()]
    task._penalty_steps(task._alphas(), task.last_x0, 1.0)  # z_init="previous": z keeps its own state and moves
    assert any(not torch.equal(a, b) for a, b in zip(z_state, task.z.parameters()))


def test_copy_y_initialisation_is_in_place():
    task = smoke(seed=2, z_init="copy_y", z_fid_grad="none")
    task.hyper_step()
    ids = [id(p) for p in task.z.parameters()]
    task.hyper_step()
    assert [id(p) for p in task.z.parameters()] == ids
    assert 0 < task.hyper_step()["zy_distance"] < 1.0  # z = y + one SM step


def test_z_warm_start_carries_y_optimizer_state_and_cooldown_freezes_q():
    task = smoke(seed=2, z_init="copy_y", z_fid_grad="none", outer_steps=4, cooldown_outer=1)
    assert task.lower_budget == 2 + 3 * 2
    task.hyper_step()
    task.hyper_step()
    y_step = next(iter(task.opt_y.state.values()))["step"]
    z_step = next(iter(task.opt_z.state.values()))["step"]
    assert float(z_step) == float(y_step) + 1  # copied from y, then one penalty step
    task.hyper_step()
    q = task.hyperparameters()
    out = task.hyper_step()  # the cool-down step trains y only
    assert out["cooldown"] == 1.0 and out["hypergrad_norm"] == 0.0 and task.hyperparameters() == q
    assert task.lower_steps == task.lower_budget


def test_coordinate_zo_is_exact_on_linear_functions_and_respects_the_box():
    from ray_bilevel.estimators.zeroth_order import coordinate_zo

    a = torch.tensor([1.5, -2.0, 0.25, 3.0], dtype=torch.float64)
    calls = []

    def f(x):
        calls.append(x.clone())
        return float(a @ x + 0.5 * (x**2).sum())

    x = torch.tensor([0.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    lower, upper = [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.2]
    res = coordinate_zo(f, x, 1e-3, lower, upper)
    assert all(bool(((c >= torch.tensor(lower)) & (c <= torch.tensor(upper) + 1e-12)).all()) for c in calls)
    exact = a + x
    # central differences are exact for quadratics; one-sided ones (coordinates 0, 1, 3 sit on a bound) are O(mu)
    assert abs(float(res.grad[2] - exact[2])) < 1e-9
    assert torch.allclose(res.grad, exact, atol=1e-3)
    assert res.evaluations == 2 * 4 and len(calls) == 1 + 3 + 2  # f(x) once, shared by the one-sided coordinates
    assert torch.equal(coordinate_zo(lambda v: 7.0, x, 1e-3, lower, upper).grad, torch.zeros(4, dtype=torch.float64))


def test_h_z_minus_h_y_is_exactly_zero_when_z_equals_y():
    task = smoke(seed=3)
    task.hyper_step()
    task.z.load_state_dict(task.y.state_dict())
    x0 = task.last_x0
    t, noise = task._draw_t_noise(x0, torch.Generator().manual_seed(0))
    h_y, h_z = task.sm_schedule_gradients(x0, t, noise)
    assert torch.equal(h_y, h_z) and float(h_y.abs().sum()) > 0
    task.hyper_step()  # now z != y
    h_y, h_z = task.sm_schedule_gradients(x0, t, noise)
    assert not torch.equal(h_y, h_z)


@pytest.mark.parametrize("estimator", ["coordinate", "gaussian"])
def test_zo_estimate_is_exactly_zero_when_fid_is_constant_along_the_direction(estimator):
    """Common random numbers: with q ignored by the sampler, the ± FIDs are identical, so the estimate is 0."""
    task = smoke(seed=4, zo_directions=3, zo_q_estimator=estimator)
    task.hyper_step()
    fixed_alphas = task._alphas()
    task._alphas_of = lambda qv: fixed_alphas  # f(q) constant in every direction
    before = task.hyperparameters()
    h = task.sm_schedule_gradients  # keep the penalty term out of the check
    task.sm_schedule_gradients = lambda *a: (torch.zeros(4, dtype=torch.float64),) * 2
    out = task._schedule_step(task.last_x0, 1.0)
    assert out["zo_grad_norm"] == 0.0 and out["hypergrad_norm"] == 0.0
    assert task.hyperparameters() == before  # Adam with a zero gradient does not move q
    # control: fresh noise for each evaluation (no common random numbers) gives a nonzero estimate
    task._zo_noise_crn = task._zo_noise
    task._fid_orig = task._fid
    task._fid = lambda model, alphas, x_T: task._fid_orig(model, alphas, task._zo_noise_crn())
    assert task._schedule_step(task.last_x0, 1.0)["zo_grad_norm"] > 0
    task.sm_schedule_gradients = h


def test_seeded_runs_repeat_exactly_and_seeds_differ():
    a, b = smoke(seed=7), smoke(seed=7)
    for _ in range(2):
        assert a.hyper_step() == b.hyper_step()
    assert a.hyperparameters() == b.hyperparameters()
    assert a.evaluate() == b.evaluate()
    c = smoke(seed=8)
    c.hyper_step()
    assert c.hyper_step() != smoke(seed=7).hyper_step()


@pytest.mark.slow
def test_checkpoint_mid_run_continues_identically():
    a = smoke(seed=5)
    a.hyper_step()
    a.hyper_step()
    state = roundtrip(a.state_dict())
    b = smoke(seed=5)
    b.load_state_dict(state)
    assert b.hyperparameters() == a.hyperparameters()
    assert a.hyper_step() == b.hyper_step()
    assert a.lower_step() == b.lower_step()
    assert params_equal(a.y, b.y) and params_equal(a.z, b.z) and a.hyperparameters() == b.hyperparameters()
    assert a.evaluate() == b.evaluate()
    with pytest.raises(ConfigError, match="not a noise_schedule task state"):
        b.load_state_dict({"format": "other"})


@pytest.mark.slow
def test_evaluate_final_reports_and_export(tmp_path):
    task = smoke(seed=0)
    for _ in range(task.outer_budget):
        task.hyper_step()
    assert set(task.evaluate(final=True)) == {"fid_domain_val", "abar_t10", "abar_t25", "abar_t50", "abar_t75",
                                              "abar_t90"}  # tuning reads validation values only
    out = task.evaluate_test()
    for key in ("fid_domain", "fid", "is", "fid_domain_val", "fid_val", "is_val", "abar_t10", "abar_t50", "abar_t90"):
        assert key in out and math.isfinite(out[key]), key
    assert 1.0 <= out["is"] <= 10.0 and out["fid"] > 0 and out["fid_domain"] != out["fid_domain_val"]
    task.export(str(tmp_path))
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(str(tmp_path / "scheduler"))
    assert float((sched.alphas_cumprod.double() - task.schedule.alphas_cumprod().detach()).abs().max()) < 1e-6
    record = json.loads((tmp_path / "noise_schedule.json").read_text())
    assert record["schedule"]["parameterisation"] == "chen2023" and len(record["trajectory"]) == 2
    assert (tmp_path / "samples.png").stat().st_size > 0


def test_set_hyperparameters_in_place_and_sigmoid_paper_form():
    task = smoke(family="sigmoid", parameterisation="paper")
    assert task.hyperparameters() == {"start": -3.0, "end": 3.0, "tau": 1.0, "eps": 0.0}
    tau = task.schedule.tau
    task.set_hyperparameters({"tau": 0.8})
    assert task.schedule.tau is tau and task.hyperparameters()["tau"] == 0.8
    task.hyper_step()
    task.hyper_step()
    task.schedule.check_feasible()


@pytest.mark.parametrize(
    "over,match",
    [
        ({"warmup_outer": 9}, "warmup_outer"),
        ({"z_init": "fresh"}, "z_init"),
        ({"dataset": "mnist"}, "data_root"),
        ({"lam": 1.0}, "unknown config key 'lam'"),
        ({"start": 0.9, "end": 0.4}, "`end` must be > `start`"),
        ({"zo_steps": 200}, "cannot exceed T"),
        ({"z_fid_grad": "autograd"}, "z_fid_grad"),
        ({"z_fid_grad": "surrogate", "surrogate_steps": 200}, "cannot exceed T"),
        ({"z_fid_grad": "surrogate", "surrogate_samples": 1}, "surrogate_samples"),
        ({"z_fid_grad": "surrogate", "surrogate_shrinkage": 0.0}, "singular"),
    ],
)
def test_config_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        smoke(**over)


@pytest.mark.slow
def test_tune_run_smoke_completes_offline(ray_local, tmp_path):
    from ray import tune

    from ray_bilevel import BilevelTrainable

    analysis = tune.run(BilevelTrainable, config={"task": "noise_schedule", "preset": "smoke", "seed": 0},
                        stop={"training_iteration": 2}, storage_path=str(tmp_path), verbose=0)
    last = analysis.trials[0].last_result
    for key in (
        "fid_domain_val",
        "start",
        "end",
        "tau",
        "eps",
        "abar_t50",
        "hypergrad_norm",
        "lower_loss",
        "samples_seen",
        "cpu_s",
    ):
        assert key in last, key


@pytest.mark.slow
def test_surrogate_penalty_keeps_the_other_variants_streams_and_checkpoints():
    """z_fid_grad="surrogate": y' takes z's SM steps (same draws), h_y is taken at y'; "none" is unchanged by the
    option, and a checkpoint taken between outer steps continues identically (y' is rebuilt from y at every bilevel
    step)."""
    task = smoke(seed=6, z_fid_grad="surrogate", z_init="copy_y", gamma=1e3, gamma_end=1e3, outer_steps=4)
    task.hyper_step()
    out = task.hyper_step()
    assert out["zref_distance"] > 0 and out["zy_distance"] > 0 and "ref_surrogate_after" in out
    y_ref_step = next(iter(task.surrogate_penalty.opt_ref.state.values()))["step"]
    assert float(y_ref_step) == float(next(iter(task.opt_z.state.values()))["step"])  # the same number of AdamW steps
    state = roundtrip(task.state_dict())
    twin = smoke(seed=6, z_fid_grad="surrogate", z_init="copy_y", gamma=1e3, gamma_end=1e3, outer_steps=4)
    twin.load_state_dict(state)
    a, b = task.hyper_step(), twin.hyper_step()
    assert a["hypergrad_norm"] == b["hypergrad_norm"] and task.hyperparameters() == twin.hyperparameters()
    # the option is inert for the other variants
    plain, flagged = smoke(seed=6, z_fid_grad="none"), smoke(seed=6, z_fid_grad="none", surrogate_reference=False)
    for _ in range(2):
        assert plain.hyper_step()["hypergrad_norm"] == flagged.hyper_step()["hypergrad_norm"]
