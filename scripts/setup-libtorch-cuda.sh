#!/usr/bin/env bash
# `scripts/setup-libtorch.sh --cuda`: the CUDA 13.0 libtorch 2.13 for the tch plugin, cut from
# PyPI's torch==2.13.0 (a CUDA 13.0 build) and the NVIDIA wheels it pins, once per user. No GPU
# and no system CUDA toolkit are needed to install it or to build against it.
#
# Layout ($root = $ADP_LIBTORCH_CACHE/2.13.0-cu130): $root/torch/{include,lib} is LIBTORCH, and
# $root/nvidia/{cu13,cudnn,nccl,cusparselt,nvshmem}/lib sit where the libraries' own RUNPATH
# ($ORIGIN/../../nvidia/...) looks, as in a Python site-packages: nothing needs LD_LIBRARY_PATH
# to load, though --print-env sets it too for tools that dlopen by name.
# Kept: the NEEDED closure of libtorch.so (which pulls libtorch_cuda.so), of the libraries torch
# dlopens itself (libtorch_cuda_linalg, libcaffe2_nvrtc) and of what cuDNN and NVRTC dlopen (its
# engine libraries, libnvrtc-builtins). Dropped: Python bindings, static archives, profiler and
# multi-GPU extras nothing loads (nvshmem's transports, cusolverMg, cufftw, nvblas, nvperf).
#
# Idempotent: a finished install is marked by $root/.adp-complete and reused.
# Usage: eval "$(scripts/setup-libtorch.sh --cuda --print-env)"   or   scripts/setup-libtorch.sh --cuda
# Honours: LIBTORCH (an existing libtorch with lib/libtorch_cuda.so is used as is),
#          ADP_LIBTORCH_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/adp/libtorch).
set -euo pipefail

TORCH_VERSION=2.13.0
print_env=0
for arg in "$@"; do [ "$arg" = "--print-env" ] && print_env=1; done
log() { echo "setup-libtorch: $*" >&2; }

if [ -n "${LIBTORCH:-}" ] && [ -f "$LIBTORCH/lib/libtorch_cuda.so" ] && [ ! -f "$LIBTORCH/../.adp-complete" ]; then
  log "using the CUDA libtorch at $LIBTORCH"
  libtorch="$LIBTORCH"
  libdirs="$LIBTORCH/lib"
else
  cache="${ADP_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/adp/libtorch}"
  root="$cache/$TORCH_VERSION-cu130"
  if [ -f "$root/.adp-complete" ]; then
    log "cached CUDA libtorch $TORCH_VERSION at $root"
  else
    command -v python3 >/dev/null || { log "python3 (with pip) is needed to fetch the wheels"; exit 1; }
    command -v readelf >/dev/null || { log "readelf (binutils) is needed to prune the libraries"; exit 1; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/adp-libtorch-cuda.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # torch==2.13.0's pins (its cuda-toolkit==13.0.3 extras, nvjitlink kept on the 13.0 line).
    # Hashes: the manylinux x86_64 wheels pip picks (torch: CPython 3.11, manylinux_2_28).
    cat >"$work/requirements.txt" <<'REQ'
torch==2.13.0 --hash=sha256:60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cupti==13.0.85 --hash=sha256:4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.1.1.3 --hash=sha256:37936a16db8fe4ac1f065c2139360608a543a09275cb1a1af612e08cfa065436
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cufft==12.0.0.61 --hash=sha256:6c44f692dce8fd5ffd3e3df134b6cdb9c2f72d99cf40b62c32dde45eea9ddad3
nvidia-cufile==1.15.1.6 --hash=sha256:08a3ecefae5a01c7f5117351c64f17c7c62efa5fffdbe24fc7d298da19cd0b44
nvidia-cusolver==12.0.4.66 --hash=sha256:0a759da5dea5c0ea10fd307de75cdeb59e7ea4fcb8add0924859b944babf1112
nvidia-cusparse==12.6.3.3 --hash=sha256:2b3c89c88d01ee0e477cb7f82ef60a11a4bcd57b6b87c33f789350b59759360b
nvidia-nvjitlink==13.0.88 --hash=sha256:13a74f429e23b921c1109976abefacc69835f2f433ebd323d3946e11d804e47b
nvidia-cudnn-cu13==9.20.0.48 --hash=sha256:0c45dd8eeb50b603f07995b1b300c62ffe6a1980482b82b3bcf94a4ca9d49304
nvidia-cusparselt-cu13==0.8.1 --hash=sha256:786ce87568c303fadb5afcc7102d454cd3040d75f6f8626f5db460d1871f4dd0
nvidia-nccl-cu13==2.29.7 --hash=sha256:edd81538446786ec3b73972543e53bb43bcaf0bfc8ef76cb679fcc390ffe136d
nvidia-nvshmem-cu13==3.4.5 --hash=sha256:290f0a2ee94c9f3687a02502f3b9299a9f9fe826e6d0287ee18482e78d495b80
REQ
    log "downloading torch==$TORCH_VERSION and its NVIDIA CUDA 13.0 wheels (about 2.3 GB)"
    python3 -m pip download -q --no-deps --only-binary=:all: --require-hashes --python-version 3.11 \
      $(for t in manylinux_2_28 manylinux_2_27 manylinux_2_25 manylinux_2_18 manylinux_2_17 manylinux2014 \
        manylinux_2_12 manylinux2010; do echo "--platform ${t}_x86_64"; done) \
      -r "$work/requirements.txt" -d "$work/wheels"
    stage="$work/libtorch"
    mkdir -p "$stage"
    log "unpacking"
    python3 - "$work/wheels" "$stage" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, stage = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            keep = name.startswith("torch/include/") or (
                (name.startswith("torch/lib/") or name.startswith("nvidia/")) and ".so" in name)
            if not keep or name.endswith("/"):
                continue
            target = stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    whl.unlink()  # disk: a wheel is not needed once unpacked
PY
    # Prune to what is loaded: the NEEDED closure of the roots, found by file name in the lib dirs.
    roots="torch/lib/libtorch.so torch/lib/libtorch_cuda_linalg.so torch/lib/libcaffe2_nvrtc.so
      torch/lib/libshm.so nvidia/cu13/lib/libnvrtc-builtins.so.13.0 $(cd "$stage" && ls nvidia/cudnn/lib/*.so*)"
    declare -A keep=()
    queue=($roots)
    while [ ${#queue[@]} -gt 0 ]; do
      f=${queue[0]}; queue=("${queue[@]:1}")
      [ -n "${keep[$f]:-}" ] && continue
      [ -f "$stage/$f" ] || { log "the wheels lack $f"; exit 1; }
      keep[$f]=1
      for dep in $(readelf -d "$stage/$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        hit=$(cd "$stage" && ls torch/lib/"$dep" nvidia/*/lib/"$dep" 2>/dev/null | head -1 || true)
        [ -n "$hit" ] && queue+=("$hit")  # else a system library (libc, libstdc++) or the driver
      done
    done
    (cd "$stage" && find torch/lib nvidia -type f -name '*.so*') | while read -r f; do
      [ -n "${keep[$f]:-}" ] || rm -f "$stage/$f"
    done
    for need in torch/lib/libtorch_cuda.so torch/lib/libc10_cuda.so nvidia/cu13/lib/libcublasLt.so.13 \
      nvidia/cudnn/lib/libcudnn.so.9 torch/include/torch/csrc/api/include/torch/torch.h; do
      [ -f "$stage/$need" ] || { log "the wheels lack $need"; exit 1; }
    done
    # torch-sys checks this file against the libtorch version tch expects.
    echo "$TORCH_VERSION" >"$stage/torch/build-version"
    echo "torch $TORCH_VERSION CUDA 13.0 from PyPI wheels (torch's pins), pruned to what loads" >"$stage/VERSION.adp"
    mkdir -p "$(dirname "$root")"
    rm -rf "$root.tmp" && mv "$stage" "$root.tmp" && rm -rf "$root" && mv "$root.tmp" "$root"
    touch "$root/.adp-complete"
    log "installed CUDA libtorch $TORCH_VERSION at $root ($(du -sh "$root" | cut -f1))"
  fi
  libtorch="$root/torch"
  libdirs="$root/torch/lib$(for d in "$root"/nvidia/*/lib; do printf ':%s' "$d"; done)"
fi

if [ "$print_env" = 1 ]; then
  echo "export LIBTORCH='$libtorch'"
  echo "export LD_LIBRARY_PATH='$libdirs'\"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
else
  echo "$libtorch"
fi
