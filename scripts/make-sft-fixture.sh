#!/usr/bin/env bash
# Makes tests/fixtures/models/tiny-asyncthink-sft: the tiny-gqa4-tied fixture after the demo's
# format SFT (AsyncThink + sequential arithmetic traces, seed 0). Tests that need a model
# which writes the protocol (GRPO resume, executor runs with real forks) start from it.
# Deterministic: the same command rewrites the same bytes. Made by our trainer, not by
# transformers; tests/trained_checkpoint.rs shows transformers loads such checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/fixtures/models/tiny-asyncthink-sft
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo run --release --locked -- demo --model tests/fixtures/models/tiny-gqa4-tied --out "$work" \
    --grpo-steps 0 --eval-items 1
mkdir -p "$out"
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json trainer_state.json; do
    cp "$work/sft/$f" "$out/$f"
done
echo "wrote $out"
