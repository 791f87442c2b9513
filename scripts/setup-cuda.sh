#!/usr/bin/env bash
# Provisions a CUDA 13.0 build toolchain (nvcc, headers, link libraries) from PyPI's NVIDIA wheels,
# once per user, with no system CUDA toolkit. It is what `--features cuda` of the candle plugin
# needs to compile on a machine without a GPU; running the result needs a GPU machine's driver.
#
# Pinned to the CUDA line torch==2.13.0 depends on (cuda-toolkit==13.0.3): PTX from a newer nvcc
# would not load on a driver that only knows 13.0.
# cudarc (under candle) links libcuda, libnvrtc, libcurand, libcublas and libcublasLt; all but
# libcuda come from the wheels. libcuda belongs to the driver, so lib/stubs/libcuda.so is a
# generated link-time stub (every entry point returns CUDA_ERROR_STUB_LIBRARY); it is never on
# a runtime library path.
#
# Idempotent: a finished install is marked by $dest/.adp-complete and reused.
# Usage: eval "$(scripts/setup-cuda.sh --print-env)"   or   scripts/setup-cuda.sh
# Honours: ADP_CUDA_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/adp/cuda),
#          CUDA_COMPUTE_CAP (default 90, the H200; e.g. 80 or 86 for A100 / RTX 30xx),
#          NVCC_CCBIN (host compiler for nvcc; default: the gcc on PATH).
set -euo pipefail

CUDA_LINE=13.0
print_env=0
[ "${1:-}" = "--print-env" ] && print_env=1
log() { echo "setup-cuda: $*" >&2; }

cache="${ADP_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/adp/cuda}"
dest="$cache/$CUDA_LINE"

if [ -f "$dest/.adp-complete" ]; then
  log "cached CUDA $CUDA_LINE toolchain at $dest"
else
  command -v python3 >/dev/null || { log "python3 (with pip) is needed to fetch the NVIDIA wheels"; exit 1; }
  command -v gcc >/dev/null || { log "gcc is needed (nvcc's host compiler, and to build the libcuda stub)"; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/adp-cuda.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # Versions: cuda-toolkit==13.0.3's pins. Hashes: the manylinux x86_64 wheels pip picks.
  cat > "$work/requirements.txt" <<'REQ'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cublas==13.1.1.3 --hash=sha256:37936a16db8fe4ac1f065c2139360608a543a09275cb1a1af612e08cfa065436
REQ
  log "downloading the CUDA $CUDA_LINE wheels (about 680 MB, most of it cuBLAS)"
  python3 -m pip download -q --no-deps --only-binary=:all: --require-hashes \
    -r "$work/requirements.txt" -d "$work/wheels"
  stage="$work/cuda"
  mkdir -p "$stage"
  log "unpacking"
  # All wheels share the prefix nvidia/cu13/{bin,nvvm,include,lib}; keep file modes (nvcc, cicc).
  python3 - "$work/wheels" "$stage" <<'PY'
import os, pathlib, shutil, sys, zipfile
wheels, stage = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
prefix = "nvidia/cu13/"
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            if not name.startswith(prefix) or name.endswith("/") or "/.metadata/" in name:
                continue
            target = stage / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)
    whl.unlink()  # disk is tight: a wheel is not needed once unpacked
for need in ["bin/nvcc", "bin/ptxas", "nvvm/bin/cicc", "include/cuda_bf16.h", "include/crt/host_defines.h",
             "include/cccl/cuda/std/type_traits", "lib/libcudart.so.13", "lib/libcublasLt.so.13"]:
    if not (stage / need).exists():
        sys.exit(f"setup-cuda: the wheels lack {need}")
PY
  # The wheels ship only versioned sonames; the linker's -lcudart etc. want the plain names.
  for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    ln -sf "$so" "$stage/lib/${so%.so.*}.so"
  done
  # Link-time stub of the driver library, from the entry points cudarc's bindings name.
  find_cudarc() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -1 || true; }
  cudarc_src=$(find_cudarc)
  if [ -z "$cudarc_src" ]; then  # a fresh clone: fetch the locked crates (cudarc among them)
    log "fetching the workspace's crates for cudarc's sources"
    cargo fetch -q --manifest-path "$(dirname "$0")/../Cargo.toml"
    cudarc_src=$(find_cudarc)
  fi
  [ -n "$cudarc_src" ] || { log "cudarc 0.19 sources are missing: run 'cargo fetch' first"; exit 1; }
  mkdir -p "$stage/lib/stubs"
  grep -ohP '^\s+fn \Kcu\w+(?=\()' "$cudarc_src"/*.rs | sort -u |
    sed 's/.*/int &(void) { return 34; } \/* CUDA_ERROR_STUB_LIBRARY *\//' > "$work/libcuda-stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stage/lib/stubs/libcuda.so" "$work/libcuda-stub.c"
  "$stage/bin/nvcc" --version | grep -q "release $CUDA_LINE" || { log "unexpected nvcc version"; exit 1; }
  echo "CUDA $CUDA_LINE from PyPI wheels (cuda-toolkit==13.0.3 pins); lib/stubs/libcuda.so is a link-time stub" \
    > "$stage/VERSION.adp"
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest.tmp" && mv "$stage" "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
  touch "$dest/.adp-complete"
  log "installed CUDA $CUDA_LINE at $dest ($(du -sh "$dest" | cut -f1))"
fi

if [ "$print_env" = 1 ]; then
  # CUDA_ROOT/CUDA_PATH/CUDA_HOME: read by cudarc (link search) and cudaforge (candle-kernels).
  echo "export CUDA_ROOT='$dest' CUDA_PATH='$dest' CUDA_HOME='$dest'"
  echo "export PATH='$dest/bin':\"\$PATH\""
  echo "export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
  [ -n "${NVCC_CCBIN:-}" ] && echo "export NVCC_CCBIN='$NVCC_CCBIN'"
  true
else
  echo "$dest"
fi
