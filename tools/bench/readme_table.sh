#!/usr/bin/env bash
# The README's side-by-side speed tables in one command: `side_by_side.py` (adp's candle and tch
# plugins against the PyTorch peer, 2 threads each, interleaved) over the `visual` and CLIP rows,
# then SD 2.1 at 768 px, then SD 2.1-base at 512 px. Run it on a quiet machine (no build or eval
# beside it) after `cargo build --release -p adp-host -p adp-plugin-candle -p adp-plugin-tch`:
#
#   tools/bench/readme_table.sh CLIP_DIR SD_DIR SD_BASE_DIR PHOTO_DIR
#
# CLIP_DIR: `adp fixtures --preset ViT-B-16` (its clip/ folder); SD_DIR: `adp fixtures --diffusion
# sd-2.1` (768 px); SD_BASE_DIR: `adp fixtures --diffusion sd-2.1-base` (512 px); PHOTO_DIR: 8
# photos, the first 4 the support set. ADP_PEER_PYTHON: the peer's interpreter (default the golden
# venv's). About 30 minutes on 2 cores.
set -euo pipefail
[ $# -eq 4 ] || { sed -n 2,13p "$0"; exit 2; }
# Absolute before the cd to the repository root, so relative arguments keep meaning what they did.
clip=$(realpath "$1") sd=$(realpath "$2") sd_base=$(realpath "$3") photos=$(realpath "$4")
cd "$(dirname "$0")/../.."
py=${ADP_PEER_PYTHON:-/root/.cache/adp/golden-venv/bin/python}
run() {
  "$py" tools/bench/side_by_side.py --adp target/release/adp --plugin-dir target/release \
    --plugin candle --plugin tch --threads 2 "$@" "$photos"
}
echo "### visual and CLIP (ViT-B-16) rows"
run --rounds 2 --repeats 3 --rows visual,clip-image,clip-text,clip-dense --clip "$clip"
echo
echo "### SD 2.1, 768 px"
run --rounds 1 --repeats 1 --rows unet,learn-step-1 --sd "$sd"
echo
echo "### SD 2.1-base, 512 px"
run --rounds 1 --repeats 1 --rows unet,learn-step-1,img2img-step --sd "$sd_base"
