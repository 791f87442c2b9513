#!/usr/bin/env bash
# Builds the candle plugin with CUDA (no GPU needed) and checks that, on a machine without a GPU,
# asking it for cuda:0 is a clear error and not a panic. CI runs it after scripts/test.sh.
#
# Usage: scripts/build-cuda.sh [--dev] [--build-only]
#   --dev: the debug profile (what CI checks), its target/cuda/debug seeded with hard links from the
#          CPU build's target/debug when new, so only the crates the `cuda` feature changes compile
#          (dependencies are optimised in both profiles); default: release, for the GPU machine.
# Honours: CUDA_COMPUTE_CAP (default 90: H100/H200; 80 A100, 86 RTX 30xx, 89 RTX 40xx),
#          ADP_CUDA_TARGET_DIR (default target/cuda, apart from the CPU build's target/),
#          ADP_BIN (the `adp` to run the checks with; default target/release/adp, else target/debug/adp,
#          under CARGO_TARGET_DIR if set).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-cuda: $*" >&2; }
profile=release
build_only=0
for arg in "$@"; do
  case "$arg" in
    --dev) profile=debug ;;
    --build-only) build_only=1 ;;
    *) log "unknown argument $arg (expected --dev, --build-only)"; exit 2 ;;
  esac
done

eval "$(scripts/setup-cuda.sh --print-env)"
seed="${CARGO_TARGET_DIR:-target}"
export CARGO_TARGET_DIR="${ADP_CUDA_TARGET_DIR:-target/cuda}"
if [ "$profile" = debug ] && [ ! -d "$CARGO_TARGET_DIR/debug" ] && [ -d "$seed/debug" ]; then
  log "seeding $CARGO_TARGET_DIR/debug from $seed/debug (hard links)"
  mkdir -p "$CARGO_TARGET_DIR" && cp -al "$seed/debug" "$CARGO_TARGET_DIR/debug"
  # A hard-linked lock file would be one lock for both folders: each gets its own.
  rm -f "$CARGO_TARGET_DIR/debug/.cargo-lock"
fi
# candle-kernels' nvcc runs (cudaforge) use half the cores by default; cargo itself uses them all.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
start=$(date +%s)
if [ "$profile" = release ]; then cargo build --release -p adp-plugin-candle --features cuda
else cargo build -p adp-plugin-candle --features cuda; fi
plugin="$CARGO_TARGET_DIR/$profile/libadp_plugin_candle.so"
log "built $plugin for sm_$CUDA_COMPUTE_CAP in $(( $(date +%s) - start )) s ($(du -h "$plugin" | cut -f1))"
[ "$build_only" = 1 ] && exit 0

adp="${ADP_BIN:-}"
if [ -z "$adp" ]; then
  for b in "$seed/release/adp" "$seed/debug/adp"; do [ -x "$b" ] && { adp=$b; break; }; done
fi
[ -n "$adp" ] || { log "no adp binary: build the CPU workspace first (scripts/test.sh does)"; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/adp-cuda-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Into a file, not `| head -1`: the closed pipe made `adp` panic (exit 101) and failed the script.
"$adp" fixtures --out "$work/fixtures" >"$work/fixtures.txt"
clip=$(sed -n 1p "$work/fixtures.txt")

# Runs `adp embed` on the CUDA plugin; expects failure with $2 (a regex) in the message, no panic.
expect_error() {
  local what=$1 want=$2; shift 2
  set +e
  "$@" "$adp" embed --plugin "$plugin" --clip "$clip" --text "a photo of a bottle" --device cuda:0 \
    >"$work/out" 2>"$work/err"
  local rc=$?
  set -e
  if [ $rc -eq 0 ] || [ $rc -eq 101 ] || grep -q panicked "$work/err" || ! grep -qE "$want" "$work/err"; then
    log "FAIL ($what): exit $rc, expected an error naming '$want'"; cat "$work/err" >&2; exit 1
  fi
  log "ok ($what): $(grep -m1 "^Error" "$work/err")"
}

# 1. No NVIDIA driver nor CUDA libraries (this machine): the plugin cannot load, and the host says
#    which library is missing (the loader names the first it misses: libcuda, libcudart, ...).
expect_error "no driver" "not a loadable shared library: .*lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so" \
  env -u LD_LIBRARY_PATH

# 2. A driver but no GPU, played by the link-time stub (every call: CUDA_ERROR_STUB_LIBRARY) with
#    the wheels' CUDA libraries: the plugin loads, lists no CUDA device, and refuses cuda:0.
mkdir -p "$work/driver"
ln -s "$CUDA_ROOT/lib/stubs/libcuda.so" "$work/driver/libcuda.so.1"
libs="$work/driver:$CUDA_ROOT/lib"
expect_error "driver, no GPU" "device cuda:0 is not available to backend .candle." \
  env LD_LIBRARY_PATH="$libs"
# ...and the same plugin still works on the CPU.
LD_LIBRARY_PATH="$libs" "$adp" embed --plugin "$plugin" --clip "$clip" --text "a photo of a bottle" \
  --device cpu >"$work/out"
grep -q '"embedding"' "$work/out" || { log "FAIL: no CPU embedding from the CUDA plugin"; exit 1; }
log "ok (driver, no GPU): --device cpu embeds"
