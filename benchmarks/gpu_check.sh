#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU and no TVM compiler (a runtime-only install).
#
#   python benchmarks/gpu_prepare.py            # on the build machine: bundles, kernels, wheels → .gpu/
#   bash .gpu/repo/benchmarks/gpu_check.sh RESULTS   # on the GPU machine (or benchmarks/gpu_check.sh)
#   python benchmarks/gpu_report.py RESULTS/gpu_run.json   # back on the build machine
#
# Installs the carried wheels (tvm-ffi, tritonclient, ...) into a private folder, puts the
# runtime-only TVM (no libtvm_compiler.so) and terrazzo on PYTHONPATH, finds libcudart for
# libtvm_runtime_cuda, then runs benchmarks/gpu_run.py. RESULTS gets gpu_run.json,
# gpu_check.log and the servers' logs. Needs: python3 with numpy (torch for the ceilings).
set -uo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 RESULTS_DIR" >&2
  exit 2
fi
RES=$(realpath -m "$1")
mkdir -p "$RES"
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${TZ_GPU_DIR:-}" ]; then
  ART=$(realpath "$TZ_GPU_DIR")
elif [ -f "$REPO/../predictions.json" ]; then
  ART=$(cd "$REPO/.." && pwd)          # running from the .gpu/repo snapshot
else
  ART="$REPO/.gpu"
fi
if [ ! -f "$ART/predictions.json" ]; then
  echo "gpu_check: no prepared artefacts in $ART (run benchmarks/gpu_prepare.py first)" >&2
  exit 2
fi
exec > >(tee "$RES/gpu_check.log") 2>&1
echo "gpu_check: repo $REPO, artefacts $ART, results $RES, $(date -u +%FT%TZ)"

SITE=$(mktemp -d /tmp/terrazzo-site.XXXXXX)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  "$ART"/site/wheels/*.whl || { echo "gpu_check: installing the carried wheels failed" >&2; exit 2; }
export PYTHONPATH="$ART/site:$SITE:$REPO"
export TVM_USE_RUNTIME_LIB=1         # the compiler library is not carried; say so explicitly
export PYTHONUNBUFFERED=1

# libtvm_runtime_cuda needs libcudart.so.13: the CUDA toolkit's, else the pip one torch uses.
CUDART=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
         /usr/lib/x86_64-linux-gnu; do
  if ls "$d"/libcudart.so.13* >/dev/null 2>&1; then CUDART="$d"; break; fi
done
if [ -z "$CUDART" ]; then
  CUDART=$(python3 - <<'EOF'
import glob, site, os
for p in site.getsitepackages():
    hits = glob.glob(os.path.join(p, "nvidia", "**", "libcudart.so.13*"), recursive=True)
    if hits:
        print(os.path.dirname(hits[0])); break
EOF
)
fi
echo "gpu_check: libcudart from ${CUDART:-nowhere}"
export LD_LIBRARY_PATH="${CUDART:+$CUDART:}${LD_LIBRARY_PATH:-}"
cd "$REPO"   # python's '' / -m path entry is the working directory: make it this terrazzo

python3 - <<'EOF' || { echo "gpu_check: the runtime-only TVM cannot reach the GPU" >&2; exit 3; }
import ctypes, os, sys, tvm, tvm.base
from terrazzo.bundle._runner import load_cuda_runtime
load_cuda_runtime()
assert tvm.base._RUNTIME_ONLY, "the TVM compiler library was loaded"
print("tvm", tvm.__version__, "runtime-only, libraries:", sorted(tvm.base._LOADED_LIBS),
      "cuda:", tvm.cuda(0).exist)
if not tvm.cuda(0).exist:  # say why: the CUDA runtime sidecar did not load
    lib = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
    try:
        ctypes.CDLL(lib)
        print("libtvm_runtime_cuda loads, but TVM sees no CUDA device")
    except OSError as e:
        print("libtvm_runtime_cuda does not load:", e)
    sys.exit(1)
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,temperature.gpu,clocks.sm --format=csv || true

python3 "$REPO/benchmarks/gpu_run.py" --art "$ART" --results "$RES" ${GPU_RUN_ARGS:-}
rc=$?
echo "gpu_check: gpu_run exited $rc"
exit $rc
