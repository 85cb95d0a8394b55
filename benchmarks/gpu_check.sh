#!/usr/bin/env bash
# One check of a GPU machine, for the day one is lent: everything goes under one folder.
#
#   bash benchmarks/gpu_check.sh                       # -> runs/gpu_check_<date>/ (git-ignored)
#   OUT=runs/gpu_check bash benchmarks/gpu_check.sh
#   VENV=~/venvs/deinforeg-cuda JOBS=16 bash benchmarks/gpu_check.sh
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
#   5. benchmarks/step_time.py on one GPU: the reference VGG and ResNet-18, DeInfoReg and BP,
#      batch 128, float32 and bfloat16 (config.model.dtype), with the fp32 matmul peak; each row
#      has its MFU = XLA's FLOPs per step / median step time / the GPU's dense peak for that dtype
#      (deinforeg_jax/throughput.py: TF32 for float32 at JAX's default precision, bf16 for
#      bfloat16; PEAK_TFLOPS=T: T for every row)             -> step_time.jsonl
#   6. the same for the reference text models (BiLSTM and Transformer, 4 blocks, emb 300, vocab
#      30,000, batch 128) at lengths 350 and 128            -> text_step_time.jsonl
#   7. benchmarks/compile_cache.py: time to the first step of the default job on a cold and on a
#      warm compilation cache (one of each)                 -> compile_cache.jsonl
#   8. benchmarks/pipeline.py on all GPUs, float32 then bfloat16 (pipeline stages: min(GPUs, 4
#      blocks); data parallel over all; with one GPU it measures only the pipeline executor's
#      overhead)                                            -> pipeline.jsonl
#   9. the digits default, python -m launch.train (all GPUs, data parallel) -> digits/
#  10. summary: the tables of steps 5-8 (ms/step and MFU per model, rule and dtype with the
#      bf16 speedup; cold vs warm; pipeline samples/s per dtype), added to summary.md
#                                      -> tables.md, step_time_mfu.json
# Aimed at under 10 minutes on one H100/H200 with a warm pip cache (the CUDA wheels are ~3 GB);
# not yet run on one: the first sitting's total is in summary.md.
# STEPS=tests,step_time,... runs only those steps (names as above: nvidia-smi, install, devices,
# tests, step_time, text_step_time, compile_cache, pipeline, digits, summary); STEP_TIME_FLAGS,
# TEXT_STEP_TIME_FLAGS, CACHE_FLAGS and PIPELINE_FLAGS replace those steps' size flags, DTYPES
# (float32,bfloat16) their dtypes.  Without a GPU (a dry check of the script's logic on a CPU:
# small flags), NO_GPU=1 skips the devices check and PY defaults to the running python3.
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
STEPS=${STEPS:-nvidia-smi,install,devices,tests,step_time,text_step_time,compile_cache,pipeline,digits,summary}
DTYPES=${DTYPES:-float32,bfloat16}
STEP_TIME_FLAGS=${STEP_TIME_FLAGS:-"--models=vgg,resnet18 --rules=deinforeg,bp --batch_size=128 --steps=10 --warmup=2"}
TEXT_STEP_TIME_FLAGS=${TEXT_STEP_TIME_FLAGS:-"--models=lstm,transformer --seq_lens=350,128 --rules=deinforeg,bp --batch_size=128 --steps=5 --warmup=1"}
CACHE_FLAGS=${CACHE_FLAGS:-"--repeats=1"}
PIPELINE_FLAGS=${PIPELINE_FLAGS:-"--width=1.0 --projector=2048-2048-2048 --batch_size=128 --batches=16 --repeats=2"}

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

# step_time_rows FILE FLAGS...: benchmarks.step_time on one GPU, a row per model, rule and dtype.
step_time_rows() {
  local file=$1; shift
  "$PY" -m benchmarks.step_time "$@" --dtype="$DTYPES" --devices=1 \
    --peak_tflops="${PEAK_TFLOPS:-0}" | tee "$OUT/$file"
}

# shellcheck disable=SC2086
step_time() { step_time_rows step_time.jsonl $STEP_TIME_FLAGS --matmul_peak; }
# shellcheck disable=SC2086
text_step_time() { step_time_rows text_step_time.jsonl $TEXT_STEP_TIME_FLAGS; }
# shellcheck disable=SC2086
compile_cache() { "$PY" -m benchmarks.compile_cache $CACHE_FLAGS | tee "$OUT/compile_cache.jsonl"; }

pipeline() {
  local gpus stages dtype rc=0
  gpus=$("$PY" -c "import jax; print(len(jax.devices('$PLATFORM')))") || return 1
  stages=$(( gpus < 4 ? gpus : 4 ))
  : > "$OUT/pipeline.jsonl"
  for dtype in ${DTYPES//,/ }; do
    # shellcheck disable=SC2086
    XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m benchmarks.pipeline --platform="$PLATFORM" \
      --devices="$gpus" --stages="$stages" --dtype="$dtype" $PIPELINE_FLAGS \
      | tee -a "$OUT/pipeline.jsonl" || rc=1
  done
  return "$rc"
}

digits() {
  "$PY" -m launch.train --workdir="$OUT/digits" && test -f "$OUT/digits/results.json" &&
    "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print("digits:", r["best_test_accuracy"], "best test accuracy,", round(r["steps_per_s"], 1), "steps/s")' "$OUT/digits/results.json"
}

# The tables of steps 5-8 from their JSON lines (a step that did not run has no rows there).
summary() {
  "$PY" - "$OUT" <<'EOF' | tee "$OUT/tables.md"
import collections, json, os, sys
out = sys.argv[1]

def lines(name):
  path = os.path.join(out, name)
  return [json.loads(l) for l in open(path) if l.startswith("{")] if os.path.exists(path) else []

def num(value, spec):
  return "n/a" if value is None else format(value, spec)

steps = [r for f in ("step_time.jsonl", "text_step_time.jsonl") for r in lines(f)
         if r["benchmark"] == "step_time"]
dtypes = list(dict.fromkeys(r["dtype"] for r in steps))
both = {"float32", "bfloat16"} <= set(dtypes)
cells = collections.defaultdict(dict)  # (model, seq_len, rule) -> dtype -> row
for r in steps:
  cells[(r["model"], r.get("seq_len"), r["rule"])][r["dtype"]] = r
if cells:
  head = ["model", "length", "rule"] + [f"{d} {c}" for d in dtypes for c in ("ms/step", "MFU")]
  head += ["bf16 speedup"] if both else []
  print("\n| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
  for (model, seq_len, rule), by_dtype in cells.items():
    row = [model, str(seq_len or "-"), rule]
    for d in dtypes:
      r = by_dtype.get(d)
      row += [num(r and r["median_step_s"] * 1e3, ".2f"), num(r and r["mfu"], ".1%")]
    if both:
      f32, bf16 = by_dtype.get("float32"), by_dtype.get("bfloat16")
      row.append(num(f32 and bf16 and f32["median_step_s"] / bf16["median_step_s"], ".2f"))
    print("| " + " | ".join(row) + " |")
  peaks = sorted({(r["dtype"], r["peak_source"]) for r in steps})
  print("\nMFU peaks: " + "; ".join(f"{d}: {source}" for d, source in peaks))
  with open(os.path.join(out, "step_time_mfu.json"), "w") as f:
    json.dump({"rows": steps}, f, indent=2)

for r in lines("compile_cache.jsonl"):
  if r.get("summary"):
    print(f"\nCompilation cache, time to the first step of the default job: cold "
          f"{r['median_cold_s']:.1f} s, warm {r['median_warm_s']:.1f} s "
          f"({r['cold_over_warm']:.2f}x sooner warm)")

pipes = [r for r in lines("pipeline.jsonl") if r["benchmark"] == "pipeline_throughput"]
if pipes:
  print("\n| pipeline method | dtype | devices | stages | samples/s |\n|---|---|---|---|---|")
  for r in pipes:
    print(f"| {r['method']} | {r['dtype']} | {r['devices']} | {r['stages']} | "
          f"{r['samples_per_s']:.1f} |")
EOF
}

run nvidia-smi nvidia-smi
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
if [[ "${NO_GPU:-0}" == 1 ]]; then
  PY=${PY:-python3}
  PLATFORM=cpu
else
  if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then run install install; fi
  PY="$VENV/bin/python"
  PLATFORM=gpu
fi
if [[ "$PLATFORM" == cpu ]] || run devices devices; then
  run tests tests
  run step_time step_time
  run text_step_time text_step_time
  run compile_cache compile_cache
  run pipeline pipeline
  run digits digits
  run summary summary
else
  echo "jax does not see a GPU: the later steps are skipped" | tee -a "$OUT/summary.md"
fi

{
  [[ ",$STEPS," == *",summary,"* ]] && cat "$OUT/tables.md"
  echo
  echo "GPU: ${GPU_NAME:-none found}; total $((SECONDS - start)) s; output in $OUT"
} >> "$OUT/summary.md"
cat "$OUT/summary.md"
if (( ${#failed[@]} )); then
  echo "gpu_check.sh: failed: ${failed[*]}" >&2
  exit 1
fi
