#!/usr/bin/env node
// Writes a tiny Llama-shaped model with random weights and a byte-level BPE
// tokenizer into a folder, so that `nmlx run` can be tried on a machine with
// no model downloaded. Its text is random: point -m at a real model folder
// (e.g. a HuggingFace snapshot of Qwen/Qwen3-0.6B) for real text.
//   node scripts/make_demo_model.mjs OUT_DIR [--seed N]
import { mkdirSync, writeFileSync, renameSync } from "node:fs";
import { join } from "node:path";

const args = process.argv.slice(2);
if (args.length < 1 || args[0].startsWith("-")) {
  console.error("usage: node scripts/make_demo_model.mjs OUT_DIR [--seed N]");
  process.exit(2);
}
const out = args[0];
const seedArg = args.indexOf("--seed");
let state = BigInt(seedArg >= 0 ? Number(args[seedArg + 1]) : 1234) || 1n;

// xorshift64* -> normal(0, 1) via Box-Muller
function uniform() {
  state ^= state << 13n & 0xffffffffffffffffn;
  state ^= state >> 7n;
  state ^= state << 17n & 0xffffffffffffffffn;
  return (Number(state & 0xfffffffffffffn) + 0.5) / 2 ** 52;
}
function normal() {
  return Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

// GPT-2 byte <-> printable-character map used by byte-level BPE.
function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const map = new Array(256);
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
}

const byteChar = bytesToUnicode();
const vocab = {};
for (let b = 0; b < 256; b++) vocab[byteChar[b]] = b;
const merges = [];
for (const pair of ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t"]) {
  const [a, b] = pair.split(" ");
  const merged = a + b;
  if (!(a in vocab) && a.length > 1) continue;
  merges.push([a, b]);
  if (!(merged in vocab)) vocab[merged] = Object.keys(vocab).length;
}
const eosId = Object.keys(vocab).length;
const vocabSize = 320;
const tokenizer = {
  version: "1.0", truncation: null, padding: null,
  added_tokens: [{ id: eosId, content: "<|endoftext|>", single_word: false, lstrip: false,
    rstrip: false, normalized: false, special: true }],
  normalizer: null,
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null,
    end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false,
    vocab, merges },
};

const cfg = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: vocabSize,
  hidden_size: 64, intermediate_size: 160, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, head_dim: 16, max_position_embeddings: 2048, rms_norm_eps: 1e-5,
  rope_theta: 10000.0, rope_scaling: null, tie_word_embeddings: true, hidden_act: "silu",
  attention_bias: false, mlp_bias: false, bos_token_id: null, eos_token_id: eosId,
  torch_dtype: "float32",
};

// Weights: HF Llama names, float32, random normal scaled by 1/sqrt(fan_in).
const tensors = [];
function add(name, shape, scale, offset = 0) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = offset + scale * normal();
  tensors.push({ name, shape, data });
}
const { hidden_size: D, intermediate_size: I, num_attention_heads: H, num_key_value_heads: KVH, head_dim: HD } = cfg;
add("model.embed_tokens.weight", [vocabSize, D], 2 / Math.sqrt(D)); // tied head: logits of a few units
for (let l = 0; l < cfg.num_hidden_layers; l++) {
  const p = `model.layers.${l}`;
  add(`${p}.input_layernorm.weight`, [D], 0.1, 1);
  add(`${p}.post_attention_layernorm.weight`, [D], 0.1, 1);
  add(`${p}.self_attn.q_proj.weight`, [H * HD, D], 1 / Math.sqrt(D));
  add(`${p}.self_attn.k_proj.weight`, [KVH * HD, D], 1 / Math.sqrt(D));
  add(`${p}.self_attn.v_proj.weight`, [KVH * HD, D], 1 / Math.sqrt(D));
  add(`${p}.self_attn.o_proj.weight`, [D, H * HD], 1 / Math.sqrt(H * HD));
  add(`${p}.mlp.gate_proj.weight`, [I, D], 1 / Math.sqrt(D));
  add(`${p}.mlp.up_proj.weight`, [I, D], 1 / Math.sqrt(D));
  add(`${p}.mlp.down_proj.weight`, [D, I], 1 / Math.sqrt(I));
}
add("model.norm.weight", [D], 0.1, 1);

function safetensors(list) {
  const header = {};
  let off = 0;
  for (const t of list) {
    header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // keep data 8-aligned
  const buf = Buffer.alloc(8 + json.length + off);
  buf.writeBigUInt64LE(BigInt(json.length), 0);
  buf.write(json, 8, "latin1");
  let pos = 8 + json.length;
  for (const t of list) {
    Buffer.from(t.data.buffer).copy(buf, pos);
    pos += t.data.byteLength;
  }
  return buf;
}

// Write into a temp folder, then rename: never a half-written model.
const tmp = `${out}.tmp-${process.pid}`;
mkdirSync(tmp, { recursive: true });
writeFileSync(join(tmp, "config.json"), JSON.stringify(cfg, null, 2));
writeFileSync(join(tmp, "generation_config.json"),
  JSON.stringify({ eos_token_id: eosId, do_sample: true, temperature: 0.8, top_p: 0.95 }, null, 2));
writeFileSync(join(tmp, "tokenizer.json"), JSON.stringify(tokenizer));
writeFileSync(join(tmp, "tokenizer_config.json"), JSON.stringify({
  eos_token: "<|endoftext|>", bos_token: null, add_bos_token: false, model_max_length: 2048,
  tokenizer_class: "PreTrainedTokenizerFast" }, null, 2));
writeFileSync(join(tmp, "model.safetensors"), safetensors(tensors));
try { renameSync(tmp, out); } catch (e) {
  console.error(`make_demo_model: cannot create ${out}: ${e.message} (does it exist already?)`);
  process.exit(1);
}
console.error(`make_demo_model: wrote ${out} (random weights: its text is noise)`);
