#!/usr/bin/env bash
# The GPU run, in one call on a machine with a CUDA GPU and a CUDA build of torch (no network needed): install
# mprec with its CUDA kernels, run the GPU tests, benchmark the kernels against torch's, profile the
# scheduler's cuda paths and simulate them beside the development CPU's profile.
#
# Prepare it on a development machine first, without a GPU: `make device-prep` builds mprec._C for the GPU
# machine's Python and torch, runs the GPU tests under its Triton, trains and evaluates the three DLRMs, and
# lays all of it in .device/. Copy that folder to the GPU machine with the working tree; the run then compiles
# and trains nothing:
#
#   bash bench/gpu.sh                        # every step, within BUDGET_S seconds (default 540)
#   STEPS="setup test" bash bench/gpu.sh     # some of them
#
# Steps, in this order: setup (install the prebuilt mprec._C, or build one), test (the GPU tests), bench
# (bench_gpu.py), profile (the cuda paths of the three trained models), compose (those paths beside the
# committed 2-core CPU profile, in simulation: no GPU needed, so it can also run elsewhere from the fetched
# profile), and suite (the whole test suite; not in the default steps). Each step gets what is left of the
# budget, and test, bench and profile at most TEST_S (240), BENCH_S and PROFILE_S (200 each) seconds, so a
# slow one ends with its log rather than taking the rest; one that fails does not stop the next, except setup.
# Results go to bench/results/ named after the GPU; with $OUT set (a folder collected after the run), the log
# (gpu-run.txt), the JSON results and the plot are copied there as each step ends.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=${STEPS:-setup test bench profile compose}
BUDGET_S=${BUDGET_S:-540}
DEVICE_DIR=${DEVICE_DIR:-.device}
RESULTS=bench/results
LOGS=${OUT:-$RESULTS}
LOG=$LOGS/gpu-run.txt
mkdir -p "$RESULTS" "$LOGS"
: >"$LOG"
export PYTHONUNBUFFERED=1
START=$(date +%s)
SUMMARY=()

left() { echo $((BUDGET_S - ($(date +%s) - START))); }
say() { echo "$@" | tee -a "$LOG"; }
# Copies a result into $OUT (collected after the call) as soon as it exists.
keep() { if [ -n "${OUT:-}" ] && [ -f "$1" ] && [ "$(dirname "$1")" != "$OUT" ]; then cp "$1" "$OUT/"; fi; }

# The results' name. Set by hand (GPU=name), the steps also run without a GPU: a check of this script, in which
# the GPU's own steps fail.
GPU=${GPU:-$($PY -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else '')")}
if [ -z "$GPU" ]; then
  say "gpu.sh: no CUDA device"
  exit 2
fi
say "gpu.sh: $($PY -c "import platform, torch, triton; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', 'python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__)")"
[ -f "$DEVICE_DIR/manifest.json" ] && say "prepared: $(tr -d '\n ' <"$DEVICE_DIR/manifest.json")"

# The checks a run's mprec must pass: built for this torch, with the CUDA C++ kernels.
CHECK='import torch, mprec, mprec.ops.gpu as g
info = mprec.build_info()
built_for = info["torch_version"]
assert built_for == torch.__version__.split("+")[0], "mprec._C was built for torch " + built_for
assert info["cuda"] and g.cuda_kernels_built(), "the CUDA C++ kernels are not built"
print("mprec", mprec.__version__, "for torch", built_for, "backend", g.backend())'

step_setup() {
  local prebuilt
  prebuilt=$(ls "$DEVICE_DIR"/_C.cpython-*.so 2>/dev/null | head -1)
  local built_from
  built_from=$($PY -c "import json; print(json.load(open('$DEVICE_DIR/manifest.json')).get('sources', ''))" 2>/dev/null)
  if [ -n "$prebuilt" ] && [ "$built_from" != "$(bash bench/ext_sources.sh)" ]; then
    say "the prebuilt $prebuilt was built from other sources than this tree's (make device-prep again): building"
    prebuilt=
  fi
  if [ -n "$prebuilt" ]; then
    # --no-build-isolation: this machine's torch; --no-deps: nothing is fetched.
    if MPREC_PREBUILT=$prebuilt $PY -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . \
        && $PY -c "$CHECK"; then
      return 0
    fi
    say "the prebuilt $prebuilt does not fit this machine: building"
  fi
  MPREC_WITH_CUDA=1 MPREC_BUILD_JOBS=${MPREC_BUILD_JOBS:-$(nproc)} \
    $PY -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . && $PY -c "$CHECK"
}

step_test() {
  # pytest-xdist spreads the Triton compilations over the cores where it is installed.
  local parallel=()
  $PY -c "import xdist" 2>/dev/null && parallel=(-n "${TEST_WORKERS:-8}")
  $PY -m pytest tests/test_ops_gpu.py tests/test_kernels_compile.py tests/test_cuda_sources.py tests/test_bench_gpu.py \
    -q -p no:cacheprovider "${parallel[@]}" -o addopts="-ra"
}

step_bench() {
  $PY bench/bench_gpu.py --out "$RESULTS/$GPU-gpu.json"
  local status=$?
  keep "$RESULTS/$GPU-gpu.json"
  return $status
}

step_profile() {
  local models=$DEVICE_DIR/models data=${DATA_DIR:-$DEVICE_DIR/data}
  if [ ! -f "$models/hybrid.pt" ]; then
    # Not prepared: train here (the development machine's models are the ones its CPU profile was made with).
    say "no prepared models in $models: training on this machine's CPU from $data"
    $PY -m mprec.cli run --train-only --data-dir "$data" --out "$models" || return $?
  fi
  local args=()
  for rep in table dhe hybrid; do
    args+=(--model "$rep=$models/$rep.pt" --accuracy "$rep=$models/eval-$rep.json")
  done
  # The queries are drawn from the validation rows, as on the CPU; the main job's repetitions and budget.
  $PY -m mprec.cli profile "${args[@]}" --data "$data/valid.txt" --backends cuda --repetitions 10 \
    --budget-s 0.4 --out "$RESULTS/$GPU-sched-profile.json"
  local status=$?
  keep "$RESULTS/$GPU-sched-profile.json"
  return $status
}

step_compose() {
  # The CPU-GPU system the scheduler's target speaks of: the 2-core development CPU's profile (committed) with
  # this GPU's paths, in simulation.
  local cpu_profile=${CPU_PROFILE:-$RESULTS/amd-epyc-2t-sched-profile.json}
  $PY -m mprec.cli serve --simulate --profile "$cpu_profile@cpu" --profile "$RESULTS/$GPU-sched-profile.json@cuda" \
    --sla-ms 20 --queries 3000 --json "$RESULTS/$GPU-sched-compose.json" --plot "$RESULTS/$GPU-sched-compose.png"
  local status=$?
  keep "$RESULTS/$GPU-sched-compose.json"
  keep "$RESULTS/$GPU-sched-compose.png"
  return $status
}

step_suite() {
  $PY -m pytest tests -q -x -p no:cacheprovider
}

for step in $STEPS; do
  if ! declare -F "step_$step" >/dev/null; then
    say "gpu.sh: unknown step $step"
    exit 2
  fi
  budget=$(left)
  # No step takes all that is left: a slow test run must not cost the measurements their turn.
  case $step in
    test) cap=${TEST_S:-240} ;;
    bench) cap=${BENCH_S:-200} ;;
    profile) cap=${PROFILE_S:-200} ;;
    *) cap=$budget ;;
  esac
  [ "$cap" -lt "$budget" ] && budget=$cap
  if [ "$budget" -le 10 ]; then
    SUMMARY+=("$(printf '%-8s %-9s %5s s' "$step" "no time" 0)")
    continue
  fi
  say "== $step (${budget} s left)"
  t0=$(date +%s)
  # The step runs in the background of a timeout, so that the budget holds whatever it does.
  export -f "step_$step" say keep
  export PY DEVICE_DIR RESULTS GPU LOG CHECK
  timeout --kill-after=15 "$budget" bash -c "step_$step" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
  case $status in
    0) outcome=ok ;;
    124|137) outcome="timed out" ;;
    *) outcome="failed $status" ;;
  esac
  SUMMARY+=("$(printf '%-8s %-9s %5s s' "$step" "$outcome" $(($(date +%s) - t0)))")
  keep "$LOG"
  if [ "$step" = setup ] && [ "$status" -ne 0 ]; then
    say "gpu.sh: setup failed; nothing else can run"
    break
  fi
done

say ""
say "== summary ($(($(date +%s) - START)) s of $BUDGET_S)"
for line in "${SUMMARY[@]}"; do say "$line"; done
[ -f "$RESULTS/$GPU-gpu.json" ] && $PY bench/summary_gpu.py "$RESULTS/$GPU-gpu.json" 2>&1 | tee -a "$LOG"
keep "$LOG"
