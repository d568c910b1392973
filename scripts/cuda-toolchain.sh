#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler pieces from PyPI into .cuda-venv (no system CUDA needed) and,
# when sourced, exports CUDA_BIN / CUDA_INCLUDE / CUDA_LIB and LD_LIBRARY_PATH for them.
#
# Every pin matters: unpinned, pip mixes in 13.5 parts (nvvm, crt) and the compiler then emits
# PTX 9.5, which ptxas 13.0 and the driver of the lent GPUs (580, CUDA 13.0) reject.
#
#   source scripts/cuda-toolchain.sh      # install if missing, then export the paths
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.cuda-venv"
pins=("nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"
      "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*")

if ! compgen -G "$venv/lib/python3*/site-packages/nvidia/cu13/bin/ptxas" >/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
fi
cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
export CUDA_BIN="$cu13/bin"
export CUDA_INCLUDE="$cu13/include"
export CUDA_LIB="$cu13/lib"
export ASYNCTHINK_CUDA_INCLUDE="$CUDA_INCLUDE"
# Once: build.rs watches LD_LIBRARY_PATH, so a script that sources this after another did
# (test-gpu-emulated.sh, then gpu-pack.sh) must see the same value or cargo rebuilds the crate.
case ":${LD_LIBRARY_PATH:-}:" in
    *":$CUDA_LIB:"*) ;;
    *) export LD_LIBRARY_PATH="$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
esac
