#!/usr/bin/env bash
# Builds `sclip --features cuda` against CUDA 13 for a GPU machine that has a recent driver and
# CUDA 13's libraries but no Rust (this project's GPU machines: driver 580, PyTorch cu130), and
# packs the binary small enough to travel with the working tree.
#
#     tests/gpu/build.sh [OUT_DIR]        # default: gpu-carry/ (add it to .git/info/exclude)
#
# Why not Debian's CUDA 11.8: a binary linked against it needs libcublas.so.11 and
# libcublasLt.so.11 (about 0.5 GB) at run time, which such a machine lacks. NVIDIA's CUDA 13 wheels
# from PyPI hold nvcc, the headers and the libraries in one CUDA_HOME-shaped folder, so the build
# links the same sonames (libcublas.so.13, libcudart.so.13, libcurand.so.10) that the machine's
# Python packages provide. On the GPU machine, put those on LD_LIBRARY_PATH:
#     export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/gpu-carry}
toolkit=${SCLIP_CUDA13_DIR:-$root/target/cuda13-toolkit}
compute_cap=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$toolkit/nvidia/cu13/bin/nvcc" ]; then
    wheels=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 -d "$wheels" \
        'nvidia-cuda-nvcc~=13.0.0' 'nvidia-cuda-crt~=13.0.0' 'nvidia-nvvm~=13.0.0' \
        'nvidia-cuda-cccl~=13.0.0' 'nvidia-cuda-runtime~=13.0.0' 'nvidia-cuda-nvrtc~=13.0.0' \
        'nvidia-cublas~=13.0.0' 'nvidia-curand~=10.4.0'
    python3 -m pip install --quiet --no-deps --no-index --target "$toolkit" "$wheels"/*.whl
    rm -rf "$wheels"
    # The wheels ship only versioned libraries; the linker looks for the plain names.
    (cd "$toolkit/nvidia/cu13/lib" &&
        for lib in cublas cublasLt cudart nvrtc; do ln -sf "lib$lib.so.13" "lib$lib.so"; done &&
        ln -sf libcurand.so.10 libcurand.so)
fi

export CUDA_HOME=$toolkit/nvidia/cu13
export PATH=$CUDA_HOME/bin:$PATH
cd "$root"
CUDA_COMPUTE_CAP=$compute_cap CARGO_TARGET_DIR=$root/target/cuda13 \
    cargo build --release --locked --features cuda

binary=$root/target/cuda13/release/sclip
if readelf -d "$binary" | grep -q 'libcublas.so.11'; then
    echo "error: $binary links CUDA 11's cuBLAS; the GPU machine has CUDA 13's" >&2
    exit 1
fi
mkdir -p "$out"
strip -o "$out/sclip" "$binary"
xz -T0 -6 -f "$out/sclip"
echo "wrote $out/sclip.xz ($(du -h "$out/sclip.xz" | cut -f1)); needs:"
readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/  \1/p'
