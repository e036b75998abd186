"""Benchmark: MediaPipe FaceLandmarker torch port, ms per image (landmark net at batch 1 and 32, the
blendshape and detector nets at batch 1), with LiteRT on the same .tflite at batch 1 for scale.

    python scripts/bench_facelandmarker.py [--threads N] [--device cpu|cuda] [--half]
Prints medians; the CPU is shared with other work, so expect some noise.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engines.core.errors import main_guard  # noqa: E402
from engines.models.facedetector import FaceDetectorNet  # noqa: E402
from engines.models.facelandmarker import BlendshapeNet, LandmarkNet, read_task_file  # noqa: E402
from streamer.bench.timing import median_ms, model_bench_args  # noqa: E402


def litert_ms(name: str, shape, reps: int, threads: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=read_task_file(name), num_threads=threads)
    it.allocate_tensors()
    idx = it.get_input_details()[0]["index"]
    x = np.random.rand(*shape).astype(np.float32)

    def run(_):
        it.set_tensor(idx, x)
        it.invoke()
    return median_ms(run, torch.zeros(1), reps)


@main_guard
def main():
    args, dtype = model_bench_args(__doc__.splitlines()[0])
    dev = args.device
    print(f"device {dev}, dtype {dtype}, threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    lm = LandmarkNet.from_task().to(dev, dtype)
    bs = BlendshapeNet.from_task().to(dev, dtype)
    det = FaceDetectorNet.from_task().to(dev, dtype)
    with torch.inference_mode():
        for batch, reps in ((1, 20), (32, 3)):
            x = torch.rand(batch, 3, 256, 256, device=dev, dtype=dtype)
            print(f"landmark net   batch {batch:2d}: {median_ms(lm, x, reps) / batch:7.2f} ms/image")
        pts = torch.rand(1, 478, 2, device=dev, dtype=dtype) * 256
        print(f"blendshape net batch  1: {median_ms(bs, pts, 20):7.2f} ms/face")
        x = torch.rand(1, 3, 128, 128, device=dev, dtype=dtype) * 2 - 1
        print(f"detector net   batch  1: {median_ms(det.raw, x, 20):7.2f} ms/image")
    try:
        for name, shape in (("face_landmarks_detector.tflite", (1, 256, 256, 3)),
                            ("face_blendshapes.tflite", (1, 146, 2)), ("face_detector.tflite", (1, 128, 128, 3))):
            print(f"LiteRT {name:31s} batch 1: {litert_ms(name, shape, 20, args.threads):7.2f} ms")
    except ImportError:
        print("ai-edge-litert not installed: no LiteRT reference timing")


if __name__ == "__main__":
    main()
