"""Flat views of a network's parameters, for zeroth-order probes on weights (docs/algorithms.md §3.3)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ray_bilevel.estimators.zeroth_order import ZOResult, zo_gradient

__all__ = ["get_flat", "set_flat_", "zo_gradient_of_parameters", "add_flat_to_grads_"]


def get_flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A detached copy of the parameters as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@torch.no_grad()
def set_flat_(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat`` into the parameters in place (optimizers keep pointing at the same tensors)."""
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {offset}.")


def zo_gradient_of_parameters(f: Callable[[], float], params: Sequence[torch.Tensor], mu: float, directions: int,
                              generator: torch.Generator | None) -> ZOResult:
    """Eq. (14) on a network's weights: ``f()`` reads the network, whose live parameters are moved in place to
    θ ± μ v_j for each probe and restored exactly afterwards (optimizers keep pointing at the same tensors).
    ``grad`` is flat, in the order of ``params``."""
    flat = get_flat(params)

    def at(v: torch.Tensor) -> float:
        set_flat_(params, v)
        return f()

    try:
        return zo_gradient(at, flat, mu, directions, generator)
    finally:
        set_flat_(params, flat)


@torch.no_grad()
def add_flat_to_grads_(params: Sequence[torch.Tensor], flat: torch.Tensor, alpha: float = 1.0) -> None:
    """``p.grad += alpha * flat[slice of p]`` for each parameter (after a backward pass)."""
    offset = 0
    for p in params:
        assert p.grad is not None, "call backward() before adding to the gradients"
        p.grad.add_(flat[offset : offset + p.numel()].view_as(p), alpha=alpha)
        offset += p.numel()
