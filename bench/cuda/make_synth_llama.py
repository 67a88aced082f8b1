"""Writes a random-weight checkpoint at Llama-3.2-1B or Llama-3.1-8B's real
shapes for speed runs: bf16, or MLX affine-quantized (U32 codes + bf16
scales/biases, as `nmlx convert` / mlx-lm write them) without quantizing
anything: the codes are random bytes, scales/biases chosen so weights lie in
[-0.02, 0.02]. Speed does not depend on the values. Pure Python (no numpy):
one random 1 MiB pattern per dtype, tiled.
usage: python3 make_synth_llama.py OUT_DIR 1b|8b [BITS [GROUP [LAYERS]]]   (BITS 0 = bf16;
LAYERS: fewer layers than the real model, for profiling)"""
import json
import os
import random
import struct
import sys

from synth_safetensors import write_safetensors

out, shape = sys.argv[1], sys.argv[2]
bits = int(sys.argv[3]) if len(sys.argv) > 3 else 0
gs = int(sys.argv[4]) if len(sys.argv) > 4 else 64
layers = int(sys.argv[5]) if len(sys.argv) > 5 else 0
shapes = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
       "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "hidden_act": "silu",
       "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16", "bos_token_id": 128000,
       "eos_token_id": 128001,
       "rope_scaling": {"factor": 32.0 if shape == "1b" else 8.0, "high_freq_factor": 4.0,
                        "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
                        "rope_type": "llama3"}, "rope_theta": 500000.0}
cfg.update(shapes[shape])
if bits:
    cfg["quantization"] = {"group_size": gs, "bits": bits, "mode": "affine"}
    cfg["quantization_config"] = dict(cfg["quantization"])
if layers > 0:
    cfg["num_hidden_layers"] = layers
os.makedirs(out, exist_ok=True)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)

rng = random.Random(0)
PAT = 1 << 20


def bf16_bytes(vals):
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in vals)


pat_w = bf16_bytes(rng.gauss(0, 0.02) for _ in range(PAT // 2))
pat_codes = rng.randbytes(PAT)
step = 0.04 / ((1 << bits) - 1) if bits else 0
pat_scales = bf16_bytes(step * (1 + 0.1 * rng.random()) for _ in range(PAT // 2))
pat_biases = bf16_bytes(-0.02 * (1 + 0.1 * rng.random()) for _ in range(PAT // 2))
ONES = bf16_bytes([1.0]) * (PAT // 2)

tensors = []  # (name, dtype, shape, pattern)


def linear(name, rows, cols):
    if bits:
        tensors.append((name + ".weight", "U32", [rows, cols * bits // 32], pat_codes))
        tensors.append((name + ".scales", "BF16", [rows, cols // gs], pat_scales))
        tensors.append((name + ".biases", "BF16", [rows, cols // gs], pat_biases))
    else:
        tensors.append((name + ".weight", "BF16", [rows, cols], pat_w))


H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
QH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
linear("model.embed_tokens", V, H)
tensors.append(("model.norm.weight", "BF16", [H], ONES))
if not cfg["tie_word_embeddings"]:
    linear("lm_head", V, H)
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    tensors.append((p + "input_layernorm.weight", "BF16", [H], ONES))
    tensors.append((p + "post_attention_layernorm.weight", "BF16", [H], ONES))
    linear(p + "self_attn.q_proj", QH * HD, H)
    linear(p + "self_attn.k_proj", KVH * HD, H)
    linear(p + "self_attn.v_proj", KVH * HD, H)
    linear(p + "self_attn.o_proj", H, QH * HD)
    linear(p + "mlp.gate_proj", I, H)
    linear(p + "mlp.up_proj", I, H)
    linear(p + "mlp.down_proj", H, I)

off = write_safetensors(os.path.join(out, "model.safetensors"), tensors, "mlx" if bits else "pt")
print(f"wrote {out}: {shape} {'%d-bit g%d' % (bits, gs) if bits else 'bf16'}, {off / 1e9:.3f} GB")
