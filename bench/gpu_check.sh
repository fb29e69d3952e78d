#!/usr/bin/env bash
# The GPU check: one prepared run of at most 8 minutes on a GPU check machine (STACK.md: an H200,
# Python 3.12, torch+CUDA, no Ray / DeepSpeed / MLflow, no internet). Writes one JSON report:
#
#   bench/gpu_check.sh OUT.json [--wheels DIR] [bench.gpu_check args ...]
#
# --wheels DIR: wheels that travel beside the tree (`make gpu-wheels` builds DeepSpeed's and its
#   pure dependencies' into shared/wheels); installed into a temporary directory on PYTHONPATH, so
#   the engine steps (ZeRO-0, ZeRO-3) run too. Without it they are listed as skipped.
# A corpus cache found under .cache/corpus (carried with the tree) is the training runs' data;
#   else bench.gpu_check falls back to a synthetic Markov corpus.
# The report is rewritten after each section: a run stopped by the time limit keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_check.sh OUT.json [--wheels DIR] [bench.gpu_check args]}
shift
py=${PYTHON:-python3}
if [[ ${1:-} == --wheels ]]; then
    wheels=${2:?--wheels needs a directory}
    shift 2
    [[ -d $wheels ]] || { echo "gpu_check.sh: --wheels: no directory $wheels" >&2; exit 2; }
    target=$(mktemp -d)
    "$py" -m pip install --quiet --no-index --no-deps --target "$target" "$wheels"/*.whl
    export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
fi
data=()
meta=$(find .cache/corpus -name meta.json 2>/dev/null | head -n 1 || true)
[[ -n $meta ]] && data=(--data "$(dirname "$meta")")
export DS_ACCELERATOR=${DS_ACCELERATOR:-cuda}
exec timeout 480 "$py" -m bench.gpu_check --out "$out" --budget-s 400 "${data[@]}" "$@"
