#!/usr/bin/env bash
# Builds the tch plugin against the CUDA libtorch (scripts/setup-libtorch.sh --cuda; no GPU
# needed) and holds it to the CPU suite: the tch conformance cases, in process and as a plugin,
# the candle/tch agreement and the visual method's end-to-end test. Then, on this machine without
# a GPU, checks through the CLI that the plugin really carries libtorch_cuda (torch probes the
# driver) and that `--device cuda:0` is a clear "not available" error, not a crash.
#
# Its own target dir (torch-sys and everything above it are built against another libtorch than
# the CPU suite's): ADP_TCH_CUDA_TARGET_DIR, default target/tch-cuda. When that is new, it is
# seeded with hard links from the CPU build (CARGO_TARGET_DIR or target/), so only the crates over
# torch-sys and the workspace's own crates compile again.
# Usage: scripts/build-tch-cuda.sh [--build-only | --release]
#   --release: only the release plugin, for scripts/gpu-check.sh --pack
#              ($ADP_TCH_CUDA_TARGET_DIR/release/libadp_plugin_tch.so).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-tch-cuda: $*" >&2; }
mode=${1:-all}
case "$mode" in all | --build-only | --release) ;; *) log "unknown argument $mode"; exit 2 ;; esac

eval "$(scripts/setup-libtorch.sh --cuda --print-env)"
export LIBTORCH
seed="${CARGO_TARGET_DIR:-target}"
tgt="${ADP_TCH_CUDA_TARGET_DIR:-target/tch-cuda}"
prof=debug; [ "$mode" = --release ] && prof=release
if [ ! -d "$tgt/$prof" ] && [ -d "$seed/$prof" ]; then
  log "seeding $tgt/$prof from $seed/$prof (hard links)"
  mkdir -p "$tgt"
  cp -al "$seed/$prof" "$tgt/$prof"
  # torch-sys's build output is made against the other libtorch: dropped, not overwritten.
  rm -rf "$tgt/$prof"/build/torch-sys-* "$tgt/$prof"/.fingerprint/torch-sys-*
  # A hard-linked lock file would be one lock for both folders: each gets its own.
  rm -f "$tgt/$prof/.cargo-lock"
fi
export CARGO_TARGET_DIR="$tgt"
# Needs libtorch_cuda.so, or --as-needed dropped it (see plugins/tch/build.rs).
needs_torch_cuda() {
  readelf -d "$1" | grep -q 'NEEDED.*\[libtorch_cuda.so\]' \
    || { log "FAIL: $1 does not need libtorch_cuda.so (dropped by --as-needed?)"; exit 1; }
  log "ok: $1 needs libtorch_cuda.so"
}
if [ "$mode" = --release ]; then
  cargo build --release -p adp-plugin-tch
  needs_torch_cuda "$tgt/release/libadp_plugin_tch.so"
  exit 0
fi
start=$(date +%s)
cargo build --workspace --features adp-conformance/tch
plugin="$tgt/debug/libadp_plugin_tch.so"
adp="$tgt/debug/adp"
log "built $plugin against $LIBTORCH in $(( $(date +%s) - start )) s"
needs_torch_cuda "$plugin"
[ "$mode" = --build-only ] && exit 0

start=$(date +%s)
cargo test -p adp-conformance --features adp-conformance/tch --test tch --test agreement --test e2e_visual
log "CPU suite with the CUDA libtorch passed in $(( $(date +%s) - start )) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/adp-tch-cuda-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Into a file, not `| head -1`: a closed pipe would fail `adp` (pipefail).
"$adp" fixtures --out "$work/fixtures" >"$work/fixtures.txt"
clip=$(sed -n 1p "$work/fixtures.txt")
embed() {
  "$adp" embed --plugin "$plugin" --clip "$clip" --text "a photo of a bottle" "$@"
}
# Expects `adp embed --device cuda:0` (run under env $@) to fail naming the device, no panic;
# with probe=1, also torch's warning that CUDA failed to initialise.
expect_no_cuda() {
  local what=$1 probe=$2; shift 2
  set +e
  env "$@" "$adp" embed --plugin "$plugin" --clip "$clip" --text "a photo of a bottle" \
    --device cuda:0 >"$work/out" 2>"$work/err"
  local rc=$?
  set -e
  if [ $rc -eq 0 ] || [ $rc -eq 101 ] || grep -q panicked "$work/err" \
    || ! grep -q 'device cuda:0 is not available to backend `tch`' "$work/err"; then
    log "FAIL ($what): exit $rc, expected 'device cuda:0 is not available to backend \`tch\`'"
    cat "$work/err" >&2; exit 1
  fi
  log "ok ($what): $(grep -m1 '^Error' "$work/err")"
  [ "$probe" = 1 ] || return 0
  # Only torch's CUDA half (libtorch_cuda's hooks) asks the driver and warns when it fails; a
  # CPU libtorch, or one whose libtorch_cuda was dropped, just counts no device.
  grep -q 'CUDA initialization' "$work/err" \
    || { log "FAIL ($what): torch did not try CUDA, so libtorch_cuda is not loaded"; cat "$work/err" >&2; exit 1; }
  log "     torch tried CUDA: $(grep -m1 'CUDA initialization' "$work/err" | cut -c1-200)"
}

# 1. No NVIDIA driver (this machine): the plugin loads; CUDA finds no driver (silently: torch
#    treats that as no device); cuda:0 is refused.
expect_no_cuda "no driver" 0 -u LD_LIBRARY_PATH
"$adp" plugins --plugin-dir "$(dirname "$plugin")" --json >"$work/plugins"
grep -q '"cuda:0"' "$work/plugins" && { log "FAIL: a CUDA device listed without a GPU"; exit 1; }
# 2. A driver but no GPU, played by setup-cuda's link-time libcuda stub (every call fails; in CI
#    build-cuda.sh has provisioned it already, else this fetches the CUDA toolchain once, 680 MB).
eval "$(scripts/setup-cuda.sh --print-env)"
mkdir -p "$work/driver"
ln -s "$CUDA_ROOT/lib/stubs/libcuda.so" "$work/driver/libcuda.so.1"
expect_no_cuda "driver, no GPU" 1 LD_LIBRARY_PATH="$work/driver"
# ...and the same plugin embeds on the CPU.
embed --device cpu >"$work/out"
grep -q '"embedding"' "$work/out" || { log "FAIL: no CPU embedding from the CUDA-linked plugin"; exit 1; }
log "ok: --device cpu embeds with the CUDA-linked tch plugin"
