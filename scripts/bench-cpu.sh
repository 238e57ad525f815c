#!/usr/bin/env bash
# The CPU speed measurements of README "CPU speed": generation (128-token prompts, 64 new
# tokens, batch 1 and 8, with and without an IAPT generator) and training steps (8 x 128 tokens)
# on both CPU backends, one job at a time. Writes one JSON file per run into $OUT (default
# runs/bench-cpu). Usage: bash scripts/bench-cpu.sh [path/to/iapt]
set -euo pipefail
cd "$(dirname "$0")/.."
iapt=${1:-target/release/iapt}
out=${OUT:-runs/bench-cpu}
mkdir -p "$out"
for backend in ndarray flex; do
  "$iapt" bench generate --backend "$backend" --prompt-tokens 128 --new-tokens 64 --batch 1,8 --repeats 3 \
    --iapt-bottleneck 64 --profile > "$out/generate-$backend.json"
  "$iapt" bench train --backend "$backend" --batch 8 --prompt-tokens 120 --response-tokens 8 --steps 3 \
    --tuner iapt --profile > "$out/train-iapt-$backend.json"
  "$iapt" bench train --backend "$backend" --batch 8 --prompt-tokens 120 --response-tokens 8 --steps 3 \
    --tuner lora --set 'tuner.targets=["q","k","v","o","gate","up","down"]' > "$out/train-lora-$backend.json"
done
echo "wrote $out/"
