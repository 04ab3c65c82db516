"""The penalty term of eq. (4) with its inner problem solved, not stepped (docs/algorithms.md §1, §3.4).

For large γ the penalty solution is ``z*_γ ≈ y* − (1/γ) H⁻¹ ∇_z f`` (H = ∇²_zz g at y*, first order in 1/γ), so the
penalty term of eq. (4) has the limit

    γ (∇_x g(x, z*_γ) − ∇_x g(x, y*))  →  −∇²_xz g · H⁻¹ ∇_z f        (γ → ∞)

— the implicit-function term of the hypergradient, whose size is set by the lower level's curvature and not by how
far a few optimiser steps happened to move z. :func:`penalty_limit` computes it with Hessian-vector products: one
graph of ∇_z g (double backward), truncated conjugate gradients for ``w = (H + δI)⁻¹ v`` (stopped at a relative
residual ``tol``, after ``iters`` products, or at a direction of non-positive curvature, where a non-convex network's
Hessian is indefinite), then ``−∇_x (∇_z g · w)`` on the same graph. Cost: one forward and one backward of g with its
graph (3 × g's forward FLOPs), then ``iterations + 1`` reverse passes through that gradient graph, each booked to the
active :mod:`ray_bilevel.cost` meter at twice the graph's cost (6 × g's forward: the backward-is-twice-forward rule
applied to the gradient computation), whatever the networks' backward hooks booked during it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ray_bilevel.cost import active_meter

__all__ = ["CGInfo", "conjugate_gradient", "penalty_limit"]


@dataclass
class CGInfo:
    """How a conjugate-gradient solve ended: products used, final relative residual, and why it stopped
    (``"tol"``, ``"iters"`` or ``"curvature"``: a direction with pᵀ(H + δI)p ≤ 0 was met)."""

    iterations: int
    residual: float
    stop: str


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum(((x.to(torch.float64) * y.to(torch.float64)).sum() for x, y in zip(a, b)), torch.zeros((),
               dtype=torch.float64))


def conjugate_gradient(hvp: Callable[[list[Tensor]], list[Tensor]], b: Sequence[Tensor], iters: int = 10,
                       tol: float = 1e-3, damping: float = 0.0) -> tuple[list[Tensor], CGInfo]:
    """Truncated CG for ``(H + damping·I) w = b`` on a list of tensors (a network's parameters), from w = 0.

    Args:
        hvp: ``u ↦ H u`` (same shapes as ``b``).
        b: the right-hand side. iters: at most this many products. tol: stop when ‖r‖ ≤ tol ‖b‖.
        damping: δ ≥ 0 added to H (Tikhonov), which also makes small-curvature directions cheap to solve.

    Returns (w, info): the iterate of smallest residual seen (CG's residual need not fall monotonically), so at a
    direction of non-positive curvature met first w = 0 (the caller's term is 0, not a step along negative
    curvature); ``info.residual`` is that iterate's relative residual.
    """
    if iters < 1 or tol < 0 or damping < 0:
        raise ValueError(f"conjugate_gradient needs iters >= 1, tol >= 0 and damping >= 0; got iters={iters}, "
                         f"tol={tol}, damping={damping}.")
    w = [torch.zeros_like(x) for x in b]
    r = [x.detach().clone() for x in b]
    p = [x.clone() for x in r]
    rr = _dot(r, r)
    b_norm = float(rr.sqrt())
    if b_norm == 0.0:
        return w, CGInfo(0, 0.0, "tol")
    best_w, best_res = w, 1.0
    for k in range(1, iters + 1):
        hp = [h + damping * pi for h, pi in zip(hvp(p), p)]
        curv = _dot(p, hp)
        if float(curv) <= 0.0:
            return best_w, CGInfo(k, best_res, "curvature")
        alpha = rr / curv
        w = [wi + alpha.to(wi.dtype) * pi for wi, pi in zip(w, p)]
        r = [ri - alpha.to(ri.dtype) * hi for ri, hi in zip(r, hp)]
        rr_new = _dot(r, r)
        res = float(rr_new.sqrt()) / b_norm
        if res < best_res:
            best_w, best_res = w, res
        if res <= tol:
            return w, CGInfo(k, res, "tol")
        beta = rr_new / rr
        p = [ri + beta.to(ri.dtype) * pi for ri, pi in zip(r, p)]
        rr = rr_new
    return best_w, CGInfo(iters, best_res, "iters")


def penalty_limit(g: Callable[[], Tensor], z_params: Sequence[Tensor], x_params: Sequence[Tensor],
                  v: Sequence[Tensor], iters: int = 10, tol: float = 1e-3,
                  damping: float = 0.0) -> tuple[Tensor, CGInfo]:
    """``−∇²_xz g · (H + δI)⁻¹ v`` with H = ∇²_zz g: the γ → ∞ limit of eq. (4)'s penalty term for ``v = ∇_z f``.

    Args:
        g: the lower objective at the current (x, z), a scalar whose graph reaches both ``z_params`` and
            ``x_params`` (its randomness fixed inside: the same minibatch and draws for every product).
        z_params: the lower variable's tensors (a network's parameters); x_params: the upper variable's tensors.
        v: ∇_z f at the lower solution, shaped like ``z_params``.
        iters, tol, damping: the conjugate-gradient solve (:func:`conjugate_gradient`).

    Returns (the term as one flat float64 tensor over ``x_params`` in order, the solve's :class:`CGInfo`).
    """
    z_params, x_params = list(z_params), list(x_params)
    meter = active_meter()
    before = dict(meter.by_network) if meter is not None else {}
    grads = torch.autograd.grad(g(), z_params, create_graph=True)
    graph = _booked_since(before)  # forward + backward of g: 3 × its forward, per network

    def second_order(fn: Callable[[], tuple[Tensor | None, ...]]) -> tuple[Tensor | None, ...]:
        """A reverse pass through the gradient graph, booked at 2 × the graph's FLOPs (net of what hooks booked)."""
        start = dict(meter.by_network) if meter is not None else {}
        out = fn()
        if meter is not None:
            hooked = _booked_since(start)
            for network, flops in graph.items():
                meter.book(network, max(0.0, 2.0 * flops - hooked.get(network, 0.0)))
        return out

    def hvp(u: list[Tensor]) -> list[Tensor]:
        out = second_order(lambda: torch.autograd.grad(grads, z_params, grad_outputs=u, retain_graph=True,
                                                       allow_unused=True))
        return [torch.zeros_like(p) if o is None else o.detach() for p, o in zip(z_params, out)]

    w, info = conjugate_gradient(hvp, [t.detach() for t in v], iters=iters, tol=tol, damping=damping)
    mixed = second_order(lambda: torch.autograd.grad(grads, x_params, grad_outputs=w, allow_unused=True))
    flat = [torch.zeros(p.numel(), dtype=torch.float64) if m is None else m.detach().to(torch.float64).reshape(-1).cpu()
            for p, m in zip(x_params, mixed)]
    return -torch.cat(flat), info


def _booked_since(before: dict[str, float]) -> dict[str, float]:
    """FLOPs the active meter booked per network since the snapshot ``before`` (empty without a meter)."""
    meter = active_meter()
    if meter is None:
        return {}
    return {n: f - before.get(n, 0.0) for n, f in meter.by_network.items() if f - before.get(n, 0.0) > 0}
