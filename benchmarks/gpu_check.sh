#!/usr/bin/env bash
# The GPU checks of issue 15 as one command, for a session that is lent a GPU: run it from the repository root
# (it fits one 10-minute device call) and read what it writes under $OUT (at most 8 files come back):
#   1. tests that compile and run every optimizer on the device (structure, dtypes, scan, jit equals eager,
#      traced once), and the fused layout's tests;
#   2. the benchmark's update and leaves sections at --full sizes: step and compile time against Optax at 1 to
#      5000 leaves (the tree path up to MAX_LEAVES), the fused layout, flatten (leaves grouped on the tree path:
#      does grouping pay on this device?) and the fraction of the measured copy bandwidth.
# Usage: bash benchmarks/gpu_check.sh [gpu|cpu]
# cpu is a dry run of the script itself; with SIZES=--quick it takes a few minutes on 2 cores.
set -uo pipefail
device="${1:-gpu}"
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$device" = cpu ]; then export JAX_PLATFORMS=cpu; fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import sys, jax, optax; print('python', sys.version.split()[0], 'jax', jax.__version__, 'optax',
optax.__version__, jax.devices())"; } 2>&1 | tee "$out/versions.txt"

# Tests: every optimizer (all cases: JAXOPT_LITE_TESTS=full), then the fused layout's tests. -x stops at the
# first failure and prints its traceback, so the benchmark still gets its time.
{ JAXOPT_LITE_TESTS=full timeout -s INT "${TEST_SECONDS:-120}" python3 -m pytest -q -x -p no:cacheprovider -n 8 \
    tests/test_properties.py -k "traces_once_and_equals_eager or structure_dtypes_jit_and_scan"
  timeout -s INT 60 python3 -m pytest -q -x -p no:cacheprovider -n 8 tests/test_fused.py
} 2>&1 | grep -v "^[0-9.]*s \(call\|setup\|teardown\)" | tail -n 60 | tee "$out/tests.log"

# The suite writes results.json, report.md and the two speed figures after each section; a timeout (SIGINT)
# keeps the sections done.
timeout -s INT "${BENCH_SECONDS:-330}" python3 -m benchmarks --device "$device" --only update,leaves \
  "${SIZES:---full}" --max-leaves "${MAX_LEAVES:-1000}" --out "$out/bench" 2>&1 | tail -n 80 | tee "$out/bench.log"
