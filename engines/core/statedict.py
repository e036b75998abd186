"""Checking a loaded state dict against a model's expected layout, and loading it without a copy.

Models are built on the meta device (no random init of hundreds of MB) and the checkpoint's tensors
are assigned into them; every key and shape is checked first so a wrong file fails with one line that
names the expected layout, never with a half-random model (the official DECA/StyleGAN2 loaders are
non-strict and silently keep random weights).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from engines.core.errors import UserError


def _sample(keys, n=3) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_state_dict(model: nn.Module, sd: Mapping, *, optional: Callable[[str], bool] = lambda k: False,
                     ignore_unexpected: Callable[[str], bool] = lambda k: False) -> str | None:
    """Compare `sd` with `model.state_dict()`; None if it fits, else a short description."""
    if not isinstance(sd, Mapping):
        return f"expected a state dict (mapping of names to tensors), got {type(sd).__name__}"
    expected = model.state_dict()
    bad_type = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad_type:
        return f"entries that are not tensors: {_sample(bad_type)}"
    missing = [k for k in expected if k not in sd and not optional(k)]
    unexpected = [k for k in sd if k not in expected and not ignore_unexpected(k)]
    shapes = [f"{k!r} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_sample(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_sample(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} wrong shapes ({'; '.join(shapes[:2])}{' ...' if len(shapes) > 2 else ''})")
    return "; ".join(problems) or None


def assign_state_dict(model: nn.Module, sd: Mapping, *, path: str | Path, what: str, layout: str,
                      optional: Callable[[str], bool] = lambda k: False,
                      ignore_unexpected: Callable[[str], bool] = lambda k: False,
                      defaults: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Validate, then assign the checkpoint tensors into a (meta-device) model.

    Floating tensors become float32; keys in `defaults` that the file lacks take those values (only for
    keys `optional` allows). Raises UserError naming `path`, `what` and the expected `layout`."""
    problem = check_state_dict(model, sd, optional=optional, ignore_unexpected=ignore_unexpected)
    if problem:
        raise UserError(f"{path}: {what} does not match the expected layout ({layout}): {problem}")
    expected = model.state_dict()
    fitted = {}
    for k, ref in expected.items():
        v = sd[k] if k in sd else (defaults or {}).get(k)
        if v is None:
            raise UserError(f"{path}: {what} lacks {k!r} and it has no default ({layout})")
        v = v.detach()
        if v.is_floating_point():
            v = v.float()
        elif ref.dtype != v.dtype:
            v = v.to(ref.dtype)
        fitted[k] = v.contiguous()
    model.load_state_dict(fitted, strict=True, assign=True)
    return model


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()
