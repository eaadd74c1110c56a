#!/usr/bin/env bash
# Source this file to use the GPU context with the CUDA libraries that
# 'SGDI_CUDA=120 make env' installed from NVIDIA's wheels into .venv:
#     source scripts/cuda_env.sh && .venv/bin/sgd-influence run --context cudnn ...
# It prepends their lib/ folders to LD_LIBRARY_PATH (the dynamic loader reads it only when a
# process starts, so it must be set before Python runs). Without those wheels it changes nothing.
_sgdi_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for _sgdi_lib in "$_sgdi_root"/.venv/lib/python3*/site-packages/nvidia/*/lib; do
  if [ -d "$_sgdi_lib" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$_sgdi_lib:"*) ;;
      *) LD_LIBRARY_PATH="$_sgdi_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
  fi
done
export LD_LIBRARY_PATH
unset _sgdi_root _sgdi_lib
