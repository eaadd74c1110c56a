#!/usr/bin/env bash
# GPU check (make gpu-check): the oracle tests and the speed benchmark with --context cudnn.
#
# Needs an NVIDIA GPU with its driver and the GPU extension in .venv
# ('SGDI_CUDA=120 make env'). Without them it stops at once with what is missing.
# Writes tests.txt, bench.txt and bench.json to $SGDI_GPU_OUT (default: gpu_check/ here).
#   SGDI_GPU_CONTEXT   context to test (default cudnn, e.g. cudnn:1 for the second GPU)
#   SGDI_GPU_BENCH     extra arguments for benchmarks/replay_speed.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=.venv/bin/python
CONTEXT="${SGDI_GPU_CONTEXT:-cudnn}"
OUT="${SGDI_GPU_OUT:-$ROOT/gpu_check}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package
say() { echo "[gpu-check] $*" >&2; }

# shellcheck source=scripts/cuda_env.sh
source scripts/cuda_env.sh
# Full float32 in cuBLAS/cuDNN (no TF32 rounding), deterministic cuDNN algorithms: the oracle
# tests compare with 1e-4 tolerances.
export NNABLA_CUDA_ALLOW_TF32=0 NVIDIA_TF32_OVERRIDE=0 NNABLA_CUDNN_DETERMINISTIC=1

if ! "$PY" - "$CONTEXT" <<'PYEOF'
import sys
import numpy as np
from sgd_influence_plugin.nnabla_adapter import make_context
try:
    ctx = make_context(sys.argv[1])
    import nnabla as nn
    import nnabla.functions as F
    with nn.context_scope(ctx):
        x = nn.Variable.from_numpy_array(np.arange(6, dtype=np.float32).reshape(2, 3))
        y = F.sum(x * x)
        y.forward()
    assert float(y.d) == 55.0, float(y.d)
    print(f"[gpu-check] context {sys.argv[1]} works: {ctx}", file=sys.stderr)
except Exception as e:  # noqa: BLE001 - ContextError, or a CUDA error of the first run
    print(f"[gpu-check] ERROR: {e}", file=sys.stderr)
    sys.exit(1)
PYEOF
then
  say "the GPU context is not usable here. Install the extension with 'SGDI_CUDA=120 make env'"
  say "(CUDA 12; SGDI_CUDA=116 or 110 for older drivers) on a machine with an NVIDIA GPU and driver."
  exit 1
fi

mkdir -p "$OUT"
say "oracle tests with SGDI_TEST_CONTEXT=$CONTEXT -> $OUT/tests.txt"
set +e
SGDI_TEST_CONTEXT="$CONTEXT" "$PY" -m pytest -q -m "slow or not slow" \
  tests/test_core_oracles.py tests/test_replay_fd.py tests/test_loo_fidelity.py \
  tests/test_adapter.py 2>&1 | tee "$OUT/tests.txt"
tests_rc=${PIPESTATUS[0]}
say "benchmark with --context $CONTEXT -> $OUT/bench.txt"
# shellcheck disable=SC2086 # extra arguments, one per word
"$PY" benchmarks/replay_speed.py --context "$CONTEXT" --out-json "$OUT/bench.json" \
  ${SGDI_GPU_BENCH:-} 2>&1 | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}
set -e
say "tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
