#!/usr/bin/env bash
# One-call GPU check (issue 16): float32 parity on the GPU, then the train-step table
# (JAX per attention_impl vs torch eager vs torch.compile). Fits one 8-minute `device` run.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run    # anywhere: CPU, tiny cases, checks the plumbing
#
# Needs only what the image holds (jax with CUDA, flax, optax, orbax, torch) and the
# working tree: no installs. Missing imports are reported and their rows skipped.
# Writes into $OUT (default ./gpu_check_out): gpu_check_{parity,bench}.{json,md},
# machine.txt and the stages' logs. Each stage is rewritten after every case, so a stage
# stopped by its time limit keeps what it measured.
#
# Time: parity stops starting cases after PARITY_BUDGET_S and is killed at
# PARITY_LIMIT_S; the bench likewise (BENCH_BUDGET_S, BENCH_LIMIT_S). The defaults
# (120 + 150 s budgets, 170 + 260 s limits) leave ~50 s of the 8 minutes for start-up.

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT="${OUT:-$PWD/gpu_check_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and torch share the GPU: no 75% preallocation by XLA.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=(--dry-run)
  export JAX_PLATFORMS=cpu
  PARITY_LIMIT_S="${PARITY_LIMIT_S:-300}"
  BENCH_LIMIT_S="${BENCH_LIMIT_S:-300}"
elif [[ $# -gt 0 ]]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2
  exit 2
fi

{
  date -u '+%Y-%m-%d %H:%M:%S UTC'
  uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
    || echo "nvidia-smi: not found"
  "$PY" -c 'import jax; print("jax", jax.__version__, jax.default_backend(), jax.devices())' 2>&1
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1
  "$PY" -c 'import jax_triton' 2>/dev/null && echo "jax_triton present" || echo "jax_triton absent (not needed: Pallas lowers to Triton in jaxlib)"
  git rev-parse HEAD 2>/dev/null || echo "not a git checkout"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

status=0
timeout "${PARITY_LIMIT_S:-170}" "$PY" -m bench.gpu_check parity --out "$OUT" \
  --budget-s "${PARITY_BUDGET_S:-120}" "${DRY[@]}" 2>"$OUT/parity.log" || {
  rc=$?; status=$rc; echo "parity stage exited $rc (124: time limit); see $OUT/parity.log" >&2
}
timeout "${BENCH_LIMIT_S:-260}" "$PY" -m bench.gpu_check bench --out "$OUT" \
  --budget-s "${BENCH_BUDGET_S:-150}" "${DRY[@]}" 2>"$OUT/bench.log" || {
  rc=$?; status=$rc; echo "bench stage exited $rc (124: time limit); see $OUT/bench.log" >&2
}
ls -l "$OUT"
exit "$status"
