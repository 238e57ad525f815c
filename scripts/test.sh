#!/usr/bin/env bash
# The project's test suite: unit tests on tiny random models, then integration tests on the
# real SmolLM2 checkpoint and real datasets (fetched once into $IAPT_HOME, default ~/.cache/iapt).
# The integration tests need the network the first time, so plain `cargo test` lists them as
# ignored; this script runs them too.
set -euo pipefail
cd "$(dirname "$0")/.."

# The BIG-bench tasks (multiemo, strategyqa, ...) are read from the bigbench==1.0.0 sdist. Where
# it is not cached and the package index no longer serves it (the index has listed only bigbench
# 0.0.1, which holds no task files, since 2026-12-05), the tests that read those tasks cannot run:
# they are named here and left out, rather than failing on the download. Every other real-data
# test (the quickstart's Rotten Tomatoes task among them) reads packages the index serves.
needs_bigbench=(
  tests::network_bigbench_task_from_sdist
  network_bigbench_tasks_load_with_recorded_splits
)
skip=()
cached="${IAPT_HOME:-$HOME/.cache/iapt}/packages/bigbench-1.0.0"
if [ ! -d "$cached" ] && ! python3 -m pip index versions bigbench 2>/dev/null | grep -q '(1\.0\.0)\|, 1\.0\.0\|: 1\.0\.0'; then
  for name in "${needs_bigbench[@]}"; do skip+=(--skip "$name"); done
  echo "NOT RUN: bigbench==1.0.0 is neither cached in $cached nor served by the package index, so these ${#needs_bigbench[@]} tests cannot read their tasks: ${needs_bigbench[*]}" >&2
fi
cargo test --workspace -- --include-ignored "${skip[@]}"

# The GPU code path, run: training, generation and adapters on wgpu against ndarray. Without a
# GPU, wgpu runs on Mesa's lavapipe (Vulkan on the CPU), installed here when missing.
bash scripts/install-system-deps.sh
cargo test -p iapt-train --features wgpu --test wgpu
