#!/usr/bin/env bash
# The speed tables on a GPU, plus each optimizer step as a fraction of the HBM roofline.
#
#   bench/gpu.sh            on a machine whose JAX backend is a GPU: runs bench_optim.py,
#                           bench_optim_second_order.py, bench_curvature.py,
#                           bench_sampling.py and roofline.py at full size; results go to
#                           bench/results/gpu/ (the CPU figures in bench/results/ stay),
#                           the console log to bench/results/gpu/gpu.log.
#   bench/gpu.sh --dry-run  any backend (CPU included): the same steps with --quick (tiny
#                           sizes), results in a temporary directory; proves the script works.
#
# The roofline's peak is measured on the device (roofline.py: a streaming y = x + 1 over
# 1 GiB), not taken from a spec sheet. Environment: PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: bench/gpu.sh [--dry-run]" >&2; exit 2 ;;
esac

backend=$("$PY" -c 'import jax; print(jax.default_backend())')
if [[ $dry == 0 && $backend != gpu ]]; then
  echo "gpu.sh: the JAX backend is '$backend', not a GPU; bench/gpu.sh --dry-run checks the script on it" >&2
  exit 2
fi

# The scripts write bench/results/<name>.json next to themselves: run copies of them from a
# scratch directory so that GPU figures never replace the CPU ones, then collect the JSONs.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp bench/*.py "$scratch/"
mkdir -p "$scratch/results"
if [[ $dry == 1 ]]; then
  quick=(--quick)
  dest=$(python3 -c 'import tempfile; print(tempfile.gettempdir())')/jaxdiff-bench-quick/gpu
else
  quick=()
  dest=bench/results/gpu
fi
mkdir -p "$dest"
log=$dest/gpu.log
: > "$log"

run() {
  echo "== $*" | tee -a "$log"
  "$PY" "$@" 2>&1 | tee -a "$log"
}
"$PY" -c 'import jax; d = jax.devices()[0]; print(f"device: {d.device_kind} ({d.platform}), jax {jax.__version__}")' | tee -a "$log"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee -a "$log"
run "$scratch/roofline.py" "${quick[@]}" --out "$dest/roofline.json"
run "$scratch/bench_optim.py" "${quick[@]}"
run "$scratch/bench_optim_second_order.py" "${quick[@]}"
run "$scratch/bench_curvature.py" "${quick[@]}"
run "$scratch/bench_sampling.py" "${quick[@]}"
if [[ $dry == 0 ]]; then
  cp "$scratch"/results/*.json "$dest/" 2>/dev/null || true
fi
echo "gpu.sh: results in $dest" | tee -a "$log"
