#!/usr/bin/env bash
# The GPU checks of a lent H100/H200 in one call, sized for the device tool's 15 minutes (machine
# start included): build for sm_90, run the CUDA tests, then time the cases behind the GPU targets
# (LayerNorm/RMSNorm bf16 at M = 32K rows and N = 1K-256K, BatchNorm NHWC, GroupNorm) against
# torch eager. torch.compile is left out: compiling each case would take most of the lease.
#
#   device run, timeout_s 600:  bash benchmarks/gpu_session.sh
#
# $OUT receives two files, the log and a tarball of the build log, test report and bench results
# (the tool returns at most 8 files), the tarball rewritten after every stage so that a run cut off
# by the time limit still returns what it finished. The short tables are printed last, where the
# reply's output tail shows them. Unpack the tarball into benchmarks/results/<device>/ and commit it
# with the device, date and this command. Worst case with every stage at its timeout: 9.5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench_out/gpu_session}"
work=$(mktemp -d)
mkdir -p "$out"
exec > >(tee "$out/session.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
stage() { echo "=== [$(($(date +%s) - start))s] $*"; }
pack() { tar czf "$out/gpu_session.tgz" -C "$work" .; }

python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_session.sh: no CUDA GPU visible')" ||
  exit 1
stage "device"
date -u
git log -1 --format='norm_ext %h %s' 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

stage "build (sm_90, $(nproc) jobs)"
if ! NORM_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" timeout 150 python3 setup.py build_ext --inplace \
  >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log"
  pack
  exit 1
fi
grep -m1 "norm_ext:" "$work/build.log" || true

stage "CUDA tests"
timeout 180 python3 -m pytest tests -q -k cuda -p no:cacheprovider -rfE --junitxml="$work/tests.xml"
tests_rc=$?
pack

rows="32768x1024,32768x2048,32768x4096,32768x8192,32768x16384,32768x32768,16384x65536,8192x131072,4096x262144"
bench() {
  local name=$1 limit=$2
  shift 2
  stage "bench $name"
  timeout "$limit" python3 -m norm_ext.bench --device cuda --providers norm_ext,torch --min-time 0.1 \
    --out "$work/$name" "$@"
  pack
}
bench rows 150 --ops layer_norm,rms_norm --dtypes bf16 --pass fwd,bwd --sizes "$rows"
bench conv 90 --ops batch_norm,group_norm --dtypes bf16,fp32 --pass fwd,fwd+bwd \
  --sizes 256x64x56x56,256x256x28x28,32x320x64x64,32x640x32x32

for name in rows conv; do
  [ -f "$work/$name/results.json" ] && python3 benchmarks/make_tables.py "$work/$name/results.json" --summary
done
echo "tests exit status: $tests_rc"
exit "$tests_rc"
