"""Benchmark: SFace torch port, ms per face at batch 1 and 32 (and onnxruntime at batch 1 for scale).

    python scripts/bench_sface.py [--threads N] [--device cpu|cuda] [--half]
Prints medians; the CPU is shared with other work, so expect some noise.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engines.core.errors import main_guard  # noqa: E402
from engines.models.sface import SFace  # noqa: E402
from streamer.bench.timing import median_ms, model_bench_args  # noqa: E402


def median_ms_per_face(fn, x, reps: int) -> float:
    return median_ms(fn, x, reps) / len(x)


@main_guard
def main():
    args, dtype = model_bench_args(__doc__.splitlines()[0])
    model = SFace.from_onnx().to(args.device, dtype)
    print(f"device {args.device}, dtype {dtype}, threads {args.threads}")
    with torch.inference_mode():
        for batch, reps in ((1, 30), (32, 5)):
            x = torch.rand(batch, 3, 112, 112, device=args.device, dtype=dtype)
            print(f"torch port  batch {batch:2d}: {median_ms_per_face(model, x, reps):7.2f} ms/face")
    try:
        import onnxruntime as ort
    except ImportError:
        return
    from engines.core.modelfiles import model_path
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(model_path("sface")), so, providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()}
    run = lambda x: sess.run(None, {**feed, "data": x.numpy()})  # noqa: E731
    print(f"onnxruntime batch  1: {median_ms_per_face(run, torch.rand(1, 3, 112, 112) * 255, 30):7.2f} ms/face")


if __name__ == "__main__":
    main()
