#!/usr/bin/env bash
# The project's test suite: unit tests on tiny random models, then integration tests on the
# real SmolLM2 checkpoint and real datasets (fetched once into $IAPT_HOME, default ~/.cache/iapt).
set -euo pipefail
cd "$(dirname "$0")/.."
export IAPT_NETWORK_TESTS="${IAPT_NETWORK_TESTS:-1}"
cargo test --workspace -- --include-ignored
