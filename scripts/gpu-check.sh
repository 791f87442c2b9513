#!/usr/bin/env bash
# One short check (under 10 minutes) of the CUDA plugins on a GPU machine, from artefacts built
# elsewhere: such a machine has no package registry and no Rust toolchain.
#
# Carry target/gpu-check (about 11 MB) with the working tree (10 MB). `scripts/gpu-check.sh --pack`
# makes it here, stripped and xz-compressed, from
#   target/release/adp                                  the CPU host (6.5 MiB)
#   target/cuda/release/libadp_plugin_candle.so         scripts/build-cuda.sh, sm_90 (57 MiB: over
#                                                       the 64 MiB carry limit with the rest)
#   target/tch-cuda/release/libadp_plugin_tch.so        scripts/build-tch-cuda.sh --release, if built
#                                                       (7 MB; 2.5 MB packed)
#                                                       (ADP_TCH_CUDA_PLUGIN names another)
# Assumed on the GPU machine (too big to carry: cuBLASLt alone is 516 MB): an NVIDIA driver for
# CUDA >= 13.0 (libcuda.so.1) and the CUDA 13 libraries libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13 and libcurand.so.10, in a system CUDA 13 toolkit or a
# Python site-packages nvidia/cu13/lib (pip's torch 2.13). The script finds them or says which lack.
#
# What it does, each step under its own time limit, results to $OUT (default ./gpu-check-out):
#  1. the plugin lists cuda:0;
#  2. conformance-style: on tiny deterministic fixtures, CLIP embeddings and winclip / ADP scores
#     on cpu and on cuda:0 agree within TOL (default 1e-3 relative, stated in the summary);
#  3. timings at real sizes with random weights (ViT-H-14, SD 2.1): winclip scoring per photo,
#     ADP fit with 1 and 3 concept steps (batch 4), and peak GPU memory (nvidia-smi).
#  4. the tch plugin built against the CUDA libtorch (scripts/build-tch-cuda.sh --release), packed
#     too when built: steps 1-2 and ViT-H-14 winclip scoring for it, ONLY IF the machine has
#     libtorch 2.13 for CUDA 13 (a python3 whose torch is 2.13.x with CUDA 13.x, or ADP_LIBTORCH_LIB,
#     a folder with libtorch_cuda.so).
#     That libtorch cannot be carried (libtorch_cuda.so alone is 470 MB, the whole 3.4 GB); the
#     device machine was last seen with torch 2.11, so there the tch part is SKIPPED, and says so.
# Usage: scripts/gpu-check.sh --pack   (here)   then   scripts/gpu-check.sh [ADP_BIN [PLUGIN]]   (there)
set -uo pipefail
cd "$(dirname "$0")/.."
pack=target/gpu-check
if [ "${1:-}" = "--pack" ]; then
  set -e
  mkdir -p "$pack"
  for f in "${ADP_BIN:-target/release/adp}" "${ADP_CUDA_PLUGIN:-target/cuda/release/libadp_plugin_candle.so}"; do
    strip -o "$pack/$(basename "$f")" "$f" && xz -f -T0 -6 "$pack/$(basename "$f")"
  done
  tch="${ADP_TCH_CUDA_PLUGIN:-target/tch-cuda/release/libadp_plugin_tch.so}"
  if [ -f "$tch" ]; then
    strip -o "$pack/$(basename "$tch")" "$tch" && xz -f -T0 -6 "$pack/$(basename "$tch")"
  else
    echo "gpu-check: no $tch (scripts/build-tch-cuda.sh --release): the tch part will not run" >&2
  fi
  ls -l "$pack" >&2; echo "$pack"; exit 0
fi
# Packed artefacts, when no paths are given: unpacked once into the work folder.
if [ $# -eq 0 ] && [ -z "${ADP_BIN:-}" ] && [ -f "$pack/adp.xz" ]; then
  mkdir -p "${ADP_GPU_WORK:-/tmp/adp-gpu-check}/bin"
  for f in adp libadp_plugin_candle.so; do
    xz -dc "$pack/$f.xz" >"${ADP_GPU_WORK:-/tmp/adp-gpu-check}/bin/$f"
  done
  # In a folder of its own: `adp plugins --plugin-dir` lists one plugin per folder.
  if [ -f "$pack/libadp_plugin_tch.so.xz" ] && [ -z "${ADP_TCH_CUDA_PLUGIN:-}" ]; then
    mkdir -p "${ADP_GPU_WORK:-/tmp/adp-gpu-check}/tch"
    xz -dc "$pack/libadp_plugin_tch.so.xz" >"${ADP_GPU_WORK:-/tmp/adp-gpu-check}/tch/libadp_plugin_tch.so"
    export ADP_TCH_CUDA_PLUGIN="${ADP_GPU_WORK:-/tmp/adp-gpu-check}/tch/libadp_plugin_tch.so"
  fi
  chmod +x "${ADP_GPU_WORK:-/tmp/adp-gpu-check}/bin/adp"
  set -- "${ADP_GPU_WORK:-/tmp/adp-gpu-check}/bin/adp" "${ADP_GPU_WORK:-/tmp/adp-gpu-check}/bin/libadp_plugin_candle.so"
fi
adp=$(realpath "${1:-${ADP_BIN:-target/release/adp}}")
plugin=$(realpath "${2:-${ADP_CUDA_PLUGIN:-target/cuda/release/libadp_plugin_candle.so}}")
out=$(realpath -m "${OUT:-gpu-check-out}")
tol=${TOL:-1e-3}
mkdir -p "$out"
work=${ADP_GPU_WORK:-/tmp/adp-gpu-check}
mkdir -p "$work"
summary="$out/summary.txt"
: >"$summary"
log() { echo "gpu-check: $*" | tee -a "$summary" >&2; }
t0=$(date +%s)
budget=${BUDGET:-540}  # seconds for the whole script: the device call's limit is 600
elapsed() { echo $(( $(date +%s) - t0 )); }
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

# --- environment --------------------------------------------------------------------------------
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
  >"$out/gpu.txt" 2>&1 || true
log "GPU: $(cat "$out/gpu.txt")"
# The CUDA 13 libraries: the first folder that has libcublasLt.so.13 (and its neighbours).
need="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10"  # the plugin's NEEDED, and cuBLAS's
found=""
for d in ${ADP_CUDA_LIBS:-} /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  /usr/lib/x86_64-linux-gnu $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | \
  xargs -n1 2>/dev/null | sed 's|$|/nvidia/cu13/lib|') /opt/conda/lib; do
  [ -f "$d/libcublasLt.so.13" ] && { found="$found:$d"; }
done
export LD_LIBRARY_PATH="${found#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for so in $need; do
  ldconfig -p 2>/dev/null | grep -q "$so" && continue
  echo "$LD_LIBRARY_PATH" | tr ':' '\n' | while read -r d; do [ -n "$d" ] && [ -e "$d/$so" ] && echo ok; done | grep -q ok \
    || log "MISSING: $so (set ADP_CUDA_LIBS to its folder)"
done
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# Samples the GPU's memory in use every 200 ms while $1 runs; prints the peak (MiB) to $2.
with_peak() {
  local peakfile=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$peakfile.samples" 2>/dev/null &
  local smi=$!
  "$@"; local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  sort -n "$peakfile.samples" | tail -1 >"$peakfile"
  return $rc
}
# Runs a step under a time limit, logging its wall time; a failure is logged, not fatal.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - $(elapsed) ))
  [ "$left" -lt 10 ] && { log "SKIP $name (out of time)"; return 1; }
  [ "$limit" -gt "$left" ] && limit=$left
  local s; s=$(date +%s.%N)
  timeout "$limit" "$@" >"$out/$name.out" 2>"$out/$name.err"; local rc=$?
  local secs; secs=$(calc "$(date +%s.%N) - $s")
  echo "$secs" >"$out/$name.secs"
  if [ $rc -eq 0 ]; then log "ok   $name ($secs s)"; else log "FAIL $name (exit $rc; see $name.err)"; tail -3 "$out/$name.err" >&2; fi
  return $rc
}
# Compares two `adp embed` / `adp score` outputs number by number, relative to the largest |x|.
compare() {
  python3 - "$1" "$2" "$tol" <<'PY'
import json, sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
def nums(path):
    out = []
    for line in open(path):
        d = json.loads(line)
        for k in ("embedding", "score", "language", "association"):
            v = d.get(k)
            if isinstance(v, list): out += v
            elif isinstance(v, (int, float)): out.append(v)
    return out
x, y = nums(a), nums(b)
if len(x) != len(y) or not x:
    sys.exit(f"different lengths {len(x)} / {len(y)}")
scale = max(abs(v) for v in x) or 1.0
err = max(abs(p - q) for p, q in zip(x, y)) / scale
print(f"{len(x)} values, max |cpu - cuda| / max |cpu| = {err:.2e} (tolerance {tol:g})")
sys.exit(0 if err <= tol else 1)
PY
}
agree() {
  local name=$1
  if r=$(compare "$out/$name-cpu.out" "$out/$name-cuda.out" 2>&1); then log "ok   $name cpu = cuda:0: $r"
  else log "FAIL $name cpu != cuda:0: $r"; fi
}

# --- 1. the plugin sees the GPU -----------------------------------------------------------------
step plugins 60 "$adp" plugins --plugin-dir "$(dirname "$plugin")" --json
grep -q '"cuda:0"' "$out/plugins.out" && log "ok   plugin lists a CUDA device" || log "FAIL plugin lists no CUDA device"

# --- 2. cpu against cuda:0 on tiny deterministic fixtures ---------------------------------------
step fixtures-tiny 60 "$adp" fixtures --out "$work/tiny"
clip=$(sed -n 1p "$out/fixtures-tiny.out")
sd=$(sed -n 2p "$out/fixtures-tiny.out")
photos=examples/images/metal_plate
tests=$(ls $photos/test/*/*.png)  # `adp score` takes files or a folder of photos, not a tree
# The same checks for each plugin: $1 prefixes the step names ("" for candle), $2 is the plugin.
conformance() {
  local p=$1 plugin=$2 dev d
  for dev in cpu cuda; do
    d=cpu; [ $dev = cuda ] && d=cuda:0
    step "${p}embed-$dev" 120 "$adp" embed --plugin "$plugin" --clip "$clip" --device "$d" \
      --image $photos/test/good/000.png --image $photos/test/defect/000.png --text "a photo of a metal plate"
    # One detector fitted on the CPU, scored on both devices: the scoring path alone.
    [ $dev = cpu ] && step "${p}fit-winclip-tiny" 120 "$adp" fit --plugin "$plugin" --method winclip \
      --clip "$clip" --support $photos/train/good --device cpu --quiet -o "$work/${p}winclip-tiny.adp"
    step "${p}score-winclip-$dev" 120 "$adp" score --detector "$work/${p}winclip-tiny.adp" --plugin "$plugin" \
      --device "$d" --quiet $tests
    # ADP on tiny SD, fitted on each device (seeded): concept learning and img2img on the GPU.
    step "${p}fit-adp-tiny-$dev" 180 "$adp" fit --plugin "$plugin" --clip "$clip" --sd "$sd" \
      --support $photos/train/good --steps 2 --validation-pseudo 2 --ddim-steps 5 --device "$d" --quiet \
      -o "$work/${p}adp-tiny-$dev.adp"
    step "${p}score-adp-$dev" 120 "$adp" score --detector "$work/${p}adp-tiny-$dev.adp" --plugin "$plugin" \
      --device "$d" --quiet $tests
  done
  agree "${p}embed"
  agree "${p}score-winclip"
  agree "${p}score-adp"
}
conformance "" "$plugin"
log "conformance part done at $(elapsed) s"

# --- 4a. the tch plugin (CUDA libtorch), if the machine has libtorch 2.13 for CUDA 13 -------------
tch_plugin=${ADP_TCH_CUDA_PLUGIN:-}
tch_lib=""
if [ -z "$tch_plugin" ] || [ ! -f "$tch_plugin" ]; then
  log "SKIP tch: no tch plugin built against the CUDA libtorch was carried (ADP_TCH_CUDA_PLUGIN)"
else
  tch_plugin=$(realpath "$tch_plugin")
  if [ -n "${ADP_LIBTORCH_LIB:-}" ]; then
    tch_lib=$ADP_LIBTORCH_LIB
  else
    # The PyPI wheel's torch.__version__ has no +cuXYZ: torch.version.cuda says which CUDA.
    read -r torch_ver torch_cuda torch_dir < <(python3 -c 'import os, torch; print(torch.__version__.split("+")[0],
      torch.version.cuda or "none", os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) || true
    case "${torch_ver:-none}/${torch_cuda:-none}" in
      2.13.*/13.*) tch_lib=$torch_dir ;;
      *) log "SKIP tch: tch 0.26 needs libtorch 2.13 for CUDA 13, this machine's python3 has torch" \
           "${torch_ver:-none} (CUDA ${torch_cuda:-none}); the CUDA libtorch (3.4 GB) cannot be carried" ;;
    esac
  fi
  [ -n "$tch_lib" ] && [ ! -f "$tch_lib/libtorch_cuda.so" ] && { log "SKIP tch: no libtorch_cuda.so in $tch_lib"; tch_lib=""; }
fi
if [ -n "$tch_lib" ]; then
  log "tch: libtorch from $tch_lib"
  # Its libraries find their NVIDIA neighbours through their own RUNPATH (a site-packages layout).
  saved_ld=$LD_LIBRARY_PATH
  export LD_LIBRARY_PATH="$tch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  step tch-plugins 60 "$adp" plugins --plugin-dir "$(dirname "$tch_plugin")" --json
  grep -q '"cuda:0"' "$out/tch-plugins.out" && log "ok   tch plugin lists a CUDA device" || log "FAIL tch plugin lists no CUDA device"
  conformance tch- "$tch_plugin"
  export LD_LIBRARY_PATH=$saved_ld
  log "tch conformance part done at $(elapsed) s"
fi

# --- 3. real sizes, random weights, cuda:0 ------------------------------------------------------
# About 14 GB of random weights; skipped if they are already there from an earlier call.
# ADP_GPU_REAL=0 skips this part (a dry run of the script on a machine without a GPU).
[ "${ADP_GPU_REAL:-1}" = 0 ] && { log "real sizes skipped (ADP_GPU_REAL=0)"; touch "$work/real.paths"; }
if [ ! -e "$work/real.paths" ]; then
  step fixtures-real 240 "$adp" fixtures --preset ViT-H-14 --diffusion sd-2.1 --out "$work/real" \
    && cp "$out/fixtures-real.out" "$work/real.paths"
fi
clip=$(sed -n 1p "$work/real.paths" 2>/dev/null); sd=$(sed -n 2p "$work/real.paths" 2>/dev/null)
[ "${ADP_GPU_REAL:-1}" = 0 ] && clip=""
if [ -n "$clip" ]; then
  step fit-winclip-h14 120 "$adp" fit --plugin "$plugin" --method winclip --clip "$clip" \
    --support $photos/train/good --device cuda:0 --quiet -o "$work/winclip-h14.adp"
  with_peak "$out/peak-score-h14.mib" step score-winclip-h14 120 "$adp" score --detector "$work/winclip-h14.adp" \
    --plugin "$plugin" --device cuda:0 --quiet $tests $photos/train/good/*.png
  n=$(wc -l <"$out/score-winclip-h14.out")
  [ "$n" -gt 0 ] && log "ViT-H-14 winclip: $(calc "$(cat "$out/score-winclip-h14.secs") / $n") s per photo over $n photos (load included), peak $(cat "$out/peak-score-h14.mib") MiB"
  for s in 1 3; do
    with_peak "$out/peak-fit-adp-$s.mib" step "fit-adp-h14-steps$s" 200 "$adp" fit --plugin "$plugin" \
      --clip "$clip" --sd "$sd" --support $photos/train/good --steps $s --batch-size 4 \
      --validation-pseudo 1 --ddim-steps 30 --device cuda:0 --quiet -o "$work/adp-h14-$s.adp"
  done
  if [ -s "$out/fit-adp-h14-steps1.secs" ] && [ -s "$out/fit-adp-h14-steps3.secs" ]; then
    log "ADP concept step (ViT-H-14 + SD 2.1, batch 4): $(calc "($(cat "$out/fit-adp-h14-steps3.secs") - $(cat "$out/fit-adp-h14-steps1.secs")) / 2") s; peak $(cat "$out/peak-fit-adp-3.mib") MiB"
  fi
fi
if [ -n "$clip" ] && [ -n "$tch_lib" ]; then
  saved_ld=$LD_LIBRARY_PATH
  export LD_LIBRARY_PATH="$tch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  step tch-fit-winclip-h14 120 "$adp" fit --plugin "$tch_plugin" --method winclip --clip "$clip" \
    --support $photos/train/good --device cuda:0 --quiet -o "$work/tch-winclip-h14.adp"
  with_peak "$out/peak-tch-score-h14.mib" step tch-score-winclip-h14 120 "$adp" score \
    --detector "$work/tch-winclip-h14.adp" --plugin "$tch_plugin" --device cuda:0 --quiet $tests $photos/train/good/*.png
  n=$(wc -l <"$out/tch-score-winclip-h14.out" 2>/dev/null || echo 0)
  [ "$n" -gt 0 ] && log "tch ViT-H-14 winclip: $(calc "$(cat "$out/tch-score-winclip-h14.secs") / $n") s per photo over $n photos (load included), peak $(cat "$out/peak-tch-score-h14.mib") MiB"
  export LD_LIBRARY_PATH=$saved_ld
fi
log "done in $(elapsed) s; results in $out"
grep -q FAIL "$summary" && exit 1
exit 0
