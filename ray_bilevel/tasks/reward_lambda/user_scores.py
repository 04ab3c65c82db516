"""Your own reward r2 and upper score r1 for the λ task (docs/your_own_problem.md, docs/algorithms.md §2.1, §2.5).

The settings ``reward`` (the lower reward r2 of problem (9)) and ``upper`` (the upper score r1) take, besides the
built-in names, an import path ``"package.module:function"`` or (from Python) a callable::

    f(images: Tensor[N, C, H, W], prompts: list[str]) -> Tensor[N]

``images`` are what the pipeline produces before its PIL conversion: float32, channels first, values in [-1, 1], on
the task's device; ``prompts`` holds the task's prompt once per image. The lower reward must be differentiable in
the images: Algorithm 5 linearises it at every sample (``∇_x r2``, docs/algorithms.md §2.3). The upper score need
not be: the closed-form hypergradient (Proposition 1, §2.2) and the λ curve (§2.4) use its values only; the
weighted-sum baseline (§5) guides on it and refuses one without a gradient.

:class:`UserScore` wraps the function, checks every call (one value per image, finite) and, once at build time, a
probe batch (:meth:`UserScore.probe`), so that a wrong function fails with a one-line :class:`ConfigError` naming it
before any sampling. Counted compute (``cost_flops``, ray_bilevel/cost.py): a function that is an ``nn.Module``,
a bound method of one, or exposes one as ``.module`` is watched under ``user_reward`` / ``user_upper``; a plain
function's own compute is not counted, and :attr:`UserScore.counted` says so (recorded with the results).
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ray_bilevel.config import ConfigError

__all__ = ["BUILTIN_REWARDS", "BUILTIN_UPPER", "is_user_spec", "spec_name", "check_spec", "load_user_function",
           "UserScore"]

#: The built-in names of the lower reward r2 and of the upper score r1 (anything else is a user function).
BUILTIN_REWARDS = ("ink", "resnet18")
BUILTIN_UPPER = ("stroke_target", "alignment")

UserFunction = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def is_user_spec(value: Any) -> bool:
    """Whether a ``reward`` / ``upper`` setting names a user function (an import path or a callable)."""
    return callable(value) or (isinstance(value, str) and ":" in value)


def spec_name(value: Any) -> str:
    """A stable name of a setting: the import path as given, or ``module:qualname`` of a callable (calibration keys,
    error messages, results)."""
    if isinstance(value, str):
        return value
    target = value.func if isinstance(value, functools.partial) else value
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{name}"


def check_spec(key: str, value: Any, builtins: Sequence[str]) -> None:
    """Raise unless ``value`` is a built-in name, an import path ``"package.module:function"`` or a callable."""
    if callable(value) or value in builtins:
        return
    if isinstance(value, str) and ":" in value:
        module, _, attr = value.partition(":")
        if module and attr and all(part.isidentifier() for part in (*module.split("."), *attr.split("."))):
            return
    raise ConfigError(f"{key} must be one of {list(builtins)}, an import path 'package.module:function' or a callable, "
                      f"got {value!r}.")


def load_user_function(value: Any, key: str) -> UserFunction:
    """The callable a ``reward`` / ``upper`` setting names: ``value`` itself, or ``function`` imported from
    ``package.module`` (found through ``sys.path`` / ``PYTHONPATH``, in Ray workers too)."""
    if callable(value):
        return value
    module_name, _, attr = str(value).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while the module runs
        raise ConfigError(f"{key} function {value!r}: import of module {module_name!r} failed "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); put its folder on "
                          "PYTHONPATH (in Ray workers too: ray.init(runtime_env={'env_vars': {'PYTHONPATH': ...}})) "
                          "or pass the callable.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key} function {value!r}: module {module_name!r} has no attribute {attr!r}; "
                              "check the name after the colon.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key} function {value!r} is a {type(obj).__name__}, not a callable; name a function "
                          "f(images, prompts) -> Tensor[N].")
    return obj


def _module_of(fn: Any) -> nn.Module | None:
    """The network behind ``fn`` whose FLOPs can be counted: ``fn`` itself, the module of a bound method, or
    ``fn.module``; None for a plain function."""
    for candidate in (fn, getattr(fn, "__self__", None), getattr(fn, "module", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    return None


class UserScore:
    """A user's ``f(images, prompts) -> Tensor[N]`` as a per-image score ``x -> (N,)`` of the λ task.

    Args:
        value: the setting (import path or callable); ``key``: ``"reward"`` or ``"upper"`` (messages, FLOP names).
        prompt: the task's prompt, passed once per image.
        needs_grad: the lower reward (Algorithm 5 differentiates it); the probe and every differentiated call
            refuse an output without a gradient.
    """

    def __init__(self, value: Any, key: str, prompt: str, needs_grad: bool) -> None:
        self.name = spec_name(value)
        self.key = key
        self.fn = load_user_function(value, key)
        self.prompt = str(prompt)
        self.needs_grad = bool(needs_grad)
        self.differentiable: bool | None = None  # set by probe()
        module = _module_of(self.fn)
        self.counted = module is not None
        if module is not None:
            from ray_bilevel.cost import watch

            watch(module, f"user_{key}")  # counted towards cost_flops (ray_bilevel.cost)

    def _fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.key} function {self.name!r} {what}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.fn(x, [self.prompt] * len(x))
        except ConfigError:
            raise
        except Exception as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise self._fail(f"raised {type(exc).__name__}: {text} (called with images of shape {tuple(x.shape)} "
                             "in [-1, 1] and a list of prompts).") from None
        if not isinstance(out, torch.Tensor):
            raise self._fail(f"returned a {type(out).__name__}; return a torch.Tensor of shape ({len(x)},).")
        if tuple(out.shape) != (len(x),):
            raise self._fail(f"returned shape {tuple(out.shape)} for {len(x)} images; return one value per image, "
                             f"shape ({len(x)},).")
        bad = int((~torch.isfinite(out.detach())).sum())
        if bad:
            raise self._fail(f"returned {bad} non-finite value(s) (nan or inf) for {len(x)} images in [-1, 1]; "
                             "return finite scores.")
        if self.needs_grad and x.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
            raise self._fail("is not differentiable: its output carries no gradient of the images; the lower reward "
                             "guides sampling (Algorithm 5 needs ∇_x r2), so compute it with torch operations "
                             "(no .detach(), .item(), numpy).")
        return out.to(device=x.device, dtype=x.dtype if x.dtype.is_floating_point else torch.float32)

    def probe(self, shape: tuple[int, ...], device: torch.device, n: int = 2) -> None:
        """Call the function once on ``n`` fixed images of ``shape`` (C, H, W) in [-1, 1] and check shape, finite
        values and (reward) a finite gradient; records :attr:`differentiable`."""
        g = torch.Generator().manual_seed(0)
        x = (torch.rand((n, *shape), generator=g) * 2 - 1).to(device).requires_grad_(True)
        with torch.enable_grad():
            out = self(x)
            self.differentiable = bool(out.requires_grad)
            if self.differentiable:
                (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
                if grad is None:
                    self.differentiable = False
                elif not bool(torch.isfinite(grad).all()):
                    raise self._fail(f"has a non-finite gradient on images of shape {tuple(x.shape)} in [-1, 1]; "
                                     "guidance needs a finite ∇_x.")
        if self.needs_grad and not self.differentiable:
            raise self._fail("is not differentiable: its output does not depend on the images through autograd; the "
                             "lower reward guides sampling (Algorithm 5 needs ∇_x r2), so compute it with torch "
                             "operations (no .detach(), .item(), numpy).")
