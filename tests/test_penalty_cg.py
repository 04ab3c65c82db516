"""``z_solve="cg"``: the penalty term of eq. (4) in its γ → ∞ limit on the noise-schedule task (smoke size, no Ray).

* on the real U-Net and schedule, the mixed second derivative −∇²_qy SM · w that :func:`penalty_limit` returns equals a
  central finite difference in the network's weights of −∇_q SM (w ≈ v/δ at a damping δ far above the curvature);
* a bilevel run with ``z_solve="cg"`` steps q on the ZO estimate plus that term, reports the solve, books its passes,
  and does not depend on γ (the limit has no γ left in it);
* the setting refuses a configuration it cannot serve.
"""
from __future__ import annotations

import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import capture
from ray_bilevel.diffusion import score_matching_loss
from ray_bilevel.estimators.implicit import penalty_limit
from ray_bilevel.schedules import NAMES
from ray_bilevel.tasks.noise_schedule import NoiseScheduleTask

pytestmark = [pytest.mark.filterwarnings("ignore:FID with"),
              pytest.mark.filterwarnings("ignore:noise_schedule. projected:UserWarning")]


def smoke(**over) -> NoiseScheduleTask:
    return NoiseScheduleTask({"task": "noise_schedule", "preset": "smoke", "seed": 5, "tau": 1.3, "start": 0.05,
                              "end": 0.95, "z_fid_grad": "surrogate", "z_solve": "cg", **over})


def test_mixed_derivative_matches_a_finite_difference_on_the_unet():
    task = smoke()
    for _ in range(3):
        task.lower_step()
    s, y = task.schedule, task.y
    params = [p for p in y.parameters() if p.requires_grad]
    q = [getattr(s, n) for n in NAMES]
    x0 = task._next_batch()
    gen = torch.Generator().manual_seed(1)
    t, noise = torch.randint(0, task.cfg.T, (x0.shape[0],), generator=gen), torch.randn(x0.shape, generator=gen)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    damping = 1e6  # w = (H + δI)⁻¹ v ≈ v/δ: one CG step, curvature negligible against δ

    def sm() -> torch.Tensor:
        return score_matching_loss(y, x0, s.alphas_cumprod(), t=t, noise=noise)

    term, info = penalty_limit(sm, params, q, v, iters=1, tol=0.0, damping=damping)
    assert info.iterations == 1

    def h_q(sign: float, eps: float = 1e-3) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=sign * eps)
        out = torch.stack(torch.autograd.grad(sm(), q)).to(torch.float64)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=sign * eps)
        return out

    fd = -(h_q(1.0) - h_q(-1.0)) / (2e-3) / damping
    assert torch.allclose(term, fd, rtol=0.05, atol=1e-3 * float(fd.abs().max()))
    assert float(term.abs().max()) > 0


def test_cg_bilevel_run_steps_q_reports_the_solve_and_ignores_gamma():
    reports = {}
    for gamma in (1.0, 1e3):
        task = smoke(gamma=gamma, gamma_end=gamma, cg_damping=100.0)  # the tiny net: far more negative curvature
        with capture() as meter:
            out = [task.hyper_step() for _ in range(task.outer_budget)]
        bilevel = [r for r in out if "cg_iterations" in r]
        assert bilevel, "no bilevel step ran"
        for r in bilevel:
            assert r["cg_iterations"] >= 1 and r["hypergrad_penalty_norm"] > 0
            assert all(torch.isfinite(torch.tensor(r[f"hypergrad_{n}"])) for n in NAMES)
        assert meter.by_network["unet"] > 0
        reports[gamma] = bilevel[0]
    for n in NAMES:  # ∇F estimate = ĝ_q + term: the same at γ = 1 and γ = 1000 (first step, same draws)
        assert reports[1.0][f"hypergrad_{n}"] == pytest.approx(reports[1e3][f"hypergrad_{n}"], rel=1e-6, abs=1e-9)


def test_cg_needs_the_surrogate():
    with pytest.raises(ConfigError, match="z_fid_grad='surrogate'"):
        smoke(z_fid_grad="none")
    with pytest.raises(ConfigError, match="cg_iters"):
        smoke(cg_iters=0)


def test_cg_probe_study_records_each_damping_and_the_rule(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
    import cg_probe

    out = tmp_path / "cg.json"
    cg_probe.main(["--preset", "smoke", "--seed", "100", "--iters", "5", "--dampings", "0", "100", "--out", str(out)])
    d = json.loads(out.read_text())
    assert [r["damping"] for r in d["rows"]] == [0.0, 100.0]
    reached = [r["damping"] for r in d["rows"] if r["cg_residual"] <= d["tol"]]
    assert d["chosen_damping"] == (min(reached) if reached else None)
    assert "| 100 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="benchmark seed"):
        cg_probe.main(["--preset", "smoke", "--seed", "0", "--out", str(out)])
