#!/usr/bin/env bash
# Create ./.venv with Python 3.8-3.10 and the pinned packages in constraints.txt.
#
# nnabla 1.39.0 ships wheels for CPython 3.8-3.10 only, and Debian 12 ships 3.11 only.
# Order of preference for the interpreter:
#   1. $SGDI_PYTHON, if set;
#   2. a working python3.10 / python3.9 / python3.8 on PATH;
#   3. on Debian as root: Debian 11's python3.9 (see docs/environment.md), plus the
#      distutils/lib2to3 modules that uv and pip need inside a virtual environment.
# Anywhere else it stops and says what to install.
#
# Idempotent: a stamp file records the hash of constraints.txt and setup.cfg; when both are
# unchanged and the venv imports nnabla, the script exits in well under a second.
# Set SGDI_WITH_DATA=1 to also install the Debian Fashion-MNIST package (demo, benchmarks).
#
# GPU (optional): SGDI_CUDA=120 (or 116, 110: the CUDA versions nnabla 1.39.0 has extensions
# for) also installs nnabla-ext-cuda<VERSION>==1.39.0. With SGDI_CUDA=120 the CUDA 12 and
# cuDNN 8 runtime libraries it loads come from NVIDIA's PyPI wheels (pinned below), so only the
# NVIDIA driver is needed on the machine; SGDI_CUDA_LIBS=system uses the system's instead.
# scripts/gpu_check.sh puts those libraries on LD_LIBRARY_PATH (see scripts/cuda_env.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TOOLS="$ROOT/.cache/uv-tool"
UV_VERSION="0.9.30"
STAMP="$VENV/.sgdi-installed"
say() { echo "[env] $*" >&2; }
die() { echo "[env] ERROR: $*" >&2; exit 1; }

CUDA="${SGDI_CUDA:-}"
CUDA_LIBS="${SGDI_CUDA_LIBS:-pip}"
case "$CUDA" in
  ""|110|116|120) ;;
  *) die "SGDI_CUDA=$CUDA: nnabla 1.39.0 has GPU extensions for CUDA 110, 116 and 120 only" ;;
esac
case "$CUDA_LIBS" in
  pip|system) ;;
  *) die "SGDI_CUDA_LIBS=$CUDA_LIBS: use 'pip' (NVIDIA's wheels) or 'system'" ;;
esac
# The CUDA 12.x / cuDNN 8.9 runtime that nnabla-ext-cuda120 1.39.0 links against
# (libcudart.so.12, libcublas.so.12, libcusolver.so.11, libcurand.so.10, libcufft.so.11,
# libcudnn.so.8), as NVIDIA publishes them on PyPI; one consistent CUDA 12.1 set.
CUDA120_LIBS="nvidia-cuda-runtime-cu12==12.1.105 nvidia-cublas-cu12==12.1.3.1
  nvidia-cusolver-cu12==11.4.5.107 nvidia-cusparse-cu12==12.1.0.106
  nvidia-nvjitlink-cu12==12.1.105 nvidia-curand-cu12==10.3.2.106
  nvidia-cufft-cu12==11.0.2.54 nvidia-cudnn-cu12==8.9.2.26"

fingerprint() {
  { cat "$ROOT/constraints.txt" "$ROOT/setup.cfg"; echo "cuda=$CUDA libs=$CUDA_LIBS bytecode=1"; } \
    | sha256sum | cut -d' ' -f1
}

is_root_debian() { [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_data() {
  if [ -d /usr/share/datasets/fashion-mnist ]; then return 0; fi
  if is_root_debian; then
    say "installing Debian package dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
  else
    say "Fashion-MNIST is not installed; on Debian run: apt-get install dataset-fashion-mnist"
  fi
}

if [ "${SGDI_WITH_DATA:-0}" = 1 ]; then install_data; fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] \
   && "$VENV/bin/python" -c "import nnabla" >/dev/null 2>&1; then
  exit 0
fi

works() { "$1" -c 'import sys; assert (3, 8) <= sys.version_info[:2] <= (3, 10)' >/dev/null 2>&1; }
# The real interpreter behind a name (pyenv shims and wrappers resolve to a file path).
realpy() { "$1" -c 'import sys; print(sys.executable)'; }

find_python() {
  if [ -n "${SGDI_PYTHON:-}" ]; then
    works "$SGDI_PYTHON" || die "SGDI_PYTHON=$SGDI_PYTHON is not a working Python 3.8-3.10"
    realpy "$SGDI_PYTHON"; return 0
  fi
  local v cand
  for v in 3.10 3.9 3.8; do
    cand="$(command -v "python$v" 2>/dev/null || true)"
    if [ -n "$cand" ] && works "$cand"; then realpy "$cand"; return 0; fi
  done
  if [ -x /usr/bin/python3.9 ] && works /usr/bin/python3.9; then echo /usr/bin/python3.9; return 0; fi
  return 1
}

install_debian11_python() {
  say "no Python 3.8-3.10 found; installing Debian 11's python3.9 (nnabla has no 3.11 wheels)"
  local list=/etc/apt/sources.list.d/bullseye-python39.list
  if [ ! -f "$list" ]; then
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" > "$list"
    # Never let bullseye replace bookworm packages: only what we ask for comes from it.
    cat > /etc/apt/preferences.d/bullseye-python39 <<'EOF'
Package: *
Pin: release n=bullseye
Pin-Priority: 100
EOF
    apt_updated=0
  fi
  apt_install python3.9
}

# uv and pip inside a venv need distutils; Debian 11's python3-distutils cannot be installed
# beside Debian 12's, so its files are extracted into place (docs/environment.md).
ensure_distutils() {
  "$1" -c 'import distutils.core, lib2to3' >/dev/null 2>&1 && return 0
  if [ "$1" = /usr/bin/python3.9 ] && is_root_debian; then
    say "adding distutils and lib2to3 to python3.9 (extracted from Debian 11's packages)"
    local tmp; tmp="$(mktemp -d)"; chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq python3-distutils=3.9.2-1 python3-lib2to3=3.9.2-1 >/dev/null)
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/x"; done
    cp -r "$tmp/x/usr/lib/python3.9/distutils" "$tmp/x/usr/lib/python3.9/lib2to3" /usr/lib/python3.9/
    rm -rf "$tmp"
  else
    die "$1 lacks distutils, which uv/pip need; install your distribution's python3-distutils"
  fi
}

PY="$(find_python || true)"
if [ -z "$PY" ]; then
  if is_root_debian; then
    install_debian11_python
    PY="$(find_python || true)"
    [ -n "$PY" ] || die "python3.9 from Debian 11 did not install; see docs/environment.md"
  else
    die "nnabla 1.39.0 needs Python 3.8, 3.9 or 3.10 and none was found.
  Install one (e.g. 'apt-get install python3.10', 'brew install python@3.10', or pyenv),
  put it on PATH or set SGDI_PYTHON=/path/to/python3.10, then run 'make env' again."
  fi
fi
ensure_distutils "$PY"
say "using $PY ($("$PY" --version 2>&1))"

if [ ! -x "$TOOLS/bin/uv" ]; then
  say "installing uv $UV_VERSION into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never UV_CACHE_DIR="$ROOT/.cache/uv"

if [ ! -x "$VENV/bin/python" ] || ! works "$VENV/bin/python"; then
  rm -rf "$VENV"
  "$TOOLS/bin/uv" venv -q -p "$PY" "$VENV"
fi
say "installing pinned packages (constraints.txt)"
# [cluster]: Dask distributed for --cluster, so its tests run too (docs/cluster.md).
# --compile-bytecode: uv writes no .pyc by default and the Makefile (like many shells) sets
# PYTHONDONTWRITEBYTECODE, so without it every start compiled nnabla, numpy and the rest again:
# 0.3 s of each command's start-up (docs/measurements.md). uv compiles the whole venv.
"$TOOLS/bin/uv" pip install -q --compile-bytecode -p "$VENV/bin/python" -c "$ROOT/constraints.txt" -e "$ROOT[test,cluster]"
"$VENV/bin/python" -c "import nnabla, numpy; print('[env] nnabla', nnabla.__version__, 'numpy', numpy.__version__)" >&2 \
  || die "nnabla does not import in $VENV"
if [ -n "$CUDA" ]; then
  gpu_pkgs="nnabla-ext-cuda$CUDA==1.39.0"
  if [ "$CUDA" = 120 ] && [ "$CUDA_LIBS" = pip ]; then gpu_pkgs="$gpu_pkgs $CUDA120_LIBS"; fi
  say "installing the GPU extension: $(echo $gpu_pkgs | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one package per word
  "$TOOLS/bin/uv" pip install -q --compile-bytecode -p "$VENV/bin/python" -c "$ROOT/constraints.txt" $gpu_pkgs
  say "GPU extension installed; 'make gpu-check' tests it (needs an NVIDIA GPU and driver)"
fi
fingerprint > "$STAMP"
