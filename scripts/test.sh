#!/usr/bin/env bash
# The whole test suite: provisions libtorch and the default backbone weights (both cached),
# builds every crate and plugin of the workspace, then runs every test, the tch backend's included.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh --print-env)"
export LIBTORCH
# The pretrained EfficientNet-Lite0/2 of the `visual` method and its conformance cases (cached).
scripts/setup-weights.sh --model all
# Style first: it fails in seconds where the suite takes many minutes.
cargo fmt --all --check
cargo clippy --workspace --all-targets --features adp-conformance/tch -- -D warnings
# The library builds without the CLI and the async service (no clap, indicatif or tokio).
cargo check -p adp-host --no-default-features
# The conformance tests load the plugins from the build folder, so build them first.
cargo build --workspace --features adp-conformance/tch
# --no-fail-fast: one run names every failing test, not only the first failing binary.
cargo test --workspace --no-fail-fast --features adp-conformance/tch "$@"
