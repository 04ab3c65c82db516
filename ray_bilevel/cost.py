"""Counted compute: the FLOPs of every network a trial runs (``cost_flops``, docs/algorithms.md §6).

CPU-seconds depend on what else the machine runs, on actor reuse and on which trial warmed a cache first; a
method's cost must not. So every network call is *counted*: the per-sample forward FLOPs of the network are
measured once per (network object, call, input shape) with :class:`torch.utils.flop_counter.FlopCounterMode`
(matrix products and convolutions, the standard count), multiplied by the samples of each call, and a backward
pass through the output books twice the forward (the usual convention). The count is a function of shapes
only: the same on any machine, at any concurrency, in any process.

How it is used:

* :func:`watch` — register an ``nn.Module`` under a network name (``"unet"``, ``"digit_classifier"``, ...):
  every call of it books its FLOPs to the meter that is active at that moment.
* :func:`count_call` — the same for a callable that is not a module call (a feature extractor that runs parts
  of a network).
* :class:`FlopMeter` — what one trial has spent, by network; :func:`metering` makes a meter the active one
  (the trainables do it around building the task, its steps and its evaluations: never around the reporting
  evaluation on the test split).
* :func:`once` / :func:`cached` — work whose result may be cached (a reference set, a model's prompt encoding,
  FID reference statistics) is booked **once per meter** at what computing it costs, whether this process
  computed it or found it cached: a method's cost does not depend on which trial ran first in a process.

Nested watched calls count once (the outermost). With no active meter nothing is counted and nothing is slowed
beyond a dictionary lookup. Nothing here knows about diffusion or Ray.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch

__all__ = ["FlopMeter", "watch", "book", "count_call", "metering", "capture", "active_meter", "once", "cached",
           "charge_once", "per_sample_flops"]

T = TypeVar("T")
M = TypeVar("M")  # an nn.Module (diffusers' models type as their mixins)


class FlopMeter:
    """FLOPs booked by one trial, by network, and the keys of the cached work it has paid for."""

    def __init__(self) -> None:
        self.by_network: dict[str, float] = {}
        self.paid: set[str] = set()

    @property
    def total(self) -> float:
        """All FLOPs booked so far."""
        return float(sum(self.by_network.values()))

    def book(self, network: str, flops: float) -> None:
        if flops:
            self.by_network[network] = self.by_network.get(network, 0.0) + float(flops)

    def charge_once(self, key: str, flops_by_network: Mapping[str, float]) -> bool:
        """Book ``flops_by_network`` unless ``key`` was paid already; whether it was booked now."""
        if key in self.paid:
            return False
        self.paid.add(key)
        for network, flops in flops_by_network.items():
            self.book(network, flops)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"by_network": dict(self.by_network), "paid": sorted(self.paid)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.by_network = {str(k): float(v) for k, v in dict(state.get("by_network", {})).items()}
        self.paid = {str(k) for k in state.get("paid", [])}


class _Local(threading.local):
    def __init__(self) -> None:
        self.stack: list[FlopMeter | None] = []
        self.depth = 0  # > 0 inside a counted call: inner watched calls are part of it
        self.measuring = False  # inside a per-sample measurement: count nothing


_LOCAL = _Local()


def active_meter() -> FlopMeter | None:
    """The meter that calls book to now (``None``: nothing is counted)."""
    return _LOCAL.stack[-1] if _LOCAL.stack else None


@contextlib.contextmanager
def metering(meter: FlopMeter | None) -> Iterator[FlopMeter | None]:
    """Make ``meter`` the active one inside the block (``None``: count nothing inside it)."""
    _LOCAL.stack.append(meter)
    try:
        yield meter
    finally:
        _LOCAL.stack.pop()


@contextlib.contextmanager
def capture() -> Iterator[FlopMeter]:
    """Count the block's work on a fresh meter instead of the active one (to book it later, e.g. once)."""
    with metering(FlopMeter()) as meter:
        assert meter is not None
        yield meter


def charge_once(key: str, flops_by_network: Mapping[str, float]) -> None:
    """Book cached work's cost to the active meter, once per meter and ``key``."""
    meter = active_meter()
    if meter is not None:
        meter.charge_once(key, flops_by_network)


def once(key: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` and book its FLOPs to the active meter only the first time this meter sees ``key`` (work a
    restored trial redoes, e.g. a fixed pool of samples it does not checkpoint)."""
    if active_meter() is None:
        return fn()
    with capture() as spent:
        value = fn()
    charge_once(key, spent.by_network)
    return value


def cached(store: dict[Any, tuple[Any, dict[str, float]]], key: Any, label: str, fn: Callable[[], T]) -> T:
    """``fn()`` cached in ``store[key]`` with what computing it cost; that cost is booked once per meter and
    ``label`` (a key stable across processes), whether this call computed it or found it."""
    if key not in store:
        with capture() as spent:
            value = fn()
        store[key] = (value, dict(spent.by_network))
    value, flops = store[key]
    charge_once(label, flops)
    return value


# -- per-sample FLOPs ------------------------------------------------------------------------------

#: owner object -> {(call tag, input signature): forward FLOPs of one sample}
_PER_SAMPLE: weakref.WeakKeyDictionary[Any, dict[tuple, float]] = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def _batch_size(args: tuple, kwargs: Mapping[str, Any]) -> int | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def _slice(value: Any, n: int) -> Any:
    """One sample of a batch argument, detached: the measurement runs without grad, and the counter's module tracking
    cannot follow an input that requires grad (a network first called inside a gradient computation)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[:1].detach()
    return value


def _signature(args: tuple, kwargs: Mapping[str, Any]) -> tuple:
    def sig(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), str(v.dtype))
        if isinstance(v, (int, float, str, bool, type(None))):
            return v
        return type(v).__name__

    return (tuple(sig(a) for a in args), tuple(sorted((k, sig(v)) for k, v in kwargs.items())))


def _modules_of(owner: Any) -> list[torch.nn.Module]:
    if isinstance(owner, torch.nn.Module):
        return [owner]
    return [v for v in vars(owner).values() if isinstance(v, torch.nn.Module)] if hasattr(owner, "__dict__") else []


def per_sample_flops(owner: Any, tag: str, fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any]) -> float:
    """Forward FLOPs of ``fn`` on one sample of the batch ``args``/``kwargs`` (measured once per owner, tag and
    one-sample input signature). The measurement runs in eval mode, without grad, on the global RNG's copy, so it
    changes nothing a trial computes."""
    n = _batch_size(args, kwargs)
    if n is None or n == 0:
        return 0.0
    one_args = tuple(_slice(a, n) for a in args)
    one_kwargs = {k: _slice(v, n) for k, v in kwargs.items()}
    key = (tag, _signature(one_args, one_kwargs))
    try:
        table = _PER_SAMPLE.setdefault(owner, {})
    except TypeError:  # an owner that cannot be weakly referenced: measure every time (still deterministic)
        table = {}
    if key in table:
        return table[key]
    from torch.utils.flop_counter import FlopCounterMode

    modules = _modules_of(owner)
    modes = [(m, m.training) for mod in modules for m in mod.modules()]
    _LOCAL.measuring = True
    try:
        for m, _ in modes:
            m.training = False
        with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(*one_args, **one_kwargs)
        flops = float(counter.get_total_flops())
    finally:
        _LOCAL.measuring = False
        for m, mode in modes:
            m.training = mode
    table[key] = flops
    return flops


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for v in out:
            t = _first_tensor(v)
            if t is not None:
                return t
        return None
    if isinstance(out, Mapping):
        return _first_tensor(list(out.values()))
    sample = getattr(out, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


def _book_backward(meter: FlopMeter, network: str, out: Any, flops: float) -> None:
    """A backward pass through ``out`` books ``flops`` (twice the forward) when it happens."""
    t = _first_tensor(out)
    if flops and t is not None and t.requires_grad and torch.is_grad_enabled():
        def hook(grad: torch.Tensor) -> None:
            meter.book(network, flops)

        t.register_hook(hook)


def _enter(network: str, owner: Any, tag: str, fn: Callable[..., Any], args: tuple,
           kwargs: Mapping[str, Any]) -> tuple[FlopMeter, float] | None:
    """Book one counted call's forward; ``(meter, forward FLOPs)`` or ``None`` when nothing is counted."""
    meter = active_meter()
    if meter is None or _LOCAL.measuring or _LOCAL.depth > 0:
        return None
    try:
        flops = per_sample_flops(owner, tag, fn, args, kwargs) * (_batch_size(args, kwargs) or 0)
    except Exception as exc:  # noqa: BLE001 - a network the counter cannot trace must not break a trial
        if network not in _WARNED:
            _WARNED.add(network)
            warnings.warn(f"cannot count the FLOPs of {network!r} ({type(exc).__name__}: {exc}); its calls book 0.")
        flops = 0.0
    meter.book(network, flops)
    return meter, flops


def count_call(network: str, owner: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, booking its FLOPs under ``network`` (``owner``: the object holding its
    weights, the key of the per-sample measurement)."""
    entered = _enter(network, owner, getattr(fn, "__qualname__", repr(fn)), fn, args, kwargs)
    if entered is None:
        return fn(*args, **kwargs)
    _LOCAL.depth += 1
    try:
        out = fn(*args, **kwargs)
    finally:
        _LOCAL.depth -= 1
    _book_backward(entered[0], network, out, 2.0 * entered[1])
    return out


_WATCH_ATTR = "_ray_bilevel_network"


def _pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    network = getattr(module, _WATCH_ATTR, None)
    entered = None if network is None else _enter(network, module, "forward", module.forward, args, kwargs)
    stack = module.__dict__.setdefault("_ray_bilevel_calls", [])
    stack.append(entered)
    if entered is not None:
        _LOCAL.depth += 1


def _post_hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
    stack = module.__dict__.get("_ray_bilevel_calls")
    entered = stack.pop() if stack else None
    if entered is not None:
        _LOCAL.depth -= 1
        _book_backward(entered[0], str(getattr(module, _WATCH_ATTR)), out, 2.0 * entered[1])


def watch(module: M, network: str) -> M:
    """Count every call of ``module`` (an ``nn.Module``) under ``network`` (idempotent; copies made by
    ``copy.deepcopy`` are counted too). Returns ``module``."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"watch() counts the calls of an nn.Module, got {type(module).__name__}; use count_call().")
    if getattr(module, _WATCH_ATTR, None) is None:
        module.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        module.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)
    object.__setattr__(module, _WATCH_ATTR, network)
    return module


def book(network: str, flops: float) -> None:
    """Book ``flops`` under ``network`` to the active meter: for a task whose compute is no network call (e.g.
    the analytic toy's matrix-vector products), counted by the task itself."""
    meter = active_meter()
    if meter is not None:
        meter.book(network, flops)
