"""Flat views of a network's parameters, for zeroth-order probes on weights (docs/algorithms.md §3.3)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["get_flat", "set_flat_"]


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
