#!/usr/bin/env python3
"""Writes a synthetic Llama-4-Scout-shape checkpoint in mlx-community's 4-bit
layout (random weights; numpy only) for decode/prefill speed runs.

Shapes are Llama-4-Scout-17B-16E's text model (hidden 5120, 40 heads, 8 kv
heads, head_dim 128, 16 experts top-1 of width 8192 plus a shared expert,
vocab 202048, every 4th layer NoPE, chunk 8192); --layers cuts the depth
(48 in the real model) so the file fits a small machine: the per-layer cost
measured on a few layers scales to the full depth. Weights are MLX affine
4-bit, group 64, float16 scales/biases (the layout nmlx and mlx-lm load:
`language_model.model.layers.N.feed_forward.experts.{gate,up,down}_proj`
stacked [E, out, in]); norms float16. Scales are chosen so activations stay
O(1) (the logits are meaningless, the bytes read are real).

Usage: python3 bench/make_synthetic_llama4.py OUT_DIR [--layers 4] [--experts 16]
"""

import argparse
import json
import os
import struct

import numpy as np

BITS, GROUP = 4, 64


def shapes(a):
    D, H, KVH, HD = 5120, 40, 8, 128
    I, IM, E, V = 8192, 16384, a.experts, 202048
    out = []  # (name, kind, shape): kind "q" (quantized [.., out, in]) or "f" (float16)

    def lin(name, rows, cols, lead=()):
        out.append((name, "q", tuple(lead) + (rows, cols)))

    p = "language_model.model."
    lin(p + "embed_tokens", V, D)
    for i in range(a.layers):
        lp = f"{p}layers.{i}."
        out.append((lp + "input_layernorm.weight", "f", (D,)))
        out.append((lp + "post_attention_layernorm.weight", "f", (D,)))
        lin(lp + "self_attn.q_proj", H * HD, D)
        lin(lp + "self_attn.k_proj", KVH * HD, D)
        lin(lp + "self_attn.v_proj", KVH * HD, D)
        lin(lp + "self_attn.o_proj", D, H * HD)
        f = lp + "feed_forward."
        lin(f + "router", E, D)
        lin(f + "experts.gate_proj", I, D, (E,))
        lin(f + "experts.up_proj", I, D, (E,))
        lin(f + "experts.down_proj", D, I, (E,))
        lin(f + "shared_expert.gate_proj", I, D)
        lin(f + "shared_expert.up_proj", I, D)
        lin(f + "shared_expert.down_proj", D, I)
    out.append((p + "norm.weight", "f", (D,)))
    lin("language_model.lm_head", V, D)
    del IM
    return out


def tensors(spec):
    """(name, dtype, shape, writer) for every stored tensor."""
    for name, kind, shape in spec:
        if kind == "f":
            yield name, "F16", shape, ("ones", shape)
            continue
        *lead, rows, cols = shape
        yield name + ".weight", "U32", (*lead, rows, cols * BITS // 32), ("words", shape)
        yield name + ".scales", "F16", (*lead, rows, cols // GROUP), ("scales", shape)
        yield name + ".biases", "F16", (*lead, rows, cols // GROUP), ("biases", shape)


def nbytes(dtype, shape):
    return int(np.prod(shape)) * (4 if dtype == "U32" else 2)


def write(path, spec, seed):
    items = list(tensors(spec))
    header, off = {}, 0
    for name, dt, shape, _ in items:
        n = nbytes(dt, shape)
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "mlx"}
    js = json.dumps(header, separators=(",", ":")).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for name, dt, shape, (what, full) in items:
            n = int(np.prod(shape))
            if what == "ones":
                f.write(np.ones(n, dtype="<f2").tobytes())
                continue
            fan_in = full[-1]
            s = 1.0 / (4.6 * np.sqrt(fan_in))  # weight std ~ 1/sqrt(fan_in)
            if what == "words":
                step = 1 << 24
                for i in range(0, n, step):
                    m = min(step, n - i)
                    f.write(rng.integers(0, 1 << 32, m, dtype=np.uint32).astype("<u4").tobytes())
            elif what == "scales":
                f.write(np.full(n, s, dtype="<f2").tobytes())
            else:
                f.write(np.full(n, -7.5 * s, dtype="<f2").tobytes())
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=False)
    text = dict(
        model_type="llama4_text", hidden_size=5120, intermediate_size=8192,
        intermediate_size_mlp=16384, num_hidden_layers=a.layers, num_attention_heads=40,
        num_key_value_heads=8, head_dim=128, vocab_size=202048, num_local_experts=a.experts,
        num_experts_per_tok=1, interleave_moe_layer_step=1, no_rope_layers=[],
        no_rope_layer_interval=4, attention_chunk_size=8192, use_qk_norm=True,
        attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1, rms_norm_eps=1e-5,
        max_position_embeddings=10485760, rope_theta=500000.0, hidden_act="silu",
        rope_scaling=dict(rope_type="llama3", factor=16.0, low_freq_factor=1.0,
                          high_freq_factor=1.0, original_max_position_embeddings=8192),
        tie_word_embeddings=False, bos_token_id=200000, eos_token_id=[200001, 200007, 200008])
    cfg = dict(model_type="llama4", architectures=["Llama4ForConditionalGeneration"],
               text_config=text, quantization=dict(group_size=GROUP, bits=BITS),
               quantization_config=dict(group_size=GROUP, bits=BITS))
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    n = write(os.path.join(a.out, "model.safetensors"), shapes(a), a.seed)
    print(f"{a.out}: {a.layers} layers, {n / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
