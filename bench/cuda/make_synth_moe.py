"""Writes a random-weight MoE checkpoint at a real model's shapes, in the
format mlx-community publishes it, for speed runs (nothing is quantized: codes
are random bytes tiled from a 1 MiB pattern, scales chosen so weights stay
small; speed does not depend on the values). Pure Python (no numpy).

  gptoss20b      GPT-OSS-20B (24 layers, hidden 2880, 32 experts top-4 of
                 2880, 64 heads / 8 KV heads of 64, sliding window 128 on
                 every other layer, attention sinks, vocab 201088) as
                 mlx-community/gpt-oss-20b-MXFP4-Q8: experts MXFP4
                 (`mlp.experts.{gate,up,down}_proj.weight` U32 [E, out, in/8],
                 `.scales` U8 E8M0 [E, out, in/32], `.bias` BF16 [E, out]);
                 everything else MLX affine 8-bit g64 (embeddings, attention,
                 router, untied head); q/k/v/o, router biases, sinks and norms
                 BF16. 12.1 GB. `quantization` as mlx-lm's convert of the HF
                 MXFP4 release writes it: global `{"group_size": 32, "bits":
                 4, "mode": "mxfp4"}` (the experts), an affine 8-bit g64 entry
                 per converted module, the routers `{"group_size": 64, "bits":
                 8}` (mlx-lm's quant_predicate; no "mode" = affine). The
                 published config was not at hand: this is read from mlx-lm's
                 convert/load code; the size, 12.1 GB, agrees (g32 would be 12.2).
  qwen3-30b-a3b  Qwen3-30B-A3B (48 layers, hidden 2048, 128 experts top-8 of
                 768, 32 heads / 4 KV heads of 128, vocab 151936) as
                 mlx-community's 4-bit conversions (mlx-lm): MLX affine 4-bit
                 g64 everywhere (`mlp.switch_mlp.{gate,up,down}_proj` [E, ...]
                 stacks, embeddings, attention, untied head), the router
                 (`mlp.gate`) 8-bit g64 as mlx-lm's quant_predicate sets it;
                 scales/biases, q/k norms and norms BF16. 17.2 GB.

Values: affine weights lie in [-0.02, 0.02] (scale 0.04/(2^bits-1), bias
-0.02, +-5% per group), MXFP4 scales are 2^-7 and 2^-8 (E2M1 codes up to 6);
the embedding table spans [-1, 1] and the output projections (o_proj, the
experts' down_proj) a quarter of the rest, so every position keeps its own
hidden state through all layers (see affine() below); biases and sinks are
small, norms ones. Checked with the CPU build: logits finite (std ~0.55),
logits of 16 positions correlated 0.24 on average after 48 layers (0.95
before the scaling), the first router's top-k over 48 random tokens picks
every one of gpt-oss's 32 experts and 121 of Qwen's 128.
Writing takes ~1 min for 12-17 GB where the disk takes ~300 MB/s.

usage: python3 make_synth_moe.py OUT_DIR gptoss20b|qwen3-30b-a3b
testing options: --layers N (fewer layers), --tiny (narrow widths and a
256-entry vocab, same formats and config keys)"""
import json
import os
import random
import struct
import sys
import time

from synth_safetensors import write_safetensors

SHAPES = ("gptoss20b", "qwen3-30b-a3b")


def make_config(shape, layers=None, tiny=False):
    """The HF config.json fields of `shape` (without the quantization entries);
    also used by make_moe_gguf.py."""
    if shape == "gptoss20b":
        cfg = {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
            "attention_dropout": 0.0, "eos_token_id": 200002, "pad_token_id": 199999,
            "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880,
            "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 2880,
            "max_position_embeddings": 131072, "num_attention_heads": 64, "num_experts_per_tok": 4,
            "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
            "output_router_logits": False, "rms_norm_eps": 1e-05,
            "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                             "original_max_position_embeddings": 4096, "rope_type": "yarn",
                             "truncate": False},
            "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
            "swiglu_limit": 7.0, "tie_word_embeddings": False, "use_cache": True,
            "vocab_size": 201088,
        }
        if tiny:
            cfg.update(hidden_size=128, intermediate_size=96, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, num_local_experts=8, vocab_size=256,
                       eos_token_id=255, pad_token_id=254, sliding_window=4)
    else:
        cfg = {
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1,
            "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
            "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
            "max_window_layers": 48, "mlp_only_layers": [], "moe_intermediate_size": 768,
            "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128,
            "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
            "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None,
            "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
            "use_sliding_window": False, "vocab_size": 151936,
        }
        if tiny:
            cfg.update(hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=16,
                       vocab_size=256, bos_token_id=0, eos_token_id=255)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = layers
    if shape == "gptoss20b":
        n = cfg["num_hidden_layers"]
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return cfg



def moe_dims(cfg):
    """(experts, expert hidden size)"""
    if cfg["model_type"] == "gpt_oss":
        return cfg["num_local_experts"], cfg["intermediate_size"]
    return cfg["num_experts"], cfg["moe_intermediate_size"]


def main():
    args, layers, tiny = [], None, False
    it = iter(sys.argv[1:])
    for a in it:
        if a == "--layers":
            layers = int(next(it, "0"))
        elif a == "--tiny":
            tiny = True
        else:
            args.append(a)
    if len(args) != 2 or args[1] not in SHAPES or layers == 0:
        sys.exit(__doc__)
    out, shape = args

    cfg = make_config(shape, layers, tiny)
    NL = cfg["num_hidden_layers"]
    BITS, GS = (8, 64) if shape == "gptoss20b" else (4, 64)
    # as mlx-lm's convert writes them: gpt-oss's experts come MXFP4 from the HF
    # release (the global entry), the layers quantized by the conversion get
    # entries of their own, the router mlx-lm's quant_predicate dict (no
    # "mode": affine); Qwen: the globals, and the router's dict
    if shape == "gptoss20b":
        quant = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
        q8 = {"group_size": GS, "bits": BITS, "mode": "affine"}
        quant["model.embed_tokens"] = dict(q8)
        for i in range(NL):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                quant[f"model.layers.{i}.self_attn.{proj}"] = dict(q8)
            quant[f"model.layers.{i}.mlp.router"] = {"group_size": 64, "bits": 8}
        quant["lm_head"] = dict(q8)
    else:
        quant = {"group_size": GS, "bits": BITS, "mode": "affine"}
        for i in range(NL):
            quant[f"model.layers.{i}.mlp.gate"] = {"group_size": 64, "bits": 8}
    cfg["quantization"] = quant
    cfg["quantization_config"] = dict(quant)
    os.makedirs(out, exist_ok=True)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)

    rng = random.Random(0)
    PAT = 1 << 20


    def bf16_bytes(vals):
        return b"".join(struct.pack("<f", v)[2:] for v in vals)


    _pats = {}


    def affine_pats(bits, amp):
        """scales and biases putting 2^bits codes on [-amp, amp] (+-5% per group)"""
        if (bits, amp) not in _pats:
            step = 2 * amp / ((1 << bits) - 1)
            _pats[bits, amp] = (
                bf16_bytes(step * (1 + 0.1 * (rng.random() - 0.5)) for _ in range(PAT // 2)),
                bf16_bytes(-amp * (1 + 0.1 * (rng.random() - 0.5)) for _ in range(PAT // 2)))
        return _pats[bits, amp]


    pat_codes = rng.randbytes(PAT)  # U32 words of any affine width, and E2M1 nibbles
    pat_e8m0 = {0: bytes(rng.choice((119, 120)) for _ in range(PAT)),  # 2^-8, 2^-7
                -2: bytes(rng.choice((117, 118)) for _ in range(PAT))}  # a quarter of that
    pat_small = bf16_bytes(rng.gauss(0, 0.02) for _ in range(PAT // 2))  # linear biases
    pat_sinks = bf16_bytes(rng.gauss(0, 1.0) for _ in range(PAT // 2))
    ONES = bf16_bytes([1.0]) * (PAT // 2)

    tensors = []  # (name, dtype, shape, pattern)


    # Weights in [-0.02, 0.02]; the embedding table in [-1, 1] and the layers' output
    # projections (o_proj, experts' down_proj) a quarter of the others, so the
    # residual stream keeps each token's identity through every layer: with all
    # weights alike, the layers' position-averaged attention outputs swamp the
    # embeddings and 48 layers leave every position with the same hidden state
    # (Qwen3-30B-A3B: logits of different positions 0.95 correlated) and so the
    # same experts. Every tensor starts at its own offset in the patterns.


    def affine(name, rows, cols, bits=BITS, lead=(), amp=0.02):
        lead = list(lead)
        sc, bi = affine_pats(bits, amp)
        tensors.append((name + ".weight", "U32", lead + [rows, cols * bits // 32], pat_codes))
        tensors.append((name + ".scales", "BF16", lead + [rows, cols // GS], sc))
        tensors.append((name + ".biases", "BF16", lead + [rows, cols // GS], bi))


    def mxfp4(name, E, rows, cols, exp=0):
        tensors.append((name + ".weight", "U32", [E, rows, cols // 8], pat_codes))
        tensors.append((name + ".scales", "U8", [E, rows, cols // 32], pat_e8m0[exp]))
        tensors.append((name + ".bias", "BF16", [E, rows], pat_small))


    H, V = cfg["hidden_size"], cfg["vocab_size"]
    QH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    E, X = moe_dims(cfg)
    affine("model.embed_tokens", V, H, amp=1.0)
    tensors.append(("model.norm.weight", "BF16", [H], ONES))
    affine("lm_head", V, H)
    for i in range(NL):
        p = f"model.layers.{i}."
        tensors.append((p + "input_layernorm.weight", "BF16", [H], ONES))
        tensors.append((p + "post_attention_layernorm.weight", "BF16", [H], ONES))
        for proj, rows, cols in (("q_proj", QH * HD, H), ("k_proj", KVH * HD, H),
                                 ("v_proj", KVH * HD, H), ("o_proj", H, QH * HD)):
            affine(p + "self_attn." + proj, rows, cols, amp=0.005 if proj == "o_proj" else 0.02)
            if cfg["attention_bias"]:
                tensors.append((p + f"self_attn.{proj}.bias", "BF16", [rows], pat_small))
        if shape == "gptoss20b":
            tensors.append((p + "self_attn.sinks", "BF16", [QH], pat_sinks))
            affine(p + "mlp.router", E, H)
            tensors.append((p + "mlp.router.bias", "BF16", [E], pat_small))
            mxfp4(p + "mlp.experts.gate_proj", E, X, H)
            mxfp4(p + "mlp.experts.up_proj", E, X, H)
            mxfp4(p + "mlp.experts.down_proj", E, H, X, exp=-2)
        else:
            tensors.append((p + "self_attn.q_norm.weight", "BF16", [HD], ONES))
            tensors.append((p + "self_attn.k_norm.weight", "BF16", [HD], ONES))
            affine(p + "mlp.gate", E, H, bits=8)
            for proj, rows, cols in (("gate_proj", X, H), ("up_proj", X, H), ("down_proj", H, X)):
                affine(p + "mlp.switch_mlp." + proj, rows, cols, lead=(E,),
                       amp=0.005 if proj == "down_proj" else 0.02)

    t0 = time.time()
    off = write_safetensors(os.path.join(out, "model.safetensors"), tensors, "mlx", rng, PAT // 64)
    fmt = "MXFP4 experts, 8-bit g64 rest" if shape == "gptoss20b" else "4-bit g64 (router 8-bit)"
    print(f"wrote {out}: {shape}{' tiny' if tiny else ''}, {NL} layers, {fmt}, {off / 1e9:.3f} GB "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
