#!/usr/bin/env bash
# Provisions libtorch 2.13 (what tch 0.26 needs) cut from PyPI's torch wheel, once per user.
#
# Default (CPU): the wheel is a CUDA build, but only its CPU half is kept: libtorch_cpu.so still
# needs libcudart/libcupti at load time, so the two small NVIDIA runtime wheels are unpacked next
# to it. tch links `-ltorch`, which a CPU build satisfies with an empty stub libtorch.so.
#
# --cuda: the whole CUDA 13.0 build, for the tch plugin on a GPU (scripts/build-tch-cuda.sh):
# torch's libtorch_cuda.so and the NVIDIA runtime wheels torch==2.13.0 pins, laid out as in a
# Python site-packages (torch/lib beside nvidia/*/lib) so that the libraries' own RUNPATH
# ($ORIGIN/../../nvidia/...) finds their neighbours. Only what libtorch_cuda loads is kept (its
# NEEDED closure, and what torch and cuDNN dlopen); about 3.5 GB on disk, 2.3 GB downloaded.
#
# Idempotent: a finished install is marked by .adp-complete and reused.
# Usage: eval "$(scripts/setup-libtorch.sh [--cuda] --print-env)"   or   scripts/setup-libtorch.sh [--cuda]
# Honours: LIBTORCH (use an existing full libtorch, e.g. a CUDA one, as is; with --cuda only if
#          it has libtorch_cuda.so),
#          ADP_LIBTORCH_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/adp/libtorch).
set -euo pipefail

TORCH_VERSION=2.13.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
print_env=0
cuda=0
for arg in "$@"; do
  case "$arg" in
    --print-env) print_env=1 ;;
    --cuda) cuda=1 ;;
    *) echo "setup-libtorch: unknown argument $arg (expected --cuda, --print-env)" >&2; exit 2 ;;
  esac
done
log() { echo "setup-libtorch: $*" >&2; }
if [ "$cuda" = 1 ]; then
  exec "$(dirname "$0")/setup-libtorch-cuda.sh" "$@"
fi

if [ -n "${LIBTORCH:-}" ] && [ -f "$LIBTORCH/lib/libtorch_cpu.so" ] && [ ! -f "$LIBTORCH/.adp-complete" ]; then
  # A user-supplied libtorch (possibly with libtorch_cuda): used untouched.
  log "using the libtorch at $LIBTORCH"
  dest="$LIBTORCH"
else
  cache="${ADP_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/adp/libtorch}"
  dest="$cache/$TORCH_VERSION-cpu"
  if [ -f "$dest/.adp-complete" ]; then
    log "cached libtorch $TORCH_VERSION at $dest"
  else
    command -v python3 >/dev/null || { log "python3 (with pip) is needed to fetch the torch wheel"; exit 1; }
    command -v gcc >/dev/null || { log "gcc is needed to build the stub libtorch.so"; exit 1; }
    work=$(mktemp -d "${TMPDIR:-/tmp}/adp-libtorch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    log "downloading torch==$TORCH_VERSION (about 530 MB) and the CUDA runtime wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 "torch==$TORCH_VERSION" -d "$work/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: \
      "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION" -d "$work/wheels"
    stage="$work/libtorch"
    mkdir -p "$stage/lib"
    log "unpacking"
    python3 - "$work/wheels" "$stage" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, stage = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
want_torch_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1", "libshm.so"}
want_cuda_libs = {"libcudart.so.13", "libcupti.so.13"}
found = set()
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            if name.startswith("torch/include/") and not name.endswith("/"):
                target = stage / name[len("torch/"):]
            elif name.startswith("torch/lib/") and base in want_torch_libs:
                target = stage / "lib" / base
            elif base in want_cuda_libs:
                target = stage / "lib" / base
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if target.parent.name == "lib":
                found.add(base)
missing = (want_torch_libs | want_cuda_libs) - found
if missing:
    sys.exit(f"setup-libtorch: the wheels lack {sorted(missing)}")
PY
    echo "" > "$work/stub.c"
    gcc -shared -fPIC -o "$stage/lib/libtorch.so" "$work/stub.c"
    # libtorch_cpu finds its neighbours through its own RUNPATH ($ORIGIN), so no LD_LIBRARY_PATH.
    echo "torch $TORCH_VERSION cpu, cudart $CUDART_VERSION, cupti $CUPTI_VERSION" > "$stage/VERSION.adp"
    # torch-sys checks this file against the libtorch version tch expects.
    echo "$TORCH_VERSION" > "$stage/build-version"
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest.tmp" && mv "$stage" "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
    touch "$dest/.adp-complete"
    log "installed libtorch $TORCH_VERSION (CPU) at $dest"
  fi
fi

if [ "$print_env" = 1 ]; then
  echo "export LIBTORCH='$dest'"
else
  echo "$dest"
fi
