"""Wall-clock timing of one model call for the benchmarks: a CUDA device is synchronised before and
after, so the time is the work's, not the launch's."""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def once_ms(fn, x, device="cpu") -> float:
    """Milliseconds of one call fn(x)."""
    sync(device)
    t = time.perf_counter()
    fn(x)
    sync(device)
    return (time.perf_counter() - t) * 1e3


def median_ms(fn, x, reps: int, warmup: int = 2) -> float:
    """The median of `reps` calls fn(x) after `warmup` untimed ones (x's device is synchronised)."""
    device = x.device if isinstance(x, torch.Tensor) else "cpu"
    for _ in range(warmup):
        fn(x)
    return statistics.median(once_ms(fn, x, device) for _ in range(reps))


def model_bench_args(description: str) -> tuple[argparse.Namespace, torch.dtype]:
    """The model benchmarks' shared flags (--threads, --device, --half), parsed, with torch's thread
    count set; -> (args, dtype)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args, torch.float16 if args.half else torch.float32
