"""Benchmark of the per-frame model stage (engines/method/frame_stage.py) and of multi-session batching.

    python -m streamer.bench.model --zoo {default,vox256-random} --device {cpu,cuda} [--json PATH]
        [--backend auto|eager|compile|cuda-graph|tensorrt] [--dtype fp32|fp16|bf16] [--batches 1,4,16]
        [--sessions N [--fps 30] [--seconds 10] [--max-batch 8] [--budget-ms 33]] [--check]

Reports, for one driving frame (the bundled portrait in a 640x480 frame, face ROI from the detector
port): per-stage p50/p95 ms (eager, batch 1, each part timed on its own), the whole stage as one
engine (engines.accel.compile.build_engine; the one-line backend notice is printed) at each batch size with
frames/s, and peak GPU memory (or the process's peak RSS on CPU). `vox256-random` builds random-weight
official-size models (engines.weights.random_weights: StyleGAN2-256 cm1, DECA ResNet-50, A 15->8x512) so it
runs without the user's licensed files; the landmark net is the real shipped one.
--sessions N simulates N cameras at --fps through streamer.reenact.scheduler (each session with its own
avatar slot of random tuned weights): per-frame latency p50/p95 (capture time to output) and whether
every session kept the frame rate. --check builds every backend x precision at batch 1 and reports
each one's error against eager fp32 and its time. Timings: CUDA events on GPU, perf_counter on CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from engines.core.errors import UserError, main_guard
from streamer.bench.machine import cpu_model

ROOT = Path(__file__).resolve().parents[2]
FRAME_HW = (480, 640)


# -- timing ------------------------------------------------------------------------------------------
def _pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


def summarize(ms: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(_pct(ms, 95), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def time_fn(fn, device: torch.device, iters: int = 30, warmup: int = 5) -> dict:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            # steady state: build-time peaks (cudnn.benchmark tries workspaces of GBs) do not count
            torch.cuda.reset_peak_memory_stats(device)
        ms = []
        for _ in range(iters):
            if device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ms.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1000)
    out = summarize(ms)
    if device.type == "cuda":
        out["gpu_run_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


# -- environment -------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                   cuda=torch.version.cuda)
    return env


def memory_report(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1),
                "gpu_peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2 ** 20, 1)}
    return {"cpu_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# -- the stage and its inputs ------------------------------------------------------------------------
def portrait_frame(hw=FRAME_HW) -> np.ndarray:
    from PIL import Image
    h, w = hw
    side = min(h, w)
    im = Image.open(ROOT / "assets" / "astronaut.png").convert("RGB").resize((side, side), Image.BILINEAR)
    frame = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - side) // 2, (w - side) // 2
    frame[y0:y0 + side, x0:x0 + side] = np.asarray(im)
    return frame


def build_stage(zoo: str, device: torch.device, size: int, workdir: str, slots: int, conv_mode: str):
    from engines.method.frame_stage import build_default_stage, build_vox256_random_stage
    if zoo == "default":
        return build_default_stage(device, slots=slots)
    if zoo == "vox256-random":
        stage = build_vox256_random_stage(workdir, size=size, device=device, slots=slots)
        stage.synth.g.set_conv_mode(conv_mode)
        return stage
    raise UserError(f"unknown zoo '{zoo}' (choose default or vox256-random)")


def face_roi(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    from engines.method.frame_stage import FaceTracker
    from engines.models.facedetector import FaceDetectorNet
    tracker = FaceTracker(FaceDetectorNet.from_task().to(device))
    roi = tracker.roi_for(torch.from_numpy(frame).to(device))
    if roi is None:
        raise UserError("the detector port found no face in the benchmark frame")
    return roi


def stage_inputs(stage, frame, roi, batch: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.from_numpy(frame)[None].repeat(batch, 1, 1, 1)
    rois = roi.cpu()[None].repeat(batch, 1)
    if hasattr(stage, "trunc"):
        source = stage.trunc.cpu().reshape(1, 1, -1) + 0.3 * torch.randn(batch, *stage.source_shape, generator=g)
    else:
        source = torch.randn(batch, *stage.source_shape, generator=g)
    p_ref = 0.1 * torch.randn(batch, stage.k, generator=g)
    slot = torch.arange(batch) % stage.bank.slots
    return tuple(t.to(device) for t in (frames, rois, source, p_ref, slot))


def random_tuned(stage, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: (v[0].cpu() + 0.05 * v[0].abs().mean().cpu() * torch.randn(v.shape[1:], generator=g))
            for n in stage.bank.names for v in [stage.bank.get(n)]}


# -- per-part timings (eager, batch 1) ---------------------------------------------------------------
def part_timings(stage, inputs, device, iters, warmup) -> dict:
    from engines.core.views import image_uint8
    from engines.method.frame_stage import DECA_SIZE, deca_roi, frame_to_float
    from engines.models.deca import split_params
    from engines.models.facelandmarker import crop, roi_from_landmarks, uncrop_landmarks
    frame, roi, source, p_ref, slot = inputs
    host = frame.cpu()
    hgt, wid = frame.shape[1:3]
    parts = {}
    with torch.no_grad():
        img = frame_to_float(frame)
        parts["upload"] = lambda: frame_to_float(host.to(device))
        if hasattr(stage, "deca"):
            def landmarks():
                lm_crop, _ = stage.landmarks(crop(img, roi))
                lm = uncrop_landmarks(lm_crop[..., :2], roi)
                return lm, roi_from_landmarks(lm, wid, hgt)
            lm, _ = landmarks()
            droi = deca_roi(lm)
            dcrop = crop(img, droi, DECA_SIZE)
            code = stage.deca.encode_raw(dcrop)

            def latent():
                prm = split_params(code)
                p = stage.directions.normalise(stage.p_from_deca(prm["pose"], prm["exp"]))
                shift = stage.directions(p - p_ref)
                k = shift.shape[1]
                w = torch.cat([source[:, :k] + shift, source[:, k:]], dim=1)
                return stage.trunc + stage.psi * (w - stage.trunc)
            w = latent()
            parts.update(landmarks=landmarks, deca_crop=lambda: crop(img, deca_roi(lm), DECA_SIZE),
                         deca=lambda: stage.deca.encode_raw(dcrop), p_and_latent=latent,
                         generator=lambda: stage.synth(w, slot))
            out = stage.synth(w, slot)
        else:
            lmk = stage.landmarker
            lm_net = lmk.landmark_net

            def landmarks():
                lm_crop, _ = lm_net(crop(img, roi))
                return uncrop_landmarks(lm_crop, roi, image_wh=(wid, hgt))
            lm = landmarks()
            scores = lmk.blendshape_net(lm[..., :2])
            rot = stage.geometry(lm, wid, hgt)

            def latent():
                from engines.method.pose import euler_from_rotation
                p_raw = torch.cat([euler_from_rotation(rot), scores[:, stage.expr_index]], dim=1)
                return source + stage.directions(stage.directions.normalise(p_raw) - p_ref).reshape(source.shape)
            z = latent()
            parts.update(landmarks=landmarks, blendshapes=lambda: lmk.blendshape_net(lm[..., :2]),
                         pose=lambda: stage.geometry(lm, wid, hgt), p_and_latent=latent,
                         generator=lambda: stage.synth(z, slot))
            out = stage.synth(z, slot)
        parts["download"] = lambda: image_uint8(out).cpu()
    return {name: time_fn(fn, device, iters, warmup) for name, fn in parts.items()}


def runtime_reference(frame, iters: int) -> dict | None:
    """MediaPipe's own runtime (the streaming path's Net3D today) on the same frame, CPU only."""
    try:
        from engines.method.net3d import MediaPipeNet3D
        net = MediaPipeNet3D("video")
    except Exception:
        return None
    try:
        ms = []
        for i in range(iters + 3):
            t = time.perf_counter()
            net.read(frame, i * 33)
            if i >= 3:
                ms.append((time.perf_counter() - t) * 1000)
        return summarize(ms)
    finally:
        net.close()


# -- engines -----------------------------------------------------------------------------------------
def prefer_for(backend: str, device: torch.device) -> tuple[str, ...]:
    if backend != "auto":
        return (backend, "eager") if backend != "eager" else ("eager",)
    # compile of the whole stage takes minutes (CPU) / ~1-2 min (GPU): opt in with --backend compile
    return ("tensorrt", "cuda-graph", "eager") if device.type == "cuda" else ("eager",)


def engine_timings(stage, frame, roi, device, batches, dtype, prefer, iters, warmup, log) -> dict:
    from engines.accel.compile import build_engine
    out = {}
    for b in batches:
        ex = stage_inputs(stage, frame, roi, b, device, seed=0)
        chk = stage_inputs(stage, frame, roi, b, device, seed=1)
        fn, info = build_engine(stage, ex, device, dtype, prefer, check_inputs=[chk], name=f"frame-stage b{b}",
                                log=log)
        t = time_fn(lambda: fn(*ex), device, iters, warmup)
        t["fps"] = round(b * 1000.0 / t["p50_ms"], 1)
        t["engine"] = info.to_json()
        out[str(b)] = t
        del fn
    return out


def check_backends(stage, frame, roi, device, dtypes, backends, iters, log) -> list[dict]:
    """Each backend x precision at batch 1: error vs eager fp32 and time (a failed one says why).
    torch.compile of the whole stage takes minutes, so it is checked at the first reduced dtype only."""
    from engines.accel.compile import build_engine
    rows = []
    ex = stage_inputs(stage, frame, roi, 1, device, seed=0)
    chk = stage_inputs(stage, frame, roi, 1, device, seed=1)
    for dtype in dtypes:
        for backend in backends:
            if backend == "compile" and dtype != (dtypes[1] if len(dtypes) > 1 else dtypes[0]):
                continue
            row = {"backend": backend, "dtype": dtype}
            try:
                fn, info = build_engine(stage, ex, device, dtype, (backend,), check_inputs=[chk],
                                        name=f"check {backend}", log=log)
                # the errors of the candidate asked for (and of the precision probe), even when rejected
                tried = [c for c in info.candidates if c["backend"] in (backend, "eager (precision probe)")]
                row.update(chosen=f"{info.backend} {info.dtype}", errors=info.errors, tolerance=info.tolerance,
                           tried=tried, skipped=info.skipped, build_s=round(info.build_s, 1))
                if info.backend == backend and info.dtype == dtype:
                    row.update(time_fn(lambda: fn(*ex), device, iters, 3))
                del fn
            except Exception as e:
                row["failed"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
    return rows


def to_channels_last(stage, inputs) -> dict:
    """Convert the stage's weights to channels-last in place; -> the relative error of its outputs on
    `inputs` against the plain layout (fp32, TF32 off): same maths, so ~1e-6."""
    from engines.accel.compile import exact_fp32, flatten, relative_error
    with torch.no_grad(), exact_fp32():
        ref = flatten(stage(*inputs))
        for t in list(stage.parameters()) + list(stage.buffers()):
            if t.dim() == 4:  # Module.to(memory_format=) refuses the avatar bank's 5-D weight stacks
                t.data = t.data.contiguous(memory_format=torch.channels_last)
        out = flatten(stage(*inputs))
    return {n: relative_error(o, r) for (n, o), (_, r) in zip(out, ref)}


# -- where GPU time goes ---------------------------------------------------------------------------
def kernel_profile(stage, inputs, device, dtype: str, top: int = 25) -> dict:
    """Eager stage at the run precision under torch.profiler: the kernels with the most device time
    (a guide to what to fuse or re-layout next; eager launches every kernel, so the total is the GPU
    work, not the wall time)."""
    from torch.profiler import ProfilerActivity, profile

    from engines.accel.compile import DTYPES
    mod = stage if dtype == "fp32" else stage.with_precision(DTYPES[dtype])
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        for _ in range(3):
            mod(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with profile(activities=acts) as prof:
            for _ in range(5):
                mod(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    events = list(prof.key_averages())
    if device.type == "cuda":
        # op rows (aten::*) carry their kernels' time too: count the kernels only, once
        from torch.autograd import DeviceType
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        events = kernels or [e for e in events if not e.key.startswith("aten::")]
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [(e.key, getattr(e, key, 0.0) / 5e3, e.count // 5) for e in events]
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows)
    rows.sort(key=lambda r: -r[1])
    return {"batch": int(inputs[0].shape[0]), "dtype": dtype, "per_call_ms": round(total, 3),
            "kernels": [{"name": n[:120], "ms": round(ms, 4), "calls": c, "share": round(ms / total, 4)}
                        for n, ms, c in rows[:top]]}


# -- sessions ----------------------------------------------------------------------------------------
def simulate_sessions(stage, frame, roi, device, n: int, fps: float, seconds: float, max_batch: int,
                      budget_ms: float, dtype, prefer, avatars: bool, log, buckets=None) -> dict:
    from engines.models.facedetector import FaceDetectorNet
    from streamer.reenact.scheduler import MicroBatchScheduler, ModelSession, StageRunner
    buckets = tuple(sorted(set(buckets or (b for b in (1, 2, 4, 8, 16, 32) if b < max_batch)) | {max_batch}))
    runner = StageRunner(stage, device, buckets=buckets, prefer=prefer, dtype=dtype, log=log)
    hw = tuple(frame.shape[:2])
    for b in (buckets if runner.static else ()):  # build engines before the clock starts, on the face
        runner.engine(b, hw, stage_inputs(stage, frame, roi, b, device, seed=b))
    detector = FaceDetectorNet.from_task().to(device)
    sched = MicroBatchScheduler(runner.run, max_batch=max_batch, budget_ms=budget_ms)
    sessions = []
    g = torch.Generator().manual_seed(7)
    for i in range(n):
        src = stage_inputs(stage, frame, roi, 1, "cpu", seed=100 + i)[2][0]
        tuned = random_tuned(stage, 200 + i) if avatars and i < stage.bank.slots - 1 else None
        p_src = stage.directions.denormalise(0.1 * torch.randn(stage.k, generator=g).to(device)).cpu()
        sessions.append(ModelSession(sched, runner, src, p_src, tuned=tuned, detector=detector))
    for s in sessions:  # warm: first frame detects, engines and caches settle
        for _ in range(3):
            s.process(frame)
    stats0 = (sched.stats.batches, sched.stats.frames)
    period = 1.0 / fps
    start = time.perf_counter() + 0.05
    end = start + seconds
    lat: list[list[float]] = [[] for _ in range(n)]
    skipped = [0] * n
    faces = [0] * n

    def camera(i):
        t0 = start + period * i / n  # cameras are not in phase
        k = 0
        while True:
            due = t0 + k * period
            if due >= end:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            out = sessions[i].process(frame)
            done = time.perf_counter()
            lat[i].append((done - due) * 1000)
            faces[i] += out.face_found
            nxt = max(k + 1, math.ceil((done - t0) / period))  # a camera does not wait: late frames are lost
            skipped[i] += nxt - k - 1
            k = nxt
    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    sched.close()
    for s in sessions:
        s.close()
    all_lat = [x for v in lat for x in v]
    delivered = [round(len(v) / seconds, 2) for v in lat]
    batches = sched.stats.batches - stats0[0]
    frames = sched.stats.frames - stats0[1]
    res = {"sessions": n, "fps_target": fps, "seconds": seconds, "max_batch": max_batch, "budget_ms": budget_ms,
           "latency": summarize(all_lat) if all_lat else None, "delivered_fps": delivered,
           "skipped_frames": skipped, "face_found_frames": faces,
           "kept_fps": all(d >= 0.97 * fps for d in delivered),
           "mean_batch": round(frames / batches, 2) if batches else 0.0,
           "batch_sizes": {str(k): v for k, v in sorted(sched.stats.sizes.items())},
           "engines": {f"b{k[0]}": v[1].line() for k, v in runner.engines.items() if v[1] is not None}}
    return res


# -- CLI ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m streamer.bench.model", description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", choices=("default", "vox256-random"), default="default")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--size", type=int, default=256, help="vox256-random generator size (256 = the paper's)")
    ap.add_argument("--channels-last", action="store_true",
                    help="store the stage's 4-D weights channels-last (every engine is still checked vs eager fp32)")
    ap.add_argument("--conv-mode", choices=("grouped", "shared"), default="grouped",
                    help="StyleGAN2 modulated-conv form for untuned layers")
    ap.add_argument("--backend", choices=("auto", "eager", "compile", "cuda-graph", "tensorrt"), default="auto")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                    help="default: fp16 on cuda, fp32 on cpu")
    ap.add_argument("--batches", default=None, help="comma list of batch sizes (default: 1,4,16 cuda / 1 cpu)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default 1: on a shared 2-vCPU VM two threads stall on each other)")
    ap.add_argument("--no-parts", action="store_true", help="skip the per-part timings")
    ap.add_argument("--sessions", type=int, default=0, help="simulate N concurrent cameras through the scheduler")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--buckets", default=None,
                    help="comma list of static batch sizes for --sessions (default powers of two up to --max-batch)")
    ap.add_argument("--profile", type=int, default=0,
                    help="profile the eager stage at this batch size (run precision): top CUDA kernels by time")
    ap.add_argument("--budget-ms", type=float, default=None,
                    help="scheduler latency budget (default half a frame period: each session has one frame "
                         "in flight, so latency over one period halves its frame rate)")
    ap.add_argument("--no-avatars", action="store_true", help="sessions without tuned weights")
    ap.add_argument("--check", action="store_true", help="every backend x precision vs eager fp32 at batch 1")
    ap.add_argument("--check-backends", default="eager,cuda-graph,tensorrt,compile",
                    help="backends --check builds (compile only at the first reduced precision)")
    ap.add_argument("--json", default=None, help="write the results here")
    return ap.parse_args(argv)


def _print_table(res: dict) -> None:
    say = print
    say(f"zoo {res['zoo']} on {res['device']} ({res['env'].get('gpu', res['env']['cpu'])}), torch {res['env']['torch']}, "
        f"threads {res['env']['threads']}, load {res['env'].get('load_average')}")
    for name, t in (res.get("parts") or {}).items():
        say(f"  part {name:<13} p50 {t['p50_ms']:8.2f} ms  p95 {t['p95_ms']:8.2f} ms")
    if res.get("parts"):
        say(f"  parts total   p50 {sum(t['p50_ms'] for t in res['parts'].values()):8.2f} ms")
    if res.get("runtime_reference"):
        t = res["runtime_reference"]
        say(f"  mediapipe runtime Net3D (reference) p50 {t['p50_ms']:.2f} ms  p95 {t['p95_ms']:.2f} ms")
    for b, t in (res.get("stage") or {}).items():
        say(f"  stage batch {b:>3}: p50 {t['p50_ms']:8.2f} ms  p95 {t['p95_ms']:8.2f} ms  {t['fps']:8.1f} frames/s  "
            f"[{t['engine']['backend']} {t['engine']['dtype']}]")
    for row in res.get("check") or []:
        tm = f"{row['p50_ms']:.2f} ms" if "p50_ms" in row else "-"
        tried = []
        for c in row.get("tried", []):
            if "errors" in c:
                worst = max(c["errors"], key=c["errors"].get)
                tried.append(f"{c['backend']} {c['dtype']} err {c['errors'][worst]:.1e} ({worst})"
                             f"{'' if c['accepted'] else ' REJECTED'}")
            else:
                tried.append(f"{c['backend']} {c['dtype']}: {c['reason']}")
        say(f"  check {row['backend']:<10} {row['dtype']}: ran {row.get('chosen', row.get('failed'))} {tm}; "
            + "; ".join(tried))
    s = res.get("sessions")
    if s:
        lt = s["latency"] or {}
        say(f"  sessions {s['sessions']} x {s['fps_target']:g} fps: latency p50 {lt.get('p50_ms')} ms p95 {lt.get('p95_ms')} ms, "
            f"mean batch {s['mean_batch']}, delivered {s['delivered_fps']} fps, kept {s['fps_target']:g} fps: {s['kept_fps']}")
    pr = res.get("profile")
    if pr:
        say(f"  profile b{pr['batch']} {pr['dtype']}: {pr['per_call_ms']} ms of kernels per call; top:")
        for k in pr["kernels"][:12]:
            say(f"    {k['ms']:8.3f} ms {100 * k['share']:5.1f}% x{k['calls']:<4} {k['name'][:90]}")
    say(f"  memory {res['memory']}")


@main_guard
def main(argv=None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    torch.set_num_threads(a.threads or (1 if device.type == "cpu" else torch.get_num_threads()))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: pick conv algorithms once, outside graphs
    dtype = a.dtype or ("fp16" if device.type == "cuda" else "fp32")
    batches = [int(x) for x in (a.batches or ("1,4,16" if device.type == "cuda" else "1")).split(",")]
    prefer = prefer_for(a.backend, device)
    lines: list[str] = []

    def log(line):
        lines.append(line)
        print(line, flush=True)
    res = {"zoo": a.zoo, "device": a.device, "env": environment(device), "dtype": dtype, "prefer": list(prefer),
           "frame": list(FRAME_HW)}
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        stage = build_stage(a.zoo, device, a.size, workdir, max(a.sessions + 1, 8), a.conv_mode)
        res["channels_last"] = a.channels_last
        res["build_s"] = round(time.perf_counter() - t0, 1)
        res["parameters_m"] = round(sum(p.numel() for p in stage.parameters()) / 1e6, 2)
        if a.zoo == "default" and getattr(stage.directions, "meta", {}).get("random"):
            res["note"] = "no trained default directions file: random A (speed only)"
        frame = portrait_frame()
        roi = face_roi(frame, device)
        if a.channels_last:  # 4-D weights NHWC: cuDNN then skips its NCHW<->NHWC conversions (H100 profile)
            res["channels_last_error"] = to_channels_last(stage, stage_inputs(stage, frame, roi, 2, device))
        if not a.no_parts:
            res["parts"] = part_timings(stage, stage_inputs(stage, frame, roi, 1, device), device, a.iters, a.warmup)
            if device.type == "cpu" and a.zoo == "default":
                res["runtime_reference"] = runtime_reference(frame, a.iters)
        if a.check:
            reduced = ["fp16", "bf16"] if device.type == "cuda" else ["bf16"]
            res["check"] = check_backends(stage, frame, roi, device, ["fp32"] + reduced,
                                          a.check_backends.split(","), a.iters, log)
            if a.zoo == "vox256-random":
                from engines.accel.avatar_batch import stylegan2_fp16_error
                g = stage.synth.g
                lat = stage_inputs(stage, frame, roi, 4, device)[2]
                res["generator_precision"] = {d: stylegan2_fp16_error(g, lat, 4, getattr(torch, t))
                                              for d, t in (("fp16", "float16"), ("bf16", "bfloat16"))
                                              if device.type == "cuda" or d == "bf16"}
        if batches and batches != [0]:
            res["stage"] = engine_timings(stage, frame, roi, device, batches, dtype, prefer, a.iters, a.warmup, log)
        if a.sessions:
            res["sessions"] = simulate_sessions(stage, frame, roi, device, a.sessions, a.fps, a.seconds, a.max_batch,
                                                a.budget_ms or 500.0 / a.fps, dtype, prefer, not a.no_avatars, log,
                                                [int(x) for x in a.buckets.split(",")] if a.buckets else None)
        if a.profile:
            res["profile"] = kernel_profile(stage, stage_inputs(stage, frame, roi, a.profile, device), device, dtype)
    res["memory"] = memory_report(device)
    res["engine_lines"] = lines
    _print_table(res)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
