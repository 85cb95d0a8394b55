#!/usr/bin/env bash
# Pipeline vs one GPU vs data parallelism on a multi-GPU host: one JSON line per measurement.
#
#   bash benchmarks/pipeline_gpu.sh                  # all visible GPUs, full-size VGG
#   NUM_GPUS=4 OUT=pipeline_gpu.jsonl bash benchmarks/pipeline_gpu.sh
#   WIDTH=0.5 PROJECTOR=1024-1024-1024 BATCH=256 bash benchmarks/pipeline_gpu.sh
#
# For every stage count 2, 4, 8 (up to NUM_GPUS) it runs benchmarks/pipeline.py on the
# real GPUs (--platform=gpu: no fake devices): the one-program step on one GPU, data
# parallelism over the same GPUs, the synchronous pipeline (per-stage costs, no overlap)
# and the pipelined schedule dispatched from one thread ("ticks": asynchronous dispatch
# overlaps the GPUs) and from one thread per stage ("threads"), plus the ideal bounds.
# Needs: the repository installed (pip install -r requirements.txt -e .) with a CUDA jax
# (pip install "jax[cuda12]==0.10.2").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NUM_GPUS=${NUM_GPUS:-$(nvidia-smi --list-gpus | wc -l)}
WIDTH=${WIDTH:-1.0}
PROJECTOR=${PROJECTOR:-2048-2048-2048}
BATCH=${BATCH:-128}
BATCHES=${BATCHES:-32}
REPEATS=${REPEATS:-3}
BALANCE=${BALANCE:-flops}
OUT=${OUT:-pipeline_gpu_$(date +%Y%m%d_%H%M%S).jsonl}

# Allocate GPU memory on demand: several methods share the GPUs in one process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if (( NUM_GPUS < 2 )); then
  echo "pipeline_gpu.sh: needs at least 2 GPUs, found ${NUM_GPUS}" >&2
  exit 1
fi
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader >&2

for stages in 2 4 8; do
  if (( stages > NUM_GPUS )); then break; fi
  echo "== ${stages} GPUs" >&2
  "$PYTHON" -m benchmarks.pipeline --platform=gpu --devices="${stages}" \
    --width="${WIDTH}" --projector="${PROJECTOR}" --batch_size="${BATCH}" \
    --batches="${BATCHES}" --repeats="${REPEATS}" --balance="${BALANCE}" \
    --methods=one_program,data_parallel,pipeline_synchronous,pipeline_ticks,pipeline_threads \
    | tee -a "${OUT}"
done
echo "results in ${OUT}" >&2
