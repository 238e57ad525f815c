#!/usr/bin/env bash
# The CUDA check, in two halves.
#
#   bash scripts/gpu-check.sh build   (here, no GPU needed) builds the release `iapt` binary with
#       `--features cuda` and the GPU parity tests for CUDA (crates/train/tests/gpu.rs built as
#       test `cuda`), strips both and packs them into target/gpu-check/bundle.tar.xz.
#   bash scripts/gpu-check.sh run [OUT.json]   (on the CUDA machine, from the repository root, with
#       that bundle carried over) runs, one after another:
#       1. the parity tests on `cuda` (forward, cached generation, burn-train training of IAPT and
#          LoRA against ndarray; f16 and bf16 backbones against f32);
#       2. `iapt bench generate` and `iapt bench train` on `cuda` for SmolLM2-135M's shape (random
#          weights: the machine has no network, and speed does not depend on the values): 128-token
#          prompts, 64 new tokens, batch 1 and 8; training 8 x 128 tokens;
#       3. a LLaMA-2-7B-shaped model with a bf16 backbone: one generation (batch 1, 64-token prompt,
#          16 new tokens) and 3 IAPT training steps (batch 1, 64 + 8 tokens),
#       sampling GPU memory (nvidia-smi, every 100 ms) during each, and writes one JSON (default
#       ${OUT:-target/gpu-check}/gpu-check.json) with every result, the peak memory of each phase
#       and the device's name and driver. A failing phase is recorded and the others still run;
#       the exit code is non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check

build() {
  mkdir -p "$dir"
  cargo build --release -p iapt-cli --features cuda
  local test_bin
  test_bin=$(cargo test --release -p iapt-train --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
  [ -n "$test_bin" ] || { echo "error: the cuda test binary was not built" >&2; exit 1; }
  cp target/release/iapt "$dir/iapt"
  cp "$test_bin" "$dir/cuda-tests"
  strip "$dir/iapt" "$dir/cuda-tests"
  tar -C "$dir" -cJf "$dir/bundle.tar.xz" iapt cuda-tests
  ls -l "$dir/iapt" "$dir/cuda-tests" "$dir/bundle.tar.xz" >&2
}

# Runs "$@" with GPU memory sampled; prints the phase's JSON object: its name, exit code, seconds,
# peak memory used on the device (MiB, as nvidia-smi reports it, all processes) and its output
# (parsed when it is JSON, else the last lines).
phase() {
  local name=$1; shift
  local log="$dir/$name.out" mem="$dir/$name.mem"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$mem" 2>/dev/null &
  local sampler=$! start=$SECONDS rc=0
  "$@" > "$log" 2> "$dir/$name.err" || rc=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  python3 - "$name" "$rc" "$((SECONDS - start))" "$log" "$mem" "$dir/$name.err" <<'EOF'
import json, sys
name, rc, seconds, log, mem, err = sys.argv[1:]
text = open(log).read()
try:
    output = json.loads(text)
except ValueError:
    output = text.splitlines()[-30:]
memory = [int(v) for v in open(mem).read().split() if v.strip().isdigit()]
print(json.dumps({"phase": name, "exit_code": int(rc), "seconds": int(seconds), "peak_gpu_memory_mib": max(memory, default=None),
                  "output": output, "stderr_tail": open(err).read().splitlines()[-15:]}))
EOF
}

run() {
  local out=${1:-${OUT:-$dir}/gpu-check.json}
  mkdir -p "$dir" "$(dirname "$out")"
  if [ ! -x "$dir/iapt" ] || [ ! -x "$dir/cuda-tests" ]; then
    tar -C "$dir" -xJf "$dir/bundle.tar.xz"
  fi
  command -v nvidia-smi > /dev/null || { echo "error: nvidia-smi not found: this is not a CUDA machine" >&2; exit 1; }
  local iapt="$dir/iapt" phases="$dir/phases.jsonl"
  : > "$phases"
  phase parity_tests "$dir/cuda-tests" --test-threads=1 >> "$phases"
  phase smollm2_generate "$iapt" bench generate --backend cuda --model random:smollm2-135m --batch 1,8 --prompt-tokens 128 --new-tokens 64 --repeats 3 >> "$phases"
  phase smollm2_train "$iapt" bench train --backend cuda --model random:smollm2-135m --batch 8 --prompt-tokens 120 --response-tokens 8 --steps 5 >> "$phases"
  phase llama2_7b_bf16_generate "$iapt" bench generate --backend cuda --dtype bf16 --model random:llama2-7b --batch 1 --prompt-tokens 64 --new-tokens 16 --repeats 1 >> "$phases"
  phase llama2_7b_bf16_train "$iapt" bench train --backend cuda --dtype bf16 --model random:llama2-7b --tuner iapt --batch 1 --prompt-tokens 64 --response-tokens 8 --steps 3 >> "$phases"
  python3 - "$phases" "$out" <<'EOF'
import json, os, subprocess, sys
phases = [json.loads(line) for line in open(sys.argv[1])]
device = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
report = {"check": "gpu-check", "device": device, "all_passed": all(p["exit_code"] == 0 for p in phases), "phases": phases}
tmp = sys.argv[2] + ".tmp"
with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
os.replace(tmp, sys.argv[2])
print(json.dumps({p["phase"]: {"exit_code": p["exit_code"], "seconds": p["seconds"], "peak_gpu_memory_mib": p["peak_gpu_memory_mib"]} for p in phases}, indent=1))
sys.exit(0 if report["all_passed"] else 1)
EOF
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash scripts/gpu-check.sh build | run [OUT.json]" >&2; exit 2 ;;
esac
