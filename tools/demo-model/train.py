#!/usr/bin/env python3
"""Trains nmlx's built-in demo model: a byte-level BPE tokenizer and a small
Llama on public-domain English text (see corpus.sh), then stores what the
fidelity test checks nmlx against: transformers' greedy continuations and the
per-token log-probabilities of a held-out paragraph.

Runs where torch, transformers and tokenizers are (the GPU machine):
    python3 tools/demo-model/train.py --corpus .corpus --out OUT [--minutes 4]
--smoke trains a few steps only (checks the script end to end).
"""
import argparse
import json
import math
import random
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# Candidates for the fidelity prompts: the three plain prompts and the chat
# question whose greedy continuations keep the widest top-1/top-2 logit gap
# are kept, so the exact-greedy check does not hinge on a near tie.
PROMPTS = ["Once upon a time", "In the beginning", "The hacker", "And God said", "The LORD is my shepherd",
           "A computer", "The kingdom of heaven", "A program", "Blessed are the", "The Internet"]
CHAT_QUESTIONS = ["What is a hacker?", "What is a kludge?", "What is a bug?", "What is a daemon?",
                  "Read the beginning of Psalms 23."]
HELD_OUT_EVERY = 40  # every 40th chapter / entry is held out


def first_sentences(text, limit):
    """Leading sentences of text, at most about limit characters."""
    out = ""
    for part in text.replace("? ", "?\0").replace(". ", ".\0").replace("! ", "!\0").split("\0"):
        if out and len(out) + len(part) > limit:
            break
        out = (out + " " + part).strip()
    return out


def chat(question, answer):
    return f"<|user|>\n{question}<|end|>\n<|assistant|>\n{answer}<|end|>\n"


def build_texts(corpus):
    kjv = open(f"{corpus}/kjv.txt", encoding="utf-8").read().strip().split("\n\n")
    jargon = open(f"{corpus}/jargon.txt", encoding="utf-8").read().strip().split("\n\n")
    train, held = [], []
    for i, ch in enumerate(kjv):
        title, body = ch.split("\n", 1)
        if i % HELD_OUT_EVERY == HELD_OUT_EVERY // 2:
            held.append(ch)
            continue
        train.append(ch)
        train.append(chat(f"Read the beginning of {title}.", first_sentences(body, 400)))
    for i, entry in enumerate(jargon):
        head, body = entry.split(": ", 1)
        if i % HELD_OUT_EVERY == HELD_OUT_EVERY // 2:
            held.append(entry)
            continue
        train.append(entry)
        article = "" if head[:1].isupper() or head[:1] in "/-(0123456789" else "a "
        train.append(chat(f"What is {article}{head}?", f"{head}: {first_sentences(body, 500)}"))
    return kjv, jargon, train, held


def train_tokenizer(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_docs(tok, docs, eot):
    ids = []
    for d in docs:
        ids.extend(tok.encode(d, add_special_tokens=False))
        ids.append(eot)
    return ids


@torch.no_grad()
def eval_loss(model, val, seq, device, max_windows=400):
    model.eval()
    total, count = 0.0, 0
    n = min((len(val) - 1) // seq, max_windows)
    for b in range(0, n, 32):
        idx = torch.arange(b, min(b + 32, n), device=device)[:, None] * seq + torch.arange(seq + 1, device=device)
        chunk = val[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=chunk[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += chunk[:, 1:].numel()
    model.train()
    return total / max(count, 1)


def greedy(model, ids, n):
    """Greedy continuation (full forward per step, f32) and the smallest top-1/top-2 gap."""
    ids, out, gap = list(ids), [], math.inf
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 2)
        gap = min(gap, (top.values[0] - top.values[1]).item())
        nxt = int(top.indices[0])
        out.append(nxt)
        ids.append(nxt)
    return out, gap


def plot(curve, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    steps = [c["step"] for c in curve]
    ax.plot(steps, [c["train"] for c in curve], label="train (mean of last 50 steps)")
    ax.plot(steps, [c["val"] for c in curve], label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("nmlx demo model: training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    random.seed(0)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    kjv, jargon, train_docs, held_docs = build_texts(a.corpus)
    tok = train_tokenizer(train_docs, a.vocab)
    eot, end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|end|>")
    random.shuffle(train_docs)
    train_ids = encode_docs(tok, train_docs, eot)
    val_ids = encode_docs(tok, held_docs, eot)
    print(f"tokenizer {len(tok)} tokens; train {len(train_ids)} tokens, held-out {len(val_ids)}; {time.time()-t0:.0f}s", flush=True)

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=704, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, bos_token_id=eot, eos_token_id=[eot, end],
                      pad_token_id=eot, attention_dropout=a.dropout)
    model = LlamaForCausalLM(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {n_params} parameters", flush=True)

    data = torch.tensor(train_ids, dtype=torch.long, device=device)
    val = torch.tensor(val_ids, dtype=torch.long, device=device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=device == "cuda")
    ar = torch.arange(a.seq + 1, device=device)

    def step_once():
        ix = torch.randint(len(data) - a.seq - 1, (a.batch,), device=device)
        chunk = data[ix[:, None] + ar]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=chunk[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    # Time a few steps, then size the cosine schedule to the time budget.
    t_train = time.time()
    for g in opt.param_groups:
        g["lr"] = 0.0
    for _ in range(5):
        step_once()
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.time()
    for _ in range(10):
        step_once()
    if device == "cuda":
        torch.cuda.synchronize()
    per_step = (time.time() - t1) / 10
    steps = 30 if a.smoke else int(a.epochs * len(train_ids) / (a.batch * a.seq))
    if not a.smoke and steps * per_step > a.minutes * 60:
        steps = int(a.minutes * 60 / per_step)
    warmup = max(1, steps // 30)
    eval_every = max(10, steps // 40)
    print(f"{per_step*1000:.1f} ms/step -> {steps} steps ({steps*a.batch*a.seq/len(train_ids):.1f} epochs)", flush=True)

    curve, recent, best = [], [], (math.inf, None, 0)
    for s in range(1, steps + 1):
        lr = a.lr * (s / warmup if s <= warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        recent.append(step_once())
        recent = recent[-50:]
        if s % eval_every == 0 or s == steps:
            tr = torch.stack(recent).mean().item()
            vl = eval_loss(model, val, a.seq, device)
            curve.append({"step": s, "train": tr, "val": vl})
            print(f"step {s}/{steps} lr {lr:.2e} train {tr:.3f} held-out {vl:.3f} ({time.time()-t_train:.0f}s)", flush=True)
            if vl < best[0]:
                best = (vl, {k: v.detach().clone() for k, v in model.state_dict().items()}, s)
    train_seconds = time.time() - t_train
    model.load_state_dict(best[1])
    print(f"best held-out loss {best[0]:.4f} at step {best[2]} (ppl {math.exp(best[0]):.2f})", flush=True)

    # Save in bf16, the form nmlx loads.
    model = model.to(torch.bfloat16)
    model.config.attention_dropout = 0.0
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[eot, end], pad_token_id=eot,
                                               do_sample=True, temperature=0.6, top_p=0.95,
                                               repetition_penalty=1.15)
    model.save_pretrained(a.out, safe_serialization=True)
    tok.save_pretrained(a.out)

    # The reference: the saved bf16 weights, loaded by transformers and run in
    # f32 on the CPU (exact bf16 values, no TF32).
    ref = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32, attn_implementation="eager").eval()
    tok2 = PreTrainedTokenizerFast.from_pretrained(a.out)
    fid = {"prompts": [], "model_params": n_params}
    n_new = 8 if a.smoke else 32
    with torch.no_grad():
        chats = [tok2.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in CHAT_QUESTIONS]
        runs = []
        for p in PROMPTS + chats:
            ids = tok2.encode(p, add_special_tokens=False)
            out, gap = greedy(ref, ids, n_new)
            runs.append({"prompt": p, "prompt_ids": ids, "greedy_ids": out, "greedy_text": tok2.decode(out),
                         "min_top2_gap": gap, "chat": p in chats})
            print(f"{p!r} -> {tok2.decode(out)!r} (min gap {gap:.3f})", flush=True)
        by_gap = sorted(runs, key=lambda r: -r["min_top2_gap"])
        fid["prompts"] = [r for r in by_gap if not r["chat"]][:3] + [r for r in by_gap if r["chat"]][:1]
        para = held_docs[0]
        ids = tok2.encode(para, add_special_tokens=False)[:256]
        logp = torch.log_softmax(ref(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        lp = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        fid["held_out"] = {"text": tok2.decode(ids), "ids": ids, "logprobs": lp.tolist(),
                           "mean_nll": -lp.mean().item(), "perplexity": math.exp(-lp.mean().item())}
        print(f"held-out paragraph: {len(ids)} tokens, perplexity {fid['held_out']['perplexity']:.4f}", flush=True)
        val_f32 = eval_loss(ref, torch.tensor(val_ids), a.seq, "cpu", max_windows=40 if a.smoke else 10_000)
    json.dump(fid, open(f"{a.out}/fidelity.json", "w"), indent=1)

    import tokenizers
    import transformers
    stats = {"params": n_params, "config": {k: getattr(cfg, k) for k in ["vocab_size", "hidden_size", "intermediate_size",
             "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"]},
             "train_tokens": len(train_ids), "held_out_tokens": len(val_ids), "train_docs": len(train_docs),
             "held_out_docs": len(held_docs), "kjv_chapters": len(kjv), "jargon_entries": len(jargon),
             "steps": steps, "batch": a.batch, "seq": a.seq, "lr": a.lr, "ms_per_step": per_step * 1000,
             "epochs": steps * a.batch * a.seq / len(train_ids), "train_seconds": train_seconds,
             "best_step": best[2], "best_heldout_loss_bf16_autocast": best[0],
             "heldout_loss_saved_bf16_f32": val_f32, "heldout_ppl_saved_bf16_f32": math.exp(val_f32),
             "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
             "torch": torch.__version__, "transformers": transformers.__version__,
             "tokenizers": tokenizers.__version__, "total_seconds": time.time() - t0, "curve": curve}
    json.dump(stats, open(f"{a.out}/train_stats.json", "w"), indent=1)
    plot(curve, f"{a.out}/loss.png")
    print(f"held-out perplexity (saved bf16 weights, f32 compute): {math.exp(val_f32):.3f}; total {time.time()-t0:.0f}s")


if __name__ == "__main__":
    main()
