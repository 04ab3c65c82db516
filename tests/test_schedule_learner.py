"""ScheduleLearner: the noise-schedule method in the user's own diffusers loop (issue 23; docs/your_own_problem.md).

Unit tests on a tiny random-weight UNet2DModel (seconds): the forward process against its formula and diffusers',
the state round trip, the hypergradient step against an analytic metric (ground truth), the penalty variant, the
bad inputs of docs/bad_inputs.md B80-B90; then the doc's loop as a Tune function trainable (slow).
"""
from __future__ import annotations

import importlib.util
import io
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.schedule_learner import ScheduleLearner, learner_config
from ray_bilevel.schedules import NAMES, alphas_cumprod_from

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "schedule_learner_loop.py"
DOC = REPO / "docs" / "your_own_problem.md"
SECTION = "## A learnable noise schedule in your own training loop"

pytestmark = pytest.mark.filterwarnings("ignore:ScheduleLearner. projected:UserWarning")


def tiny_unet(seed: int = 0, size: int = 8, layers_per_block: int = 1) -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )


def images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


MID = 50  # the toy metric reads abar at this timestep (T = 100)


def abar_sampler(model: torch.nn.Module, alphas: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """A 'sampler' whose output encodes the schedule: every pixel = abar_MID (the analytic toy's images)."""
    return torch.full_like(x_T, float(alphas[MID]))


TARGET = 0.2


def toy_metric(images: torch.Tensor) -> float:
    """f = (abar_MID(q) - TARGET)^2, a function of q alone with a known gradient."""
    return (float(images.mean()) - TARGET) ** 2


def toy_learner(**over: Any) -> ScheduleLearner:
    cfg = {"preset": "smoke", "T": 100, "every": 1, **over}
    return ScheduleLearner(tiny_unet(), None, cfg, sampler=abar_sampler, metric=toy_metric)


def roundtrip(state: Any) -> Any:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_equal(a: Any, b: Any, path: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


# -- the forward process -----------------------------------------------------------------------------------
def test_add_noise_agrees_with_the_formula_and_with_diffusers_at_the_same_betas():
    """At the DDIM default q, add_noise is sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (docs/algorithms.md §1) of the
    schedule's own alphas_cumprod, and DDPMScheduler.add_noise given the learner's betas (its exported DDPM) agrees."""
    learner = toy_learner()
    x0, g = images(6), torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 17, 50, 98, 99])
    noise = torch.randn(x0.shape, generator=g)
    abar = alphas_cumprod_from(torch.tensor([0.0, 1.0, 1.0, 0.008], dtype=torch.float64), "cosine", "chen2023", 100)
    expected = abar[t].sqrt().view(-1, 1, 1, 1) * x0.double() + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * noise.double()
    got = learner.add_noise(x0, noise, t)
    assert got.dtype == x0.dtype and torch.allclose(got.double(), expected, atol=1e-6, rtol=0)
    ddpm = learner.ddpm_scheduler()
    assert torch.allclose(ddpm.add_noise(x0, noise, t), got, atol=1e-5, rtol=0)
    # draw() noises with its own (t, eps) through the same formula, and remembers the batch
    t2, eps2, noisy = learner.draw(x0)
    assert t2.shape == (6,) and int(t2.min()) >= 0 and int(t2.max()) < 100
    assert torch.equal(noisy, learner.add_noise(x0, eps2, t2)) and torch.equal(learner.last_x0, x0)
    # t = T-1 is (almost) pure noise, t = 0 (almost) the data: the schedule is the chen2023 cosine
    assert float(abar[-1]) < 1e-3 and float(abar[0]) > 0.99


def test_draw_repeats_with_the_seed_and_differs_across_seeds():
    x0 = images(4)
    a, b, c = toy_learner(seed=3), toy_learner(seed=3), toy_learner(seed=4)
    da, db, dc = a.draw(x0), b.draw(x0), c.draw(x0)
    assert all(torch.equal(u, v) for u, v in zip(da, db))
    assert not torch.equal(da.noise, dc.noise)


# -- the hypergradient step: ground truth on an analytic metric -----------------------------------------------
def test_hypergradient_step_follows_the_analytic_gradient():
    """f(q) = (abar_50(q) - 0.2)^2: the coordinate ZO estimate (eq. 14 along each coordinate) equals the autograd
    gradient to O(mu^2) (O(mu) one-sided at a bound), Adam's first step moves each free coordinate against its sign,
    and f decreases over steps (docs/algorithms.md §3.3-§3.4)."""
    learner = toy_learner(lr_start=0.01, lr_end=0.01, lr_tau=0.05, lr_eps=0.005)
    learner.draw(images(4))
    q0 = learner.schedule.q.detach().clone().requires_grad_(True)
    f0 = (alphas_cumprod_from(q0, "cosine", "chen2023", 100)[MID] - TARGET) ** 2
    (exact,) = torch.autograd.grad(f0, q0)
    report = learner.hyper_step()
    estimate = torch.tensor([report[f"hypergrad_{n}"] for n in NAMES], dtype=torch.float64)
    assert report["penalty_grad_norm"] == 0.0  # the upper-only variant
    assert torch.allclose(estimate, exact, rtol=0.05, atol=1e-4), (estimate, exact)
    moved = learner.schedule.q.detach() - q0.detach()
    bounds = learner.schedule.bounds
    for j, n in enumerate(NAMES):
        at_bound = (q0[j] == bounds[n][0] and exact[j] > 0) or (q0[j] == bounds[n][1] and exact[j] < 0)
        if abs(float(exact[j])) > 1e-6 and not at_bound:
            assert float(moved[j]) * float(exact[j]) < 0, (n, float(moved[j]), float(exact[j]))
    values = [float(f0.detach())]
    for _ in range(15):
        learner.step()
        values.append(toy_metric(abar_sampler(learner.unet, learner.alphas_cumprod, torch.zeros(1, 1, 8, 8))))
    assert values[-1] < 0.5 * values[0], values


def test_estimate_is_exactly_zero_when_the_metric_ignores_the_schedule():
    """Common random numbers: a metric constant in q gives a zero estimate and Adam does not move q."""
    learner = ScheduleLearner(tiny_unet(), None, {"preset": "smoke", "T": 100, "every": 1},
                              metric=lambda im: float(im.abs().mean()), sampler=lambda m, a, x: x.clamp(-1, 1))
    learner.draw(images(4))
    before = learner.hyperparameters()
    report = learner.hyper_step()
    assert report["zo_grad_norm"] == 0.0 and learner.hyperparameters() == before


def test_step_runs_a_hyper_step_every_k_steps_after_the_warm_up():
    calls: list[dict[str, float]] = []
    learner = ScheduleLearner(tiny_unet(), None, {"preset": "smoke", "T": 100, "every": 3, "warmup_steps": 2},
                              sampler=abar_sampler, metric=toy_metric, callback=calls.append)
    learner.draw(images(4))
    fired = [learner.step() is not None for _ in range(11)]
    assert [i + 1 for i, f in enumerate(fired) if f] == [5, 8, 11]
    assert [c["training_step"] for c in calls] == [5.0, 8.0, 11.0] and calls[-1]["hyper_steps"] == 3.0
    assert {"start", "end", "tau", "eps", "hypergrad_norm", "fid_domain_zo", "cost_flops"} <= set(calls[-1])


# -- state ------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_continues_identically():
    a = toy_learner(seed=5)
    a.draw(images(4))
    for _ in range(3):
        a.step()
    state = roundtrip(a.state_dict())
    b = toy_learner(seed=5)
    b.load_state_dict(state)
    assert_equal(a.state_dict(), b.state_dict())
    x0 = images(4, seed=9)
    assert all(torch.equal(u, v) for u, v in zip(a.draw(x0), b.draw(x0)))  # the draw stream continues too
    assert a.step() == b.step() and a.hyperparameters() == b.hyperparameters()


def test_penalty_variant_copies_y_with_moments_and_reports_the_penalty_term():
    """penalty=True: z = the U-Net with the optimizer's moments plus inner_z score-matching steps (§3.4); h_z - h_y is
    nonzero and finite, the metric is probed at z, and z's state round-trips."""
    unet = tiny_unet()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    learner = ScheduleLearner(unet, None, {"preset": "smoke", "T": 100, "every": 2, "penalty": True}, optimizer=opt,
                              sampler=abar_sampler, metric=toy_metric)
    x0 = images(8)
    report = None
    for _ in range(2):
        t, noise, noisy = learner.draw(x0)
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        report = learner.step()
    assert report is not None and learner.z is not None
    assert report["zy_distance"] > 0 and 0 < report["penalty_grad_norm"] < math.inf
    assert report["hypergrad_penalty_norm"] == pytest.approx(report["penalty_grad_norm"])
    other = tiny_unet()
    twin = ScheduleLearner(other, None, {"preset": "smoke", "T": 100, "every": 2, "penalty": True},
                           optimizer=torch.optim.AdamW(other.parameters()), sampler=abar_sampler, metric=toy_metric)
    twin.load_state_dict(roundtrip(learner.state_dict()))
    assert_equal(learner.state_dict()["z"], twin.state_dict()["z"])


def test_default_metric_is_domain_fid_and_the_unet_is_counted():
    """The defaults: DDIM samples and domain FID against the held-out images; the U-Net's calls are booked."""
    unet = tiny_unet()
    learner = ScheduleLearner(unet, images(32, seed=2), {"preset": "smoke", "T": 100, "every": 1})
    learner.draw(images(4))
    report = learner.hyper_step()
    assert math.isfinite(report["fid_domain_zo"]) and report["fid_domain_zo"] > 0
    by_network = learner.meter.by_network
    assert by_network.get("unet", 0) > 0 and by_network.get("digit_classifier", 0) > 0
    assert report["cost_flops"] == learner.meter.total
    unet_flops = by_network["unet"]
    unet(images(2), torch.tensor([3, 4]))  # outside: no meter is active, nothing is booked
    assert learner.meter.by_network["unet"] == unet_flops
    with learner.counting():  # the user's own forward pass, booked to the learner's meter
        unet(images(2), torch.tensor([3, 4]))
    assert learner.meter.by_network["unet"] > unet_flops


def test_exported_schedulers_load_and_carry_the_learned_alphas(tmp_path):
    from diffusers import DDIMScheduler, DDPMScheduler

    learner = toy_learner()
    learner.draw(images(4))
    learner.hyper_step()
    paths = learner.export(tmp_path)
    ddim, ddpm = DDIMScheduler.from_pretrained(paths["ddim"]), DDPMScheduler.from_pretrained(paths["ddpm"])
    for s in (ddim, ddpm):
        assert s.config.num_train_timesteps == 100
        assert torch.allclose(s.alphas_cumprod.double(), learner.alphas_cumprod, atol=1e-6)


# -- bad inputs (docs/bad_inputs.md B80-B90) -------------------------------------------------------------------
def bad_input(key: str) -> None:
    """Feed bad input ``key`` (a row of docs/bad_inputs.md) through the public API."""
    if key == "every":
        learner_config("smoke", every=0)
    elif key == "every_fraction":
        ScheduleLearner(tiny_unet(), None, {"every": 2.5}, metric=toy_metric)
    elif key == "nan_metric":
        learner = ScheduleLearner(tiny_unet(), None, {"preset": "smoke", "T": 100}, sampler=abar_sampler,
                                  metric=lambda im: float("nan"))
        learner.draw(images(4))
        learner.hyper_step()
    elif key == "str_metric":
        learner = ScheduleLearner(tiny_unet(), None, {"preset": "smoke", "T": 100}, sampler=abar_sampler,
                                  metric=lambda im: "low")  # type: ignore[arg-type, return-value]
        learner.draw(images(4))
        learner.hyper_step()
    elif key == "heldout_shape":
        ScheduleLearner(tiny_unet(), images(8)[:, 0], {"preset": "smoke"})
    elif key == "heldout_size":
        ScheduleLearner(tiny_unet(), images(8, size=16), {"preset": "smoke"})
    elif key == "batch_shape":
        toy_learner().draw(images(4, size=16))
    elif key == "no_heldout":
        ScheduleLearner(tiny_unet(), None, {"preset": "smoke"})
    elif key == "singular_fid":
        ScheduleLearner(tiny_unet(), images(8), {"preset": "smoke", "fid_shrinkage": 0.0})
    elif key == "penalty_sgd":
        unet = tiny_unet()
        ScheduleLearner(
            unet,
            None,
            {"preset": "smoke", "penalty": True},
            optimizer=torch.optim.SGD(unet.parameters(), lr=0.1),
            metric=toy_metric,
        )
    elif key == "foreign_state":
        toy_learner().load_state_dict({"format": "ray_bilevel.noise_schedule/1"})
    elif key == "other_T":
        ScheduleLearner(tiny_unet(), None, {"preset": "smoke"}, metric=toy_metric).load_state_dict(
            toy_learner().state_dict()
        )
    elif key == "hyper_before_draw":
        toy_learner().hyper_step()
    else:
        raise KeyError(key)


#: docs/bad_inputs.md row -> the trigger above
ROWS = {"B80": "every", "B81": "every_fraction", "B82": "nan_metric", "B83": "str_metric", "B84": "heldout_shape",
        "B85": "heldout_size", "B86": "batch_shape", "B87": "no_heldout", "B88": "singular_fid", "B89": "penalty_sgd",
        "B90": "foreign_state", "B91": "hyper_before_draw", "B92": "other_T"}


def catalogue_row(key: str) -> tuple[type[BaseException], list[str]]:
    for line in (REPO / "docs" / "bad_inputs.md").read_text().splitlines():
        if line.startswith(f"| {key} |"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            kind, _, rest = cells[3].partition(":")
            assert (
                cells[5]
                == "`tests/test_schedule_learner.py::test_bad_inputs_of_the_learner_give_the_catalogued_message`"
            ), cells[5]
            return {"ConfigError": ConfigError, "FloatingPointError": FloatingPointError}[kind.strip()], re.findall(
                r"`([^`]+)`", rest
            )
    raise AssertionError(f"{key} is not in docs/bad_inputs.md")


@pytest.mark.parametrize("key", sorted(ROWS))
def test_bad_inputs_of_the_learner_give_the_catalogued_message(key):
    expected, excerpts = catalogue_row(key)
    assert excerpts
    with pytest.raises(expected) as info:
        bad_input(ROWS[key])
    message = str(info.value)
    for excerpt in excerpts:
        assert excerpt in message, (key, excerpt, message)
    assert "\n" not in message.strip(), message


# -- the doc's loop under tune.Tuner ------------------------------------------------------------------------------
def test_the_doc_shows_the_example_verbatim():
    """docs/your_own_problem.md's section holds examples/schedule_learner_loop.py as its code block, so the code the
    doc shows is the code the Tune test below runs."""
    text = DOC.read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks and blocks[0] == EXAMPLE.read_text()
    train = blocks[0].split("def train(", 1)[1].split("\ndef main(", 1)[0]
    assert len(train.strip().splitlines()) <= 32  # the loop stays about 30 lines


def load_example() -> Any:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("schedule_learner_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # Ray workers need not import examples/
    return module


def flaky_train(config: dict[str, Any]) -> None:
    """The example's trainable, crashing once after its first checkpoint (marker file: once per test)."""
    example, marker = load_example(), Path(config.pop("_marker"))
    if not marker.exists():
        marker.touch()
        example.train({**config, "steps": 10})  # one hyper step, reported with a checkpoint
        raise RuntimeError("injected crash after the first checkpoint")
    from ray_bilevel.tune.report import tune_restore

    saved = tune_restore()  # what the example's train() will resume from
    marker.with_suffix(".restored").write_text(str(saved["learner"]["steps"] if saved is not None else -1))
    example.train(config)


@pytest.mark.slow
def test_doc_loop_runs_under_tuner_moves_the_schedule_exports_and_restores(ray_local, tmp_path):
    """The doc's loop as a Tune function trainable (smoke size): the schedule moves, the checkpoint's exported
    DDIMScheduler loads, the checkpoint's state loads into fresh objects equal to what was saved, and a trial that
    crashes after a checkpoint resumes from it (its first report after the restore is at step 20, not 10)."""
    from diffusers import DDIMScheduler
    from ray import cloudpickle, tune

    from ray_bilevel.tune.report import STATE_FILE

    example = load_example()
    grid = example.main(storage_path=str(tmp_path / "plain"))
    result = grid[0]
    assert result.error is None, result.error
    m = result.metrics
    assert m["training_step"] == 30 and m["hyper_steps"] == 3
    assert (m["start"], m["end"], m["tau"], m["eps"]) != (0.0, 1.0, 1.0, 0.008)  # the schedule moved
    with result.checkpoint.as_directory() as folder:
        ddim = DDIMScheduler.from_pretrained(str(Path(folder) / "ddim"))
        saved = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    learner = ScheduleLearner(tiny_unet(), None, {"preset": "smoke"}, metric=toy_metric)
    learner.load_state_dict(saved["learner"])
    assert_equal(learner.state_dict(), saved["learner"])
    assert learner.hyperparameters() == {n: m[n] for n in NAMES}
    assert torch.allclose(ddim.alphas_cumprod.double(), learner.alphas_cumprod, atol=1e-6)
    unet = tiny_unet(seed=1, layers_per_block=2)  # the example's architecture (diffusers' default 2 layers per block)
    unet.load_state_dict(saved["unet"])
    assert_equal({k: v for k, v in unet.state_dict().items()}, saved["unet"])

    # a crash after the first checkpoint: Tune restarts the function, which resumes from tune_restore()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    space = {"steps": 30, "batch_size": 16, "learner": {"preset": "smoke", "every": 10, "seed": 0},
             "_marker": str(tmp_path / "crashed")}
    tuner = tune.Tuner(flaky_train, param_space=space,
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "flaky"), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=1)))
    restored = tuner.fit()[0]
    assert (tmp_path / "crashed").exists() and restored.error is None, restored.error
    steps = [row["training_step"] for _, row in restored.metrics_dataframe.iterrows()]
    assert (tmp_path / "crashed.restored").read_text() == "10"  # the retry found the checkpoint of step 10
    # after the restore the trial reports 20 and 30, not 10 again (the pre-crash row of 10 may or may not have reached
    # the trial's progress file before the crash)
    assert steps in ([10.0, 20.0, 30.0], [20.0, 30.0]), steps
