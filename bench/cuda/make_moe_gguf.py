#!/usr/bin/env python3
"""Random-weight GGUF files at GPT-OSS-20B and Qwen3-30B-A3B's shapes for
llama-bench: the llama.cpp side of make_synth_moe.py (same shapes, the same
value ranges, so routing spreads alike), in the formats llama.cpp's own files
of these models use:

  gptoss20b      arch gpt-oss, file type MOSTLY_MXFP4_MOE (as ggml-org's
                 gpt-oss-20b GGUF): experts MXFP4, the other matrices Q8_0,
                 routers, biases, sinks and norms F32 (12.1 GB)
  qwen3-30b-a3b  arch qwen3moe, what llama-quantize makes of it for Q4_0:
                 matrices Q4_0, output Q6_K, routers and norms F32 (17.3 GB)

Quantized blocks are written directly (no F16 file, no llama-quantize): a
pattern of valid blocks (random codes; scales chosen as make_synth_moe.py's)
tiled over each tensor from its own offset. Metadata as llama.cpp's
convert_hf_to_gguf.py writes for these models (the keys its loaders read:
block/context/embedding/feed-forward lengths, heads, KV heads, key/value
length, rope base, RMS eps, expert count/used/feed-forward length, and for
gpt-oss the sliding window and YaRN scaling). Tokenizer: the real Llama 3.1
one (make_gguf.py's gguf_vocab) padded with unused tokens to the model's
vocab size: llama-bench only needs the vocab's size.

    python3 make_moe_gguf.py --gguf-py DIR --tok DIR --make-gguf DIR --out FILE SHAPE
        [--layers N] [--tiny]    (testing: fewer layers / narrow widths)
--make-gguf: the folder holding ../shared/bench/gpu-peer's make_gguf.py
(.device/serve/ on the GPU machine). Needs numpy.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_synth_moe import SHAPES, make_config, moe_dims  # noqa: E402

PAT_BLOCKS = 1 << 16


class Blocks:
    """Valid quantized blocks of one type, as a byte pattern to tile."""

    def __init__(self, rng, gguf, qtype, amp):
        n = PAT_BLOCKS
        T = gguf.GGMLQuantizationType
        jitter = 1 + 0.1 * (rng.random(n) - 0.5)

        def f16(x):
            return x.astype(np.float16).view(np.uint8).reshape(n, 2)

        if qtype == T.Q8_0:  # d f16, 32 x int8: d * q
            b = np.concatenate([f16(amp / 127 * jitter), rng.integers(0, 256, (n, 32), np.uint8)], 1)
        elif qtype == T.Q4_0:  # d f16, 16 bytes of nibbles: d * (q - 8)
            b = np.concatenate([f16(amp / 8 * jitter), rng.integers(0, 256, (n, 16), np.uint8)], 1)
        elif qtype == T.MXFP4:  # e8m0, 16 bytes of E2M1 nibbles: e2m1(q) * 2^(e - 127)
            e = 120 if amp >= 0.02 else 118  # as make_synth_moe.py's 2^-7/2^-8 and a quarter
            b = np.concatenate([rng.integers(e - 1, e, (n, 1), np.uint8, endpoint=True),
                                rng.integers(0, 256, (n, 16), np.uint8)], 1)
        elif qtype == T.Q6_K:  # ql[128] qh[64] int8 scales[16] d f16: d * sc * (q - 32)
            sc = rng.integers(4, 11, (n, 16), np.int8, endpoint=True).view(np.uint8)
            b = np.concatenate([rng.integers(0, 256, (n, 192), np.uint8), sc,
                                f16(amp / (32 * 10) * jitter)], 1)
        else:
            raise ValueError(qtype)
        self.block = gguf.GGML_QUANT_SIZES[qtype][1]
        assert b.shape[1] == self.block, (qtype, b.shape)
        self.flat = np.ascontiguousarray(b).reshape(-1)

    def tile(self, rng, nbytes):
        start = int(rng.integers(0, PAT_BLOCKS)) * self.block
        return np.resize(np.roll(self.flat, -start), nbytes)


def specs(shape, cfg):
    """[(gguf name, numpy shape [.., out, in], kind, amp)]; kind: a quantized
    type name, or f32 / ones / small / sinks"""
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    QH, KVH, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    E, X = moe_dims(cfg)
    oss = shape == "gptoss20b"
    mat = "Q8_0" if oss else "Q4_0"
    s = [("token_embd.weight", (V, H), mat, 1.0), ("output_norm.weight", (H,), "ones", 0),
         # llama-quantize: output Q6_K, Q8_0 where rows are no multiple of 256
         ("output.weight", (V, H), "Q8_0" if oss or H % 256 else "Q6_K", 0.02)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"blk.{i}."
        s += [(p + "attn_norm.weight", (H,), "ones", 0),
              (p + ("post_attention_norm.weight" if oss else "ffn_norm.weight"), (H,), "ones", 0),
              (p + "attn_q.weight", (QH * HD, H), mat, 0.02),
              (p + "attn_k.weight", (KVH * HD, H), mat, 0.02),
              (p + "attn_v.weight", (KVH * HD, H), mat, 0.02),
              (p + "attn_output.weight", (H, QH * HD), mat, 0.005),
              (p + "ffn_gate_inp.weight", (E, H), "small", 0.0115)]
        if oss:
            s += [(p + "attn_q.bias", (QH * HD,), "small", 0.02),
                  (p + "attn_k.bias", (KVH * HD,), "small", 0.02),
                  (p + "attn_v.bias", (KVH * HD,), "small", 0.02),
                  (p + "attn_output.bias", (H,), "small", 0.02),
                  (p + "attn_sinks.weight", (QH,), "small", 1.0),
                  (p + "ffn_gate_inp.bias", (E,), "small", 0.02),
                  (p + "ffn_gate_exps.weight", (E, X, H), "MXFP4", 0.02),
                  (p + "ffn_up_exps.weight", (E, X, H), "MXFP4", 0.02),
                  (p + "ffn_down_exps.weight", (E, H, X), "MXFP4", 0.005),
                  (p + "ffn_gate_exps.bias", (E, X), "small", 0.02),
                  (p + "ffn_up_exps.bias", (E, X), "small", 0.02),
                  (p + "ffn_down_exps.bias", (E, H), "small", 0.02)]
        else:
            s += [(p + "attn_q_norm.weight", (HD,), "ones", 0),
                  (p + "attn_k_norm.weight", (HD,), "ones", 0),
                  (p + "ffn_gate_exps.weight", (E, X, H), "Q4_0", 0.02),
                  (p + "ffn_up_exps.weight", (E, X, H), "Q4_0", 0.02),
                  (p + "ffn_down_exps.weight", (E, H, X), "Q4_0", 0.005)]
    return s


def write(gguf, make_gguf, shape, cfg, tok_dir, path):
    T = gguf.GGMLQuantizationType
    oss = shape == "gptoss20b"
    E, X = moe_dims(cfg)
    w = gguf.GGUFWriter(path, "gpt-oss" if oss else "qwen3moe")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(("GPT-OSS-20B" if oss else "Qwen3-30B-A3B") + " (random weights)")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_expert_count(E)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_feed_forward_length(X)
    if oss:
        rs = cfg["rope_scaling"]
        w.add_sliding_window(cfg["sliding_window"])
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    else:
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_vocab_size(cfg["vocab_size"])
    tokens, types = make_gguf.gguf_vocab(gguf, os.path.join(tok_dir, "tokenizer.json"),
                                         cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(tok_dir, load_merges=True).add_to_gguf(w, quiet=True)

    sp = specs(shape, cfg)
    for name, shp, kind, _ in sp:
        n = int(np.prod(shp))
        if kind in ("ones", "small"):
            w.add_tensor_info(name, shp, np.dtype(np.float32), n * 4, raw_dtype=T.F32)
        else:
            qt = T[kind]
            blk, size = gguf.GGML_QUANT_SIZES[qt]
            assert shp[-1] % blk == 0, (name, shp, kind)
            byte_shape = tuple(shp[:-1]) + (shp[-1] // blk * size,)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n // blk * size, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(20240601)
    pats = {}
    total = 0
    for name, shp, kind, amp in sp:
        n = int(np.prod(shp))
        if kind == "ones":
            data = np.ones(shp, np.float32)
        elif kind == "small":
            data = (rng.standard_normal(shp, dtype=np.float32) * np.float32(amp))
        else:
            qt = T[kind]
            if (kind, amp) not in pats:
                pats[kind, amp] = Blocks(rng, gguf, qt, amp)
            blk, size = gguf.GGML_QUANT_SIZES[qt]
            data = pats[kind, amp].tile(rng, n // blk * size)
        total += data.nbytes
        w.write_tensor_data(np.ascontiguousarray(data))
    w.close()
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf-py", required=True, help="llama.cpp's gguf-py folder")
    ap.add_argument("--tok", required=True, help="folder with the Llama 3.1 tokenizer.json + tokenizer_config.json")
    ap.add_argument("--make-gguf", required=True, help="folder holding gpu-peer's make_gguf.py")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("shape", choices=SHAPES)
    a = ap.parse_args()
    sys.path.insert(0, a.gguf_py)
    sys.path.insert(0, a.make_gguf)
    import gguf  # noqa: E402
    import make_gguf  # noqa: E402

    cfg = make_config(a.shape, a.layers, a.tiny)
    if a.tiny:  # the padded Llama 3.1 vocab needs the real vocab size
        cfg["vocab_size"] = make_config(a.shape)["vocab_size"]
    t0 = time.time()
    n = write(gguf, make_gguf, a.shape, cfg, a.tok, a.out + ".tmp")
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}: {a.shape}{' tiny' if a.tiny else ''}, {cfg['num_hidden_layers']} layers, "
          f"{n / 1e9:.3f} GB of tensors, {os.path.getsize(a.out) / 1e9:.3f} GB file in "
          f"{time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
