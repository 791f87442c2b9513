#!/usr/bin/env bash
# The quick start in one command, from a fresh clone: provisions the default backbone (EfficientNet-Lite0,
# cached in ~/.cache/adp/weights), builds `adp` and the candle plugin (release; no libtorch needed), fits a
# `visual` detector on the four good metal plates of examples/images, then scores the other sample
# photos: one JSON line each (anomalous, score, normalised score, threshold) and a coloured overlay each.
#
# Usage: scripts/quickstart.sh [OUT]     (OUT defaults to ./quickstart; re-running replaces its files)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-quickstart}"
scripts/setup-weights.sh --model lite0
cargo build --release --quiet -p adp-host -p adp-plugin-candle
adp=target/release/adp
mkdir -p "$out"
for part in metal_plate bottle; do
  echo "== $part: fit on examples/images/$part/train/good" >&2
  "$adp" fit --plugin-dir target/release --quiet --support "examples/images/$part/train/good" -o "$out/$part.adp"
  echo "== $part: score examples/images/$part/test (overlays in $out/overlays/$part)" >&2
  "$adp" score --plugin-dir target/release --quiet --detector "$out/$part.adp" \
    --overlays "$out/overlays/$part" --overwrite examples/images/$part/test/*/
done
