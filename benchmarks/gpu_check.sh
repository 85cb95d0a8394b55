#!/usr/bin/env bash
# One check of a GPU machine, for the day one is lent: everything goes under one folder.
#
#   bash benchmarks/gpu_check.sh                       # -> runs/gpu_check_<date>/ (git-ignored)
#   OUT=runs/gpu_check bash benchmarks/gpu_check.sh
#   VENV=~/venvs/deinforeg-cuda PEAK_TFLOPS=494.7 JOBS=16 bash benchmarks/gpu_check.sh
#
# Steps (each timed, logged to $OUT/<step>.log; a failing step does not stop the later ones,
# the script exits 1 at the end if any failed; $OUT/summary.md has the table):
#   1. nvidia-smi                      -> nvidia-smi.log
#   2. a virtual environment with requirements.txt, this repository (editable) and the CUDA
#      build of the pinned JAX, jax[cuda12]==0.10.2 (VENV: reuse one; SKIP_INSTALL=1: use it as is)
#   3. jax sees the GPUs               -> devices.txt
#   4. the device-independent tests: the suite on JAX's CPU platform (JAX_PLATFORMS=cpu, the fake
#      CPU devices of tests/conftest.py), one pytest per file, JOBS at a time, -m "not slow";
#      tests/test_aot.py is left out (it needs libtpu, which a CUDA environment does not have)
#                                      -> tests/<file>.log, tests.txt
#   5. benchmarks/step_time.py on one GPU (reference VGG and ResNet-18, DeInfoReg and BP, batch
#      128) with the fp32 matmul peak, then MFU = XLA's FLOPs per step / median step time / the
#      GPU's dense TF32 tensor-core peak (float32 matmuls and convolutions run as TF32 at JAX's
#      default precision on Ampere and later)   -> step_time.jsonl, step_time_mfu.json
#   6. benchmarks/pipeline.py on all GPUs (pipeline stages: min(GPUs, 4 blocks); data parallel
#      over all; with one GPU it measures only the pipeline executor's overhead)
#                                      -> pipeline.jsonl
#   7. the digits default, python -m launch.train (all GPUs, data parallel) -> digits/
# Aimed at under 8 minutes on one H100/H200 with a warm pip cache (the CUDA wheels are ~3 GB).
# STEPS=tests,step_time,... runs only those steps (names as above: nvidia-smi, install, devices,
# tests, step_time, pipeline, digits); STEP_TIME_FLAGS replaces step 5's model flags.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

OUT=${OUT:-$repo/runs/gpu_check_$(date +%Y%m%d_%H%M%S)}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
VENV=${VENV:-$OUT/venv}
JOBS=${JOBS:-$(( $(nproc) / 2 > 1 ? $(nproc) / 2 : 1 ))}
TESTS=${TESTS:-$(ls tests/test_*.py | grep -v 'tests/test_aot.py')}
JAX_CUDA=${JAX_CUDA:-"jax[cuda12]==0.10.2"}
STEPS=${STEPS:-nvidia-smi,install,devices,tests,step_time,pipeline,digits}
STEP_TIME_FLAGS=${STEP_TIME_FLAGS:-"--models=vgg,resnet18 --rules=deinforeg,bp --batch_size=128 --steps=20 --warmup=3"}

start=$SECONDS
failed=()
echo "| step | status | seconds |" > "$OUT/summary.md"
echo "|---|---|---|" >> "$OUT/summary.md"

# run NAME CMD...: runs CMD with its output in $OUT/NAME.log (and on screen), records the result;
# a step not in STEPS is skipped (and counts as passed).
run() {
  local name=$1; shift
  [[ ",$STEPS," == *",$name,"* ]] || return 0
  local t0=$SECONDS
  printf '\n==> [%4ds] %s: %s\n' "$((SECONDS - start))" "$name" "$*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local status=ok; (( rc == 0 )) || { status="FAILED (exit $rc)"; failed+=("$name"); }
  echo "| $name | $status | $((SECONDS - t0)) |" >> "$OUT/summary.md"
  return "$rc"
}

install() {
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt -e . "$JAX_CUDA"
  "$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|jax-cuda12)' || true
}

devices() {
  "$PY" - <<'EOF'
import jax
gpus = jax.devices("gpu")
print(f"jax {jax.__version__}: {len(gpus)} GPU(s): {[d.device_kind for d in gpus]}")
EOF
}

# One pytest per test file, JOBS at a time, on the CPU platform; a list of exit codes per file.
tests() {
  mkdir -p "$OUT/tests"
  # shellcheck disable=SC2016
  printf '%s\n' $TESTS | xargs -P "$JOBS" -I{} sh -c '
    log="$1/tests/$(basename "$2" .py).log"
    JAX_PLATFORMS=cpu "$0" -m pytest -q -m "not slow" -p no:cacheprovider "$2" > "$log" 2>&1
    echo "$? $2 $(tail -n 1 "$log")"' "$PY" "$OUT" {} | sort -k2 | tee "$OUT/tests.txt"
  ! grep -q -v -E '^(0|5) ' "$OUT/tests.txt"  # 5: every test of the file is marked slow
}

step_time() {
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.step_time $STEP_TIME_FLAGS --devices=1 --matmul_peak \
    | tee "$OUT/step_time.jsonl" || return 1
  "$PY" - "$OUT/step_time.jsonl" "$OUT/step_time_mfu.json" "$GPU_NAME" "${PEAK_TFLOPS:-}" <<'EOF'
import json, sys
rows_path, out_path, gpu, override = sys.argv[1:5]
# Dense (no sparsity) TF32 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets:
# https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM 494.7, H100 PCIe 378),
# https://www.nvidia.com/en-us/data-center/h200/ (H200: the H100 SXM's compute),
# https://www.nvidia.com/en-us/data-center/a100/ (A100 156).  The sheets print the sparse
# figure (2x); these are half of it.
PEAKS = (("H200", 494.7), ("H100 PCIe", 378.0), ("H100", 494.7), ("A100", 156.0))
peak = float(override) if override else next((p for name, p in PEAKS if name in gpu), None)
rows = [json.loads(line) for line in open(rows_path) if line.startswith("{")]
out = {"gpu": gpu, "peak_tf32_tflops": peak, "rows": []}
for row in rows:
  if row.get("benchmark") != "step_time":
    continue
  flops = row["flops_per_step"]
  entry = {k: row[k] for k in ("model", "rule", "batch_size", "median_step_s", "flops_per_step",
                               "achieved_gflops_per_s", "fraction_of_matmul_peak") if k in row}
  entry["mfu"] = flops / row["median_step_s"] / (peak * 1e12) if peak else None
  out["rows"].append(entry)
  mfu = f"{entry['mfu']:.1%}" if peak else "n/a (set PEAK_TFLOPS)"
  print(f"{row['model']:>9} {row['rule']:>9}: {row['median_step_s'] * 1e3:8.2f} ms/step, "
        f"{flops / 1e9:8.1f} GFLOP/step, {row['achieved_gflops_per_s'] / 1e3:7.3g} TFLOP/s, MFU {mfu}")
json.dump(out, open(out_path, "w"), indent=2)
EOF
}

pipeline() {
  local gpus stages
  gpus=$("$PY" -c 'import jax; print(len(jax.devices("gpu")))') || return 1
  stages=$(( gpus < 4 ? gpus : 4 ))
  XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m benchmarks.pipeline --platform=gpu \
    --devices="$gpus" --stages="$stages" --width=1.0 --projector=2048-2048-2048 --batch_size=128 \
    --batches=16 --repeats=2 | tee "$OUT/pipeline.jsonl"
}

digits() {
  "$PY" -m launch.train --workdir="$OUT/digits" && test -f "$OUT/digits/results.json" &&
    "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print("digits:", r["best_test_accuracy"], "best test accuracy,", round(r["steps_per_s"], 1), "steps/s")' "$OUT/digits/results.json"
}

run nvidia-smi nvidia-smi
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then run install install; fi
PY="$VENV/bin/python"
if run devices devices; then
  run tests tests
  run step_time step_time
  run pipeline pipeline
  run digits digits
else
  echo "jax does not see a GPU: the later steps are skipped" | tee -a "$OUT/summary.md"
fi

{
  echo
  echo "GPU: ${GPU_NAME:-none found}; total $((SECONDS - start)) s; output in $OUT"
} >> "$OUT/summary.md"
cat "$OUT/summary.md"
if (( ${#failed[@]} )); then
  echo "gpu_check.sh: failed: ${failed[*]}" >&2
  exit 1
fi
