"""Benchmark: the default zoo's DCGAN on the CPU, ms per frame, torch eager against ONNX Runtime.

    python scripts/bench_generator_cpu.py [--threads N] [--reps 200]
Side by side in one run, alternating, medians: eager NCHW, eager channels-last (what the stage ran
before), and the ONNX Runtime session the generator stage runs now (engines.accel.onnx_cpu).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engines.accel.onnx_cpu import OrtGenerator  # noqa: E402
from engines.core.errors import main_guard  # noqa: E402
from engines.models.dcgan import DCGAN  # noqa: E402
from streamer.bench.machine import cpu_model  # noqa: E402
from streamer.bench.timing import once_ms  # noqa: E402


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    nchw = DCGAN.from_checkpoint()
    forms = {"torch eager NCHW": nchw.synthesize,
             "torch eager channels-last": DCGAN.from_checkpoint().for_streaming().synthesize,
             "onnxruntime": OrtGenerator(nchw, args.threads).synthesize}
    print(f"{cpu_model()}, torch {torch.__version__}, {args.threads} thread(s)")
    for batch in (1, 8):
        z = torch.randn(batch, 100)
        times = {k: [] for k in forms}
        with torch.inference_mode():
            for fn in forms.values():
                for _ in range(10):
                    fn(z)
            for _ in range(args.reps):
                for k, fn in forms.items():
                    times[k].append(once_ms(fn, z))
        for k, ts in times.items():
            print(f"batch {batch}: {k:27s} {statistics.median(ts) / batch:6.2f} ms per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
