#!/usr/bin/env bash
# Compiles the `cuda` feature on a machine with no GPU and no system CUDA toolkit, so the CUDA code
# cannot rot. The CUDA 13.0 compiler, headers and libraries come from NVIDIA's PyPI wheels, laid out
# as a CUDA_HOME under $FASTAI_INFER_CUDA_DIR (default target/cuda13, so `cargo clean` removes it),
# with a generated libcuda stub to link against (SONAME libcuda.so.1: every driver entry point
# cudarc declares, each answering CUDA_ERROR_NO_DEVICE). Where the machine has no driver, binaries
# run by `cargo test`/`cargo run` load the stub, so they start and see no GPU; where it has one,
# they load the real driver.
#
#   bash .ci/cuda.sh                       # cargo clippy --features cuda --all-targets -- -D warnings
#   bash .ci/cuda.sh test --features cuda  # any cargo command, with the toolkit in the environment
#
# The first run takes ~12-15 min on 2 cores, most of it candle-kernels' nvcc step. The kernels are
# built for CUDA_COMPUTE_CAP (default 90: H100/H200, as sm_90a).
set -euo pipefail
cd "$(dirname "$0")/.."

tk=${FASTAI_INFER_CUDA_DIR:-$PWD/target/cuda13}
root=$tk/root
if [ ! -x "$root/bin/nvcc" ] || [ ! -f "$root/lib64/stubs/libcuda.so" ]; then
    echo "== installing the CUDA 13.0 toolchain from PyPI wheels into $tk"
    python3 -m venv "$tk"
    "$tk/bin/pip" install --quiet --disable-pip-version-check \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 \
        nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
    wheels=$(echo "$tk"/lib/python3*/site-packages/nvidia/cu13)
    mkdir -p "$root/lib64/stubs"
    for d in bin nvvm include; do ln -sfn "$wheels/$d" "$root/$d"; done
    for f in "$wheels"/lib/*.so.*; do
        b=$(basename "$f")
        ln -sfn "$f" "$root/lib64/$b"
        ln -sfn "$f" "$root/lib64/${b%%.so*}.so"
    done
    # The stub needs the cudarc sources the lock file pins.
    cargo fetch --locked
    cudarc=$(cargo metadata --format-version 1 --locked --features cuda |
        python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
    cudarc=$(dirname "$cudarc")
    grep -ohP '^\s*pub unsafe fn \Kcu\w+(?=\()' "$cudarc"/src/driver/sys/*.rs | sort -u |
        awk '{print "int " $1 "(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }"}' > "$tk/libcuda_stub.c"
    if [ ! -s "$tk/libcuda_stub.c" ]; then
        echo "error: no driver entry points found in $cudarc/src/driver/sys" >&2
        exit 1
    fi
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$tk/libcuda_stub.c"
    ln -sfn libcuda.so "$root/lib64/stubs/libcuda.so.1"
fi

export CUDA_HOME=$root CUDA_ROOT=$root CUDA_PATH=$root
export PATH=$root/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$root/lib64:$root/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
# The CUDA libraries for binaries cargo runs; the stub driver only where no real one is installed.
export LD_LIBRARY_PATH=$root/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    echo "== no CUDA driver on this machine: binaries run against the stub and see no GPU"
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$root/lib64/stubs
fi
echo "== CUDA toolkit: $(nvcc --version | tail -n 1), compute capability $CUDA_COMPUTE_CAP"

if [ $# -eq 0 ]; then
    set -- clippy --features cuda --all-targets -- -D warnings
fi
echo "== cargo $*"
cargo "$@"
