#!/usr/bin/env python3
"""Write a random checkpoint with Qwen3-0.6B's exact shapes, for benchmarks.

    .venv-fixtures/bin/python benches/make_qwen3_0p6b.py [OUT_DIR]   # default bench-models/qwen3-0.6b-random

Shapes and config.json follow Qwen/Qwen3-0.6B's release (hidden 1024, 28 layers, 16 query heads,
8 KV heads, head_dim 128, intermediate 3072, vocab 151936, tied embeddings, rope_theta 1e6,
max_position_embeddings 40960, bf16 on disk). Speed depends only on shapes and dtype, so random
weights (std 0.02, RMSNorm gains 1) measure the same thing as the real ones without a hub.

The tokenizer is the tiny fixture tokenizer (tests/fixtures/tokenizer), so its ids (all < 505)
are valid rows of the 151936-row embedding and bos/eos/pad ids in the configs are ITS ids, not
Qwen's. Output: config.json, generation_config.json, model.safetensors (~1.2 GB), tokenizer files.

Environment: tests/fixtures/setup_venv.sh (same pinned torch/transformers as the fixtures).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizer"

QWEN3_0P6B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
    rope_theta=1_000_000,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def release_config(special: dict) -> dict:
    # Key set and order of Qwen/Qwen3-0.6B's config.json.
    c = QWEN3_0P6B
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": special["<|endoftext|>"],
        "eos_token_id": special["<|im_end|>"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "hidden_size": c["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "max_window_layers": c["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": c["num_key_value_heads"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": c["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": c["tie_word_embeddings"],
        "torch_dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": c["vocab_size"],
    }


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes exactly as transformers' Qwen3ForCausalLM has them.

    Built on the meta device: no memory and no init time, and no risk of a hand-typed name
    drifting from what from_pretrained expects.
    """
    c = QWEN3_0P6B
    cfg = Qwen3Config(**{k: v for k, v in c.items() if k != "rope_theta"},
                      rope_parameters={"rope_type": "default", "rope_theta": float(c["rope_theta"])})
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    # named_parameters() lists a tied lm_head once (as the embedding), as save_pretrained writes it.
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(ROOT / "bench-models" / "qwen3-0.6b-random"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=0.02)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    special = {t["content"]: t["id"] for t in json.loads((TOKENIZER_DIR / "special_tokens.json").read_text())["added_tokens"]}

    gen = torch.Generator().manual_seed(args.seed)
    tensors = {}
    for name, shape in sorted(tensor_shapes().items()):
        if len(shape) == 1:
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)  # RMSNorm gains
        else:
            # Drawn directly in bf16: no f32 copy of the 0.6B weights is ever held.
            tensors[name] = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, args.std, generator=gen)
    n_params = sum(t.numel() for t in tensors.values())
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    del tensors

    (out / "config.json").write_text(json.dumps(release_config(special), indent=2) + "\n")
    gen_cfg = {
        "bos_token_id": special["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [special["<|im_end|>"], special["<|endoftext|>"]],
        "pad_token_id": special["<|endoftext|>"],
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "transformers_version": transformers.__version__,
    }
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / f, out / f)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}: {n_params / 1e6:.1f}M parameters, {size / 2**30:.2f} GiB, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
