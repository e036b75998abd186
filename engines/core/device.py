"""Which torch device the per-frame models run on (`--device`).

`cpu` (the default), `cuda` / `cuda:N`, or `auto` (the first GPU when this torch build sees one, else
the CPU). A GPU that is asked for but not there is a clear one-line error, not a traceback deep inside
the first frame.
"""
from __future__ import annotations

import torch

from engines.core.errors import UserError

CHOICES_HELP = "cpu (default), cuda, cuda:N, or auto (a GPU when torch sees one)"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "cpu").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {spec}: not a device (use {CHOICES_HELP})") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UserError(f"--device {spec}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        build = torch.__version__
        raise UserError(f"--device {spec}: torch {build} sees no CUDA GPU "
                        f"(install a CUDA build of torch, check the driver, or use --device cpu)")
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def describe(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return "cpu"
