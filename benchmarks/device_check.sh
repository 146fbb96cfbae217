#!/usr/bin/env bash
# The one command a session with an NVIDIA GPU (an H200) runs: the Pallas kernel
# tests compiled for the GPU, then the GPU InfoNCE benchmark, then the rest of
# tests/kernels.
#
#   bash benchmarks/device_check.sh     # from anywhere; about 3-7 minutes
#
# Stages, most valuable first, each under `timeout`, all under a total budget
# (DEVICE_CHECK_BUDGET_S, default 450 s) so the run ends well inside a 10-minute
# device call; a stage that fails is reported and the next still runs:
#   1. environment: nvidia-smi, Python, JAX and the devices it sees.
#   2. a JAX with a CUDA backend. If `python3` (or $PYTHON) already has a jax
#      whose default backend is "gpu", it is used as it is: a GPU image without
#      network access (Python 3.12, its own jax build) can install nothing, and
#      the results record the versions that ran. Otherwise (or with
#      MMALIGN_INSTALL=1) a venv gets `pip install -e '.[test]'
#      'jax[cuda12]==<setup.cfg's jax pin>'`, which needs Python 3.11 (setup.cfg's
#      python_requires) and a package index.
#   3. pytest -q tests/kernels/test_pallas.py. No switch is needed for compiled
#      mode: test_pallas.py's _modes() adds the `gpu-compiled` cases whenever
#      jax.default_backend() == "gpu" (the `-interpret` cases run too). This
#      script checks that those cases were collected and fails the stage if not.
#   4. python -m benchmarks.kernels_gpu (N = M = 32768, d = 768, bf16), which
#      writes benchmarks/results/kernels_gpu.{json,md}.
#   5. pytest -q on the rest of tests/kernels (skip with DEVICE_CHECK_REST=0),
#      deselecting the two test_api.py tests that assert a CPU backend
#      (test_auto_is_xla_chunked_on_cpu and
#      test_pallas_on_cpu_uses_gpu_kernels_in_interpret_mode): they fail on any
#      GPU host by design and are covered by CPU CI.
# Output: device_check.log (everything printed), kernels_gpu.json and
# kernels_gpu.md go to $OUT when it is set (the device tool's folder that comes
# back), else to /tmp/mmalign_device_check. Copy the two results files into
# benchmarks/results/ and commit them from the session that ran this.
# Exit status: 0 when every stage passed, 1 otherwise.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BUDGET=${DEVICE_CHECK_BUDGET_S:-450}
LOGDIR=${OUT:-/tmp/mmalign_device_check}
PY=${PYTHON:-python3}
CPU_ONLY_TESTS=(
  "tests/kernels/test_api.py::test_auto_is_xla_chunked_on_cpu"
  "tests/kernels/test_api.py::test_pallas_on_cpu_uses_gpu_kernels_in_interpret_mode"
)
export PYTHONUNBUFFERED=1
mkdir -p "$LOGDIR"

failed=()

left() {  # Seconds of the budget left, never below 10.
  local s=$((BUDGET - SECONDS))
  echo $((s < 10 ? 10 : s))
}

cap() {  # min($1, seconds left)
  local l
  l=$(left)
  echo $(($1 < l ? $1 : l))
}

capped() {  # capped SECONDS COMMAND...: runs it under timeout, says so when the time ran out.
  local limit=$1 rc
  shift
  timeout "$limit" "$@"
  rc=$?
  ((rc == 124)) && printf '\nTIMED OUT after %ss: %s\n' "$limit" "$*"
  return "$rc"
}

stage() {
  echo
  echo "=== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"
}

setup_jax() {
  local pin have
  pin=$(sed -n 's/^[[:space:]]*jax==\([0-9.]*\)[[:space:]]*$/\1/p' setup.cfg)
  if [[ "${MMALIGN_INSTALL:-0}" != 1 ]] &&
      "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    have=$("$PY" -c 'import jax; print(jax.__version__)')
    echo "using the preinstalled jax $have of $("$PY" -c 'import sys; print(sys.executable)')"
    if [[ "$have" != "$pin" ]]; then
      echo "NOTE: setup.cfg pins jax==$pin; this run uses jax $have (recorded in the results)"
    fi
    "$PY" -c 'import absl, numpy, pytest' || { echo "missing absl-py, numpy or pytest"; return 1; }
    return 0
  fi
  echo "no GPU jax on $PY; installing .[test] and jax[cuda12]==$pin into /tmp/mmalign-gpu-venv"
  local base=python3.11
  command -v "$base" >/dev/null || base=$PY
  "$base" -m venv /tmp/mmalign-gpu-venv || return 1
  PY=/tmp/mmalign-gpu-venv/bin/python
  capped "$(cap 300)" "$PY" -m pip install --quiet --retries 1 --timeout 15 \
    -e '.[test]' "jax[cuda12]==$pin" || return 1
  "$PY" -c 'import jax, sys; print(jax.__version__, jax.devices()); sys.exit(jax.default_backend() != "gpu")'
}

stages() {
  stage "1. environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv || echo "nvidia-smi failed"
  git log -1 --format='commit %H %s' 2>/dev/null || true
  git status --short 2>/dev/null | head -20 || true
  "$PY" -c 'import sys, jax; print(sys.version.split()[0], "jax", jax.__version__, jax.devices())' ||
    echo "jax import failed on $PY"
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|triton) ' || true

  stage "2. jax with a CUDA backend"
  if ! setup_jax; then
    echo "FAILED: no JAX with a GPU backend; the GPU stages cannot run"
    failed+=(setup)
    return
  fi

  stage "3. pytest -q tests/kernels/test_pallas.py (compiled on the GPU + interpreted)"
  local compiled
  compiled=$(XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$(cap 60)" "$PY" -m pytest -q \
    --collect-only -p no:cacheprovider tests/kernels/test_pallas.py | grep -c 'gpu-compiled')
  echo "collected ${compiled:-0} gpu-compiled cases"
  if [[ "${compiled:-0}" -eq 0 ]]; then
    echo "FAILED: no gpu-compiled cases collected (pytest's jax does not see a GPU)"
    failed+=(pallas-compiled-collected)
  fi
  XLA_PYTHON_CLIENT_PREALLOCATE=false capped "$(cap 150)" "$PY" -m pytest -q -rfE \
    -p no:cacheprovider --durations=5 tests/kernels/test_pallas.py || failed+=(test_pallas)

  stage "4. python -m benchmarks.kernels_gpu"
  if capped "$(cap 300)" "$PY" -m benchmarks.kernels_gpu --timeout_s=150; then
    cp benchmarks/results/kernels_gpu.json benchmarks/results/kernels_gpu.md "$LOGDIR"/ &&
      echo "copied kernels_gpu.json and .md to $LOGDIR"
    cat benchmarks/results/kernels_gpu.md
  else
    failed+=(benchmark)
  fi

  stage "5. pytest -q the rest of tests/kernels"
  if [[ "${DEVICE_CHECK_REST:-1}" == 0 ]]; then
    echo "skipped (DEVICE_CHECK_REST=0)"
  else
    local deselect=()
    for t in "${CPU_ONLY_TESTS[@]}"; do deselect+=(--deselect "$t"); done
    XLA_PYTHON_CLIENT_PREALLOCATE=false capped "$(left)" "$PY" -m pytest -q -rfE \
      -p no:cacheprovider --durations=5 tests/kernels --ignore=tests/kernels/test_pallas.py \
      "${deselect[@]}" || failed+=(tests_kernels_rest)
  fi
}

main() {
  stages
  echo
  if ((${#failed[@]})); then
    echo "=== [${SECONDS}s] FAILED: ${failed[*]}; log and results in $LOGDIR"
    return 1
  fi
  echo "=== [${SECONDS}s] all stages passed; log and results in $LOGDIR"
}

main 2>&1 | tee "$LOGDIR/device_check.log"
exit "${PIPESTATUS[0]}"
