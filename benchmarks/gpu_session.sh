#!/usr/bin/env bash
# The GPU checks of a lent H100/H200 in one call, and their rehearsal on a CPU.
#
#   device run, timeout_s 600:  NORM_EXT_COMMIT=<sha> bash benchmarks/gpu_session.sh
#   on a CPU (CI does this):    PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh --rehearse
#
# Stages: build (sm_90, MAX_JOBS = the cores), the per-kernel resource table (cuobjdump), the CUDA
# tests, the bench (LayerNorm/RMSNorm bf16 forward and backward at M = 32K rows and N = 1K-32K;
# BatchNorm and GroupNorm; each beside torch eager and torch.compile, with the D2D copy measured in the
# same run), SyncBatchNorm at world size 1, then, if the budget leaves time, compute-sanitizer on the
# row-norm tests. --rehearse runs the same stages on a CPU with the SIMT backend standing in for the
# GPU: the SIMT build, the `simt` tests but the size sweeps, the bench with --device simt at small
# sizes, SyncBatchNorm over gloo; it proves the script and the result files, not the GPU.
#
# Every stage has a timeout; on the GPU their sum stays inside GPU_SESSION_BUDGET_S (390 s), so that
# the machine's start (about a minute) and the call fit in 8 minutes of the device time. torch.compile
# runs with dynamic shapes, one compile per op and pass, since a compile per case would not fit.
#
# The results folder, <device>-<date>/, holds README.md (device, date, commit, command, test summary,
# bench tables), device.txt, build.log, tests.xml, tests-summary.txt, resources/{resources.md,csv},
# rows/ and conv/ (results.csv, results.json, plots/), syncbn.txt and, where it ran, sanitizer.txt.
# $OUT (the device tool's) or bench_out/ receives session.log and gpu_session.tgz, the folder packed
# after every stage so that a run cut off at its limit still returns what it finished: unpack it
# into benchmarks/results/ and commit it. The script fails if a stage failed or a file is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
case "${1:-}" in
  --rehearse) mode=rehearse ;;
  "") ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh [--rehearse]" >&2
    exit 2
    ;;
esac
PY="${PYTHON:-python3}"
budget="${GPU_SESSION_BUDGET_S:-390}"
out="${OUT:-bench_out/gpu_session-$mode}"
mkdir -p "$out"
exec > >(tee "$out/session.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
stage() { echo "=== [$(elapsed)s] $*"; }
failures=()

if [ "$mode" = gpu ]; then
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_session.sh: no CUDA GPU visible (--rehearse runs it on a CPU)')" ||
    exit 1
  device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  bench_device=cuda
  test_filter=cuda
  test_marks=()
else
  "$PY" -c "import torch" || exit 1
  device="SIMT host build on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  bench_device=simt
  test_filter=simt
  # CI's first stage ran every SIMT test on these sources already; the rehearsal leaves out the
  # size sweeps (the size_sweep marker of pyproject.toml), two thirds of the SIMT tests' time.
  test_marks=(-m "not size_sweep")
fi
date=$(date -u +%Y-%m-%d)
slug=$([ "$mode" = gpu ] && echo "$device" || echo simt-rehearsal)
slug=$(echo "$slug" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9\n' '-' | sed 's/--*/-/g; s/^-//; s/-$//')
name="$slug-$date"
work=$(mktemp -d)
res="$work/$name"
mkdir -p "$res"
export NORM_EXT_COMMIT="${NORM_EXT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
pack() { tar czf "$out/gpu_session.tgz" -C "$work" "$name"; }

# timed LIMIT NAME CMD...: runs CMD with a timeout, records a failure, packs the results.
timed() {
  local limit=$1 what=$2
  shift 2
  timeout "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] && echo "$what: stopped at its ${limit}s limit"
  [ "$rc" -ne 0 ] && failures+=("$what (exit $rc)")
  pack
  return "$rc"
}

# limits per mode: build, resources, tests, rows bench, conv bench, syncbn
if [ "$mode" = gpu ]; then
  limits=(140 15 90 80 40 25)
  rows_sizes="32768x1024,32768x2048,32768x4096,32768x8192,32768x16384,32768x32768"
  conv_sizes="256x64x56x56,32x320x64x64"
  bench_timing=(--min-time 0.1)
else
  limits=(2400 120 1200 600 600 300)
  rows_sizes="16x1024,4x8192"
  conv_sizes="4x32x8x8"
  bench_timing=(--min-time 0 --reps 2 --warmup 0)
fi

stage "device: $device ($mode)"
{
  echo "device: $device"
  echo "mode: $mode$([ "$mode" = rehearse ] && echo ' (the SIMT backend stands in for the GPU; no GPU figure here)')"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $NORM_EXT_COMMIT"
  echo "command: bash benchmarks/gpu_session.sh${1:+ $1}"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "cpu cores: $(nproc)"
  command -v nvcc >/dev/null && nvcc --version | tail -1
  [ "$mode" = gpu ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} | tee "$res/device.txt"

stage "build (sm_90, $(nproc) jobs$([ "$mode" = rehearse ] && echo ', with the SIMT backend'))"
simt_flag=$([ "$mode" = rehearse ] && echo 1 || echo 0)
if ! timed "${limits[0]}" build env NORM_EXT_CUDA=1 NORM_EXT_SIMT="$simt_flag" TORCH_CUDA_ARCH_LIST=9.0 \
  MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace >"$res/build.log" 2>&1; then
  tail -40 "$res/build.log"
  exit 1
fi
grep "^norm_ext:" "$res/build.log" || true

stage "kernel resources (cuobjdump)"
timed "${limits[1]}" resources "$PY" benchmarks/kernel_resources.py --so "$(ls norm_ext/_C*.so)" --out "$res/resources"

stage "CUDA tests (-k $test_filter)"
parallel=()
if [ "$mode" = gpu ] && "$PY" -c "import xdist" 2>/dev/null; then
  parallel=(-n 8)
fi
timed "${limits[2]}" tests "$PY" -m pytest tests -q -k "$test_filter" "${test_marks[@]}" -p no:cacheprovider -rfE \
  "${parallel[@]}" --junitxml="$res/tests.xml"
"$PY" - "$res/tests.xml" "$test_filter" >"$res/tests-summary.txt" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    cases = list(ET.parse(sys.argv[1]).iter("testcase"))
except (OSError, ET.ParseError) as e:
    print(f"pytest -k {sys.argv[2]}: no test report ({e})")
    sys.exit(1)
outcome = {"passed": [], "failed": [], "skipped": []}
for c in cases:
    kind = "failed" if c.find("failure") is not None or c.find("error") is not None else (
        "skipped" if c.find("skipped") is not None else "passed")
    outcome[kind].append(f"{c.get('classname')}::{c.get('name')}")
print(f"pytest -k {sys.argv[2]}: {len(cases)} run, {len(outcome['passed'])} passed, "
      f"{len(outcome['failed'])} failed, {len(outcome['skipped'])} skipped")
for test in outcome["failed"]:
    print(f"FAILED {test}")
PY
cat "$res/tests-summary.txt"
pack

bench() {
  local what=$1 limit=$2
  shift 2
  stage "bench $what"
  timed "$limit" "bench $what" "$PY" -m norm_ext.bench --device "$bench_device" \
    --providers norm_ext,torch,torch.compile --compile-shapes dynamic "${bench_timing[@]}" --out "$res/$what" "$@"
}
bench rows "${limits[3]}" --ops layer_norm,rms_norm --dtypes bf16 --pass fwd,bwd --sizes "$rows_sizes"
bench conv "${limits[4]}" --ops batch_norm,group_norm --dtypes bf16 --pass fwd,fwd+bwd --sizes "$conv_sizes"

stage "SyncBatchNorm, world size 1"
syncbn_args=(--world-size 1 --steps 10)
[ "$mode" = rehearse ] && syncbn_args=(--world-size 1 --steps 2 --cpu)
timed "${limits[5]}" syncbn "$PY" benchmarks/bench_syncbn.py "${syncbn_args[@]}" >"$res/syncbn.txt" 2>&1
cat "$res/syncbn.txt"

if [ "$mode" = gpu ]; then
  left=$((budget - $(elapsed)))
  if [ "$left" -ge 45 ] && command -v compute-sanitizer >/dev/null; then
    stage "compute-sanitizer memcheck on the row-norm CUDA tests (${left}s left)"
    timeout "$left" compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m pytest tests/test_row_norm.py -q \
      -k cuda -x -p no:cacheprovider >"$res/sanitizer.txt" 2>&1
    echo "compute-sanitizer exit $? (124: cut at the budget)" | tee -a "$res/sanitizer.txt"
    tail -5 "$res/sanitizer.txt"
    pack
  else
    echo "compute-sanitizer: skipped, ${left}s of the budget left"
  fi
fi

stage "summary"
{
  echo "# GPU session: $device"
  echo
  echo '```'
  cat "$res/device.txt"
  echo '```'
  echo
  echo "Tests: $(head -1 "$res/tests-summary.txt")"
  for what in rows conv; do
    if [ -f "$res/$what/results.json" ]; then
      echo
      "$PY" benchmarks/make_tables.py "$res/$what/results.json" --summary
    fi
  done
  echo
  echo "SyncBatchNorm (world size 1):"
  echo '```'
  cat "$res/syncbn.txt"
  echo '```'
} >"$res/README.md"
cat "$res/README.md"

missing=()
for f in README.md device.txt build.log tests.xml tests-summary.txt resources/resources.md resources/resources.csv \
  rows/results.csv rows/results.json conv/results.csv conv/results.json syncbn.txt; do
  [ -s "$res/$f" ] || missing+=("$f")
done
for what in rows conv; do
  ls "$res/$what/plots/"*.png >/dev/null 2>&1 || missing+=("$what/plots/*.png")
done
pack
echo "results: $name/ in $out/gpu_session.tgz (unpack into benchmarks/results/)"
[ "${#missing[@]}" -eq 0 ] || failures+=("missing result files: ${missing[*]}")
if [ "${#failures[@]}" -ne 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "gpu_session.sh: every stage passed in $(elapsed)s"
