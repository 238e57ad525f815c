#!/usr/bin/env bash
# The project's test suite: unit tests on tiny random models, then integration tests on the
# real SmolLM2 checkpoint and real datasets (fetched once into $IAPT_HOME, default ~/.cache/iapt).
# The integration tests need the network the first time, so plain `cargo test` lists them as
# ignored; this script runs them too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace -- --include-ignored
