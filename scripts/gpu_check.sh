#!/usr/bin/env bash
# One-shot GPU check of the CUDA kernels, for a machine with an NVIDIA GPU, nvcc and a python3
# that holds a CUDA build of torch (no network, no installs):
#   1. builds mmattn._C for the local GPU only (TORCH_CUDA_ARCH_LIST from the device capability);
#   2. runs the CUDA tests (tests/test_cuda.py) and the index tests;
#   3. runs `python -m benchmarks.model` (paper-64, batch 4; with GPU_CHECK_PUBLISHED=PATH, a
#      checkout of researchmm/MM-Diffusion, against the published model in fp16) and
#      `python -m benchmarks.model_profile` (the kernels of one training step), measures the
#      copy bandwidth and bf16 matrix rate of the card, then runs `python -m benchmarks.kernels`
#      case by case (a timeout loses one case, not all);
#   4. with time to spare, runs compute-sanitizer (memcheck, racecheck) over every kernel once;
#   5. writes results.json and results.md (device, each ratio, TFLOP/s, GB/s, targets).
#
#   scripts/gpu_check.sh [OUTDIR]      (default: $OUT, else ./gpu_check_out)
#   GPU_CHECK_CASES="norm:audio-128x25600 ..."  benchmark only these kind:case pairs
#   GPU_CHECK_PROFILE=published:fp16,fused:fp16w  model variants to profile (default fused:fp16w)
#
# OUTDIR receives three files: results.json, results.md and logs.tar.gz (every log and raw
# benchmark file), also when a step fails.
#
# Budget: about 8 minutes on an H100 (GPU_CHECK_BUDGET seconds, default 450); every step runs
# under a timeout cut to what is left. Prints a short summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${1:-${OUT:-gpu_check_out}}
mkdir -p "$FINAL"
FINAL=$(cd "$FINAL" && pwd)
OUTDIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # working files, packed into $FINAL on exit
pack() {
  cp -f "$OUTDIR/results.json" "$OUTDIR/results.md" "$FINAL/" 2> /dev/null
  tar czf "$FINAL/logs.tar.gz" -C "$OUTDIR" .
}
trap pack EXIT
PY=${PYTHON:-python3}
export PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"  # nvcc, compute-sanitizer
BUDGET=${GPU_CHECK_BUDGET:-450}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, also for scripts run from $OUTDIR
START=$SECONDS
STATUS="$OUTDIR/status.txt"
: > "$STATUS"

log() { echo "[gpu_check +$((SECONDS - START))s] $*"; }
note() { echo "$1=$2" >> "$STATUS"; }
# timeout for a step: its own cap, cut to the budget left minus a reserve for the report
step_timeout() {
  local cap=$1 left=$((BUDGET - (SECONDS - START) - 20))
  ((left < cap)) && cap=$left
  ((cap < 5)) && cap=5
  echo "$cap"
}

# ---- 0. environment -------------------------------------------------------------------------
log "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  nvcc --version | tail -1
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
} > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt"
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || { log "no CUDA device"; exit 1; }

# ---- 1. build for this GPU -----------------------------------------------------------------
log "build for sm_${ARCH/./} (log: build.log)"
T0=$SECONDS
TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=16 timeout "$(step_timeout 300)" \
  $PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1
BUILD_RC=$?
note build_seconds $((SECONDS - T0))
note build_rc $BUILD_RC
if [[ $BUILD_RC -ne 0 ]] || ! $PY -c "import mmattn._C as C; assert C.with_cuda" 2>> "$OUTDIR/build.log"; then
  log "BUILD FAILED (rc $BUILD_RC)"; tail -30 "$OUTDIR/build.log"; exit 1
fi

# ---- 2. CUDA tests ------------------------------------------------------------------------------
TEST_FILES="tests/test_cuda.py tests/test_index_cuda_helpers.py"
PYTEST_ARGS=(-q -rfE -p no:cacheprovider --junitxml="$OUTDIR/tests.xml")
# pyproject's addopts need pytest-benchmark; conftest.py imports hypothesis (test_cuda.py needs neither)
$PY -c "import pytest_benchmark" 2> /dev/null || PYTEST_ARGS+=(-o "addopts=-ra")
$PY -c "import hypothesis" 2> /dev/null || PYTEST_ARGS+=(--noconftest)
$PY -c "import pytest_timeout" 2> /dev/null && PYTEST_ARGS+=(--timeout 120)
# one process per few tests: compile-heavy tests run side by side, and a kernel fault that
# poisons one CUDA context costs one worker (restarted), not the rest of the run
$PY -c "import xdist" 2> /dev/null && PYTEST_ARGS+=(-n 6)
if $PY -c "import pytest" 2> /dev/null; then
  log "tests: $TEST_FILES (log: tests.log)"
  T0=$SECONDS
  timeout "$(step_timeout 200)" $PY -m pytest $TEST_FILES "${PYTEST_ARGS[@]}" > "$OUTDIR/tests.log" 2>&1
  note tests_rc $?
  note tests_seconds $((SECONDS - T0))
  tail -25 "$OUTDIR/tests.log"
else
  log "pytest is missing: tests skipped"; note tests_rc skipped
fi

# ---- 3. benchmarks -----------------------------------------------------------------------------
MODEL_ARGS=(--device cuda --batch 4 --repeat 3 --out "$OUTDIR/model.json")
[[ -n ${GPU_CHECK_PUBLISHED:-} ]] && MODEL_ARGS+=(--published "$GPU_CHECK_PUBLISHED")
log "model benchmark: paper-64, batch 4 (log: model.log)"
T0=$SECONDS
timeout "$(step_timeout 240)" $PY -m benchmarks.model "${MODEL_ARGS[@]}" > "$OUTDIR/model.log" 2>&1
note model_rc $?
note model_seconds $((SECONDS - T0))
tail -18 "$OUTDIR/model.log"  # the table: up to 8 variants x 2 modes

log "profile of one training step (log: profile.txt)"
PROFILE_ARGS=(--device cuda --batch 4 --rows 40 --variants ${GPU_CHECK_PROFILE:-fused:fp16w})
[[ -n ${GPU_CHECK_PUBLISHED:-} ]] && PROFILE_ARGS+=(--published "$GPU_CHECK_PUBLISHED")
timeout "$(step_timeout 90)" $PY -m benchmarks.model_profile "${PROFILE_ARGS[@]}" > "$OUTDIR/profile.txt" 2>&1
note profile_rc $?

log "device ceilings: copy bandwidth, bf16 matrix rate"
timeout "$(step_timeout 60)" $PY - > "$OUTDIR/ceilings.json" 2> "$OUTDIR/ceilings.log" <<'EOF'
import json, torch
def bench(fn, reps=20):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        s.record(); fn(); e.record(); e.synchronize(); times.append(s.elapsed_time(e) / 1e3)
    return sorted(times)[len(times) // 2]
src = torch.randn(2**28, device="cuda")  # 1 GiB
dst = torch.empty_like(src)
copy_s = bench(lambda: dst.copy_(src))
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
mm_s = bench(lambda: a @ b, reps=10)
print(json.dumps({"copy_gbps": 2 * src.numel() * 4 / copy_s / 1e9, "bf16_mm_tflops": 2 * 8192**3 / mm_s / 1e12}))
EOF
cat "$OUTDIR/ceilings.json"

run_bench() {  # kind case cap
  local kind=$1 case=$2 cap=$3
  if ((BUDGET - (SECONDS - START) < 45)); then log "no time left for $kind $case"; return; fi
  log "benchmark $kind $case"
  timeout "$(step_timeout "$cap")" $PY -m benchmarks.kernels --device cuda --only "$kind" \
    --cases "$case" --repeat 10 --out "$OUTDIR/bench-$case.json" >> "$OUTDIR/bench.log" 2>&1
  note "bench_${case}_rc" $?
}
# most important first: the paper's largest layer, then the rest
# (GPU_CHECK_CASES="norm:audio-128x25600 attention:ds8" runs only those)
CASES=${GPU_CHECK_CASES:-attention:ds2 norm:video-fl-16x128x64x64 attention:ds4 norm:audio-128x25600 \
attention:ds8 attention:middle norm:video-16x256x32x32}
for kind_case in $CASES; do
  kind=${kind_case%%:*}
  run_bench "$kind" "${kind_case#*:}" $([[ $kind == norm ]] && echo 60 || echo 90)
done

# ---- 4. sanitizers (time permitting) ------------------------------------------------------------
if command -v compute-sanitizer > /dev/null && ((BUDGET - (SECONDS - START) > 80)); then
  cat > "$OUTDIR/sanitize.py" <<'EOF'
# every kernel once on small shapes: tensor-core (bf16, D=64 and 128) and generic (fp32) attention,
# vector and scalar GroupNorm and dropout, forward and backward
import torch, mmattn
torch.manual_seed(0)
from mmattn.nn.attention import split_heads
for dtype, d in ((torch.bfloat16, 64), (torch.float16, 128), (torch.float32, 40)):
    t = [torch.randn(1, 2, n, d, device="cuda", dtype=dtype, requires_grad=True) for n in (3 * 70,) * 3 + (50,) * 3]
    out = mmattn.rs_attention(*t, frames=3, window=2, shift=1)
    sum(o.float().sum() for o in out).backward()
    # head-split views of one qkv projection (token-major outputs and gradients), as RSMultiModalAttention calls it
    qkv = [torch.randn(1, n, 3 * 2 * d, device="cuda", dtype=dtype, requires_grad=True) for n in (3 * 70, 50)]
    out = mmattn.rs_attention(*split_heads(qkv[0], 2), *split_heads(qkv[1], 2), frames=3, window=2, shift=1)
    sum(o.float().sum() for o in out).backward()
for shape, cd in (((2, 8, 64), 1), ((2, 3, 8, 5, 7), 2)):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, device="cuda", requires_grad=True)
    mmattn.group_norm_act(x, 4, w, channel_dim=cd).float().sum().backward()
# channels innermost: frames-last video with vector and scalar columns (24 and 12 channels)
for c in (24, 12):
    x = torch.randn(2, 3, 5, 7, c, device="cuda", dtype=torch.bfloat16).permute(0, 1, 4, 2, 3).requires_grad_()
    w = torch.randn(c, device="cuda", requires_grad=True)
    mmattn.group_norm_act(x, 4, w, channel_dim=2).float().sum().backward()
# seeded dropout, forward and backward (an odd element count: the grid-stride tail)
x = torch.randn(3, 1001, device="cuda", dtype=torch.bfloat16, requires_grad=True)
mmattn.dropout(x, 0.3, seed=5).float().sum().backward()
torch.cuda.synchronize()
print("sanitize workload done")
EOF
  for tool in racecheck memcheck; do  # shared-memory races first
    log "compute-sanitizer --tool $tool"
    # one cudaMalloc per tensor, so that memcheck sees the end of every buffer
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(step_timeout 120)" compute-sanitizer --tool "$tool" \
      --error-exitcode 9 $PY "$OUTDIR/sanitize.py" > "$OUTDIR/sanitizer-$tool.log" 2>&1
    note "sanitizer_${tool}_rc" $?
    tail -3 "$OUTDIR/sanitizer-$tool.log"
  done
fi

# ---- 5. report ------------------------------------------------------------------------------------
log "report"
$PY - "$OUTDIR" <<'EOF'
import glob, json, os, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
status = dict(l.strip().split("=", 1) for l in open(os.path.join(out, "status.txt")) if "=" in l)
env = open(os.path.join(out, "env.txt")).read().strip().splitlines()
try:
    ceil = json.load(open(os.path.join(out, "ceilings.json")))
except Exception:
    ceil = {}
tests = {}
try:
    suite = ET.parse(os.path.join(out, "tests.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests["failed_names"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                             if c.find("failure") is not None or c.find("error") is not None]
except Exception as e:
    tests = {"error": f"no junit xml: {e}"}
rows, device = [], None
for path in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
    payload = json.load(open(path))
    device = payload.get("device", device)
    rows += payload["rows"]

def row(kind, case, mode, impl):
    return next((r for r in rows if (r["kind"], r["case"], r["mode"], r["impl"]) == (kind, case, mode, impl)), None)

PEAK_BF16 = 989.4  # dense bf16 TFLOP/s, H100/H200 SXM datasheet
targets = []
def target(name, value, goal, higher=True):
    ok = None if value is None else (value >= goal if higher else value <= goal)
    targets.append({"target": name, "value": value, "goal": goal, "ok": ok})
for case in ("ds2", "ds4", "ds8", "middle"):
    for base, goal in (("flex", 1.5), ("gather", 20.0)):
        r = row("attention", case, "fwdbwd", base)
        target(f"attention {case} fwd+bwd: {base} time / ours", r and r["speedup"], goal)
r = row("attention", "ds2", "fwdbwd", "mmattn")
target("attention ds2 fwd+bwd: useful TFLOP/s / bf16 peak (989)", r and r["tflops"] / PEAK_BF16, 0.35)
r = row("attention", "ds2", "fwd", "mmattn")
target("attention ds2 fwd: useful TFLOP/s / bf16 peak (989)", r and r["tflops"] / PEAK_BF16, 0.35)
for case in sorted({r["case"] for r in rows if r["kind"] == "norm"}):
    r = row("norm", case, "fwd", "mmattn")
    bw = ceil.get("copy_gbps")
    target(f"norm {case} fwd: GB/s / measured copy bandwidth", r and bw and r["gbps"] / bw, 0.8)
    for base, goal in (("eager", 2.0), ("compile", 1.2)):
        r = row("norm", case, "fwdbwd", base)
        target(f"norm {case} fwd+bwd: {base} time / ours", r and r["speedup"], goal)

try:
    model_rows = json.load(open(os.path.join(out, "model.json")))["rows"]
except Exception:
    model_rows = []
for r in model_rows:
    if r["mode"] == "forward+backward" and r.get("published_over_ours") and not r["variant"].startswith("published"):
        target(f"model {r['variant']} fwd+bwd: published fp16 time / ours", r["published_over_ours"], 3.0)
        target(f"model {r['variant']} fwd+bwd: peak memory / published", r["memory_over_published"], 0.6, higher=False)

result = dict(device=device, env=env, status=status, ceilings=ceil, tests=tests, rows=rows,
              model_rows=model_rows, targets=targets)
json.dump(result, open(os.path.join(out, "results.json"), "w"), indent=2)

fmt = lambda v, f: "" if v is None else format(v, f)
md = [f"# mmattn GPU check: {device}", "", "```", *env, "```", "",
      f"build {status.get('build_seconds', '?')} s (rc {status.get('build_rc')}); status: {status}", "",
      f"tests: {tests}", "",
      f"ceilings: copy {fmt(ceil.get('copy_gbps'), '.0f')} GB/s, bf16 matmul {fmt(ceil.get('bf16_mm_tflops'), '.0f')} TFLOP/s", "",
      "| kind | case | mode | impl | ms | their time / ours | useful TFLOP/s | GB/s | peak extra MiB |",
      "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    md.append(f"| {r['kind']} | {r['case']} | {r['mode']} | {r['impl']} | {r['ms']:.3f} | {r['speedup']:.2f} | "
              f"{fmt(r.get('tflops'), '.1f')} | {fmt(r.get('gbps'), '.0f')} | {r['peak_mb']:.0f} |")
if model_rows:
    md += ["", "| model variant | mode | batch | ms | peak extra MiB | published / this | memory / published |",
           "|---|---|---|---|---|---|---|"]
    for r in model_rows:
        md.append(f"| {r['variant']} | {r['mode']} | {r['batch']} | {r['seconds'] * 1e3:.1f} | "
                  f"{fmt(r['peak_mb'], '.0f')} | {fmt(r.get('published_over_ours'), '.2f')} | "
                  f"{fmt(r.get('memory_over_published'), '.2f')} |")
md += ["", "| target | value | goal | met |", "|---|---|---|---|"]
for t in targets:
    md.append(f"| {t['target']} | {fmt(t['value'], '.3f')} | {t['goal']} | {t['ok']} |")
open(os.path.join(out, "results.md"), "w").write("\n".join(md) + "\n")
print(f"tests: {tests}")
EOF

# ---- summary -----------------------------------------------------------------------------------------
log "done in $((SECONDS - START)) s; results.json, results.md, logs.tar.gz in $FINAL"
sed -n '/^| target/,$p' "$OUTDIR/results.md" 2> /dev/null
tr '\n' ' ' < "$STATUS"; echo
grep -E "passed|failed|error" "$OUTDIR/tests.log" 2> /dev/null | tail -1
