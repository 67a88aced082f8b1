"""Writes a random-weight checkpoint with Qwen3-0.6B's real shapes (bf16,
tied embeddings) for speed runs: config.json + model.safetensors in OUT_DIR.
Speed does not depend on the values; norms are ones, the rest N(0, 0.02).
usage: python3 make_synth_qwen3.py OUT_DIR"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
cfg = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
    "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
    "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
    "torch_dtype": "bfloat16", "eos_token_id": 151645,
}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(0)
H, I, HD = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
QH, KVH = cfg["num_attention_heads"], cfg["num_key_value_heads"]


def rnd(*shape):
    return (torch.randn(*shape, generator=g, device=dev) * 0.02).to(torch.bfloat16).cpu()


def ones(n):
    return torch.ones(n, dtype=torch.bfloat16)


t = {"model.embed_tokens.weight": rnd(cfg["vocab_size"], H), "model.norm.weight": ones(H)}
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = ones(H)
    t[p + "post_attention_layernorm.weight"] = ones(H)
    t[p + "self_attn.q_proj.weight"] = rnd(QH * HD, H)
    t[p + "self_attn.k_proj.weight"] = rnd(KVH * HD, H)
    t[p + "self_attn.v_proj.weight"] = rnd(KVH * HD, H)
    t[p + "self_attn.o_proj.weight"] = rnd(H, QH * HD)
    t[p + "self_attn.q_norm.weight"] = ones(HD)
    t[p + "self_attn.k_norm.weight"] = ones(HD)
    t[p + "mlp.gate_proj.weight"] = rnd(I, H)
    t[p + "mlp.up_proj.weight"] = rnd(I, H)
    t[p + "mlp.down_proj.weight"] = rnd(H, I)
save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
n = sum(v.numel() for v in t.values())
print(f"wrote {out}: {n / 1e6:.1f} M parameters, {2 * n / 1e9:.3f} GB bf16")
