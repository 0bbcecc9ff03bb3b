#!/usr/bin/env bash
# The repository checks and the checker's own lint and tests. crates/xtask is a workspace of its
# own (see the root Cargo.toml), so the product's fmt, clippy and test steps do not cover it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
x=(--manifest-path crates/xtask/Cargo.toml)
cargo fmt "${x[@]}" --check
cargo clippy -q "${x[@]}" --target-dir target/xtask --all-targets -- -D warnings
cargo test -q "${x[@]}" --target-dir target/xtask
cargo xtask check
