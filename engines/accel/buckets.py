"""A batched module run at a few fixed batch sizes, which is what CUDA graphs and TensorRT need.

    run = Buckets(module, device, "landmarks", prefer=("tensorrt", "cuda-graph", "eager"))
    out = run(x)          # any batch size up to the largest bucket; outputs cut back to it

A batch is padded to the next bucket by repeating its last row. Each bucket gets its own engine from
engines.accel.compile.build_engine, built on the first real batch of that size and verified against
eager fp32 on it and on its mirror image: a face's error says whether an engine is good enough, a
noise input's does not, and a mirrored batch catches an engine that replays its capture inputs.
Where the chain holds only `eager` (the CPU), the module runs as it is, unpadded.

Weights that change after a build must live in tensors updated in place (the avatar bank does):
a CUDA graph reads them at replay, but TensorRT bakes them in, so a stage with a bank leaves
tensorrt out of `prefer`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from engines.accel.compile import build_engine

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STATIC_BACKENDS = ("tensorrt", "compile", "cuda-graph")


def mirror(t: torch.Tensor) -> torch.Tensor:
    """An input seen in a mirror: images flipped left-right, other batched inputs in reverse order."""
    if t.dim() == 4 and t.is_floating_point():
        return t.flip(-1)
    return t.flip(0)


def cut(out: Any, n: int) -> Any:
    """The first n rows of every tensor in an output (a tensor, tuple, list or dict)."""
    if isinstance(out, torch.Tensor):
        return out[:n]
    if isinstance(out, dict):
        return {k: cut(v, n) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(cut(v, n) for v in out)
    return out


class Buckets:
    def __init__(self, module: torch.nn.Module, device: torch.device, name: str,
                 prefer: Sequence[str] | None = None, buckets: Sequence[int] = BUCKETS,
                 log: Callable[[str], Any] | None = print):
        self.module, self.device, self.name, self.log = module, torch.device(device), name, log
        self.prefer = tuple(prefer) if prefer else (("eager",) if self.device.type == "cpu" else
                                                    ("tensorrt", "cuda-graph", "eager"))
        self.buckets = tuple(sorted(buckets))
        self.engines: dict[tuple, Callable] = {}
        self.built: dict[tuple, str] = {}      # key -> the chosen backend's line, for benchmarks

    @property
    def static(self) -> bool:
        return any(b in STATIC_BACKENDS for b in self.prefer)

    def bucket(self, n: int) -> int:
        """The batch size n runs at; 0 past the largest bucket (load-time measurements), which runs eagerly."""
        for b in self.buckets:
            if b >= n:
                return b
        return 0   # larger than every bucket: run eagerly

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor):
        if not self.static:
            return self.module(*inputs)
        n = inputs[0].shape[0]
        b = self.bucket(n)
        if not b:
            return self.module(*inputs)
        padded = tuple(torch.cat([t, t[-1:].expand(b - n, *t.shape[1:])]) if b > n else t for t in inputs)
        key = tuple((tuple(t.shape), t.dtype) for t in padded)
        if key not in self.engines:
            fn, info = build_engine(self.module, tuple(t.clone() for t in padded), self.device, prefer=self.prefer,
                                    check_inputs=[padded, tuple(mirror(t) for t in padded)],
                                    name=f"{self.name} b{b}", log=self.log)
            self.engines[key], self.built[key] = fn, info.line()
        return cut(self.engines[key](*padded), n)
