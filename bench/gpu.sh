#!/usr/bin/env bash
# The GPU run, in one call on a machine with a CUDA GPU and a CUDA build of torch (no network needed):
# build mprec against that torch (with the CUDA C++ kernels), run the tests on CUDA, benchmark the kernels
# against torch's, profile the scheduler's cuda paths and simulate them beside the development CPU's. Results go to bench/results/ named after the
# GPU, and to $OUT when it is set (a folder that is collected after the run).
#
#   bash bench/gpu.sh            # everything
#   STEPS="build test" bash bench/gpu.sh
#
# The steps can also run as separate commands on the same machine, the build staying installed between them:
# STEPS="build test", then STEPS="bench profile compose".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=${STEPS:-build test bench profile compose}
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
RESULTS=bench/results
LOGS=${OUT:-$RESULTS}
mkdir -p "$RESULTS" "$LOGS"

for step in $STEPS; do
  case $step in
    build)
      # --no-build-isolation: compile against this machine's torch; --no-deps: nothing is fetched.
      MPREC_WITH_CUDA=1 MPREC_BUILD_JOBS=${MPREC_BUILD_JOBS:-16} \
        $PY -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -5
      $PY -c "import mprec.ops.gpu as g; print('backend', g.backend(), 'cuda kernels built', g.cuda_kernels_built())"
      ;;
    test)
      # The GPU tests, then the whole suite (CPU tests run here too: the build must be sound on both).
      $PY -m pytest tests/test_ops_gpu.py tests/test_cuda_sources.py -q -p no:cacheprovider 2>&1 | tee "$LOGS/gpu-tests.txt" | tail -15
      $PY -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -5
      ;;
    bench)
      $PY bench/bench_gpu.py --out "$RESULTS/$GPU-gpu.json" 2>&1 | tee "$LOGS/gpu-bench.txt"
      ;;
    profile)
      # Train the three representations on the bundled sample, then profile every path on this machine
      # (its CPU and its GPU): the profile the scheduler composes CPU-GPU systems from.
      # DATA_DIR: a folder with the sample's train.txt and valid.txt, where the default one is absent.
      $PY -m mprec.cli run --out "$LOGS/mprec-run" ${DATA_DIR:+--data-dir "$DATA_DIR"} 2>&1 | tail -30
      cp "$LOGS/mprec-run/profile.json" "$RESULTS/$GPU-sched-profile.json"
      ;;
    compose)
      # The CPU-GPU system the scheduler's target speaks of: the 2-core development CPU's profile (committed)
      # with this GPU's paths, in simulation; the profile step's run above is this machine's own CPU + GPU.
      CPU_PROFILE=${CPU_PROFILE:-$RESULTS/amd-epyc-2t-sched-profile.json}
      $PY -m mprec.cli serve --simulate --profile "$CPU_PROFILE@cpu" --profile "$RESULTS/$GPU-sched-profile.json@cuda" \
        --sla-ms 20 --queries 3000 --json "$RESULTS/$GPU-sched-compose.json" --plot "$RESULTS/$GPU-sched-compose.png" \
        2>&1 | tee "$LOGS/gpu-compose.txt" | tail -40
      ;;
    *) echo "gpu.sh: unknown step $step" >&2; exit 2 ;;
  esac
done
