// Tokenizer speed, nmlx vs the HuggingFace `tokenizers` Node binding, one
// thread, same text, same chunks, every real vocabulary.
//
//   node bench/tokenizer/bench.mjs [vocab ...]
//
// Builds bench/work/tok_bench (gcc, the tokenizer sources only), writes the
// text (repo sources and docs + the test corpus + seeded random strings) to
// bench/work/tok_text.txt, then per vocabulary: load time (best of 3) and
// encode MB/s (best of 3) for both. HF runs with RAYON_NUM_THREADS=1.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VOCABS, vocabDir, randomStrings } from '../../tests/tokenizer/vocabs.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const work = join(root, 'bench', 'work');
const CHUNK = Number(process.env.NMLX_BENCH_CHUNK || 4096);
const REPS = 3;
mkdirSync(work, { recursive: true });

// ---- build the C side --------------------------------------------------
const bin = join(work, 'tok_bench');
const srcs = readdirSync(join(root, 'src', 'tokenizer')).filter((f) => f.endsWith('.c')).map((f) => join(root, 'src', 'tokenizer', f));
execFileSync('gcc', ['-std=c11', '-O2', '-DNDEBUG', '-I', join(root, 'include'), '-I', join(root, 'src'),
  join(here, 'tok_bench.c'), ...srcs, join(root, 'src', 'common.c'), '-o', bin,
  '-ljansson', '-lpcre2-8', '-lutf8proc', '-lpthread', '-lm'], { stdio: 'inherit' });

// ---- the text ----------------------------------------------------------
function walk(dir, out) {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (e === 'node_modules' || e.startsWith('.') || e.startsWith('build') || e === 'work' || e === 'fixtures') continue;
    const st = statSync(p);
    if (st.isDirectory()) walk(p, out);
    else if (/\.(c|h|md|py|mjs|cmake|txt)$/.test(e) && st.size < 200000) out.push(readFileSync(p, 'utf8'));
  }
  return out;
}
const corpus = readFileSync(join(root, 'tests', 'tokenizer', 'corpus.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const parts = walk(root, []).concat(corpus, randomStrings(5, 2000, []));
let text = parts.join('\n');
while (Buffer.byteLength(text) < 1 << 20) text += '\n' + text;
const textFile = join(work, 'tok_text.txt');
writeFileSync(textFile, text);
const buf = Buffer.from(text);
// the same chunks as tok_bench.c: ~CHUNK bytes, cut after a newline
const chunks = [];
for (let off = 0; off < buf.length;) {
  let end = Math.min(off + CHUNK, buf.length);
  while (end < buf.length && buf[end - 1] !== 0x0a) end++;
  chunks.push(buf.subarray(off, end).toString('utf8'));
  off = end;
}

// ---- HF in a child process (so RAYON_NUM_THREADS applies) ---------------
const hfScript = `
const { Tokenizer } = require(${JSON.stringify(join(root, 'node_modules', 'tokenizers'))});
const fs = require('fs');
const [file, textFile, chunk, reps] = process.argv.slice(1);
const buf = fs.readFileSync(textFile);
const chunks = [];
for (let off = 0; off < buf.length;) {
  let end = Math.min(off + Number(chunk), buf.length);
  while (end < buf.length && buf[end - 1] !== 0x0a) end++;
  chunks.push(buf.subarray(off, end).toString('utf8'));
  off = end;
}
(async () => {
  let load = 1e9, tok;
  for (let r = 0; r < reps; r++) { const t0 = process.hrtime.bigint(); tok = Tokenizer.fromFile(file); load = Math.min(load, Number(process.hrtime.bigint() - t0) / 1e9); }
  let enc = 1e9, tokens = 0;
  for (let r = 0; r < reps; r++) {
    tokens = 0;
    const t0 = process.hrtime.bigint();
    for (const c of chunks) tokens += (await tok.encode(c, null, { addSpecialTokens: false })).getIds().length;
    enc = Math.min(enc, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  console.log(JSON.stringify({ load_s: load, encode_s: enc, bytes: buf.length, tokens }));
})();`;

const only = process.argv.slice(2);
const rows = [];
for (const name of only.length ? VOCABS.filter((v) => only.includes(v)) : VOCABS) {
  const dir = vocabDir(root, name);
  if (!existsSync(join(dir, 'tokenizer.json'))) {
    console.error(`${name}: missing (run npm ci)`);
    continue;
  }
  const c = JSON.parse(execFileSync(bin, [dir, textFile, String(CHUNK), String(REPS)], { encoding: 'utf8' }));
  const h = spawnSync(process.execPath, ['-e', hfScript, join(dir, 'tokenizer.json'), textFile, String(CHUNK), String(REPS)],
    { encoding: 'utf8', env: { ...process.env, RAYON_NUM_THREADS: '1', TOKENIZERS_PARALLELISM: 'false' } });
  if (h.status !== 0) throw new Error(h.stderr);
  const hf = JSON.parse(h.stdout);
  const mb = c.bytes / 1e6;
  const row = {
    vocab: name,
    nmlx_MBps: +(mb / c.encode_s).toFixed(2),
    hf_MBps: +(mb / hf.encode_s).toFixed(2),
    encode_ratio: +(hf.encode_s / c.encode_s).toFixed(2),
    nmlx_load_ms: +(c.load_s * 1e3).toFixed(0),
    hf_load_ms: +(hf.load_s * 1e3).toFixed(0),
    load_ratio: +(hf.load_s / c.load_s).toFixed(2),
    same_tokens: c.tokens === hf.tokens,
  };
  rows.push(row);
  console.log(JSON.stringify(row));
}
console.log(`\ntext: ${(buf.length / 1e6).toFixed(2)} MB in ${chunks.length} chunks of ~${CHUNK} B; ratios are HF time / nmlx time (> 1: nmlx faster)`);
console.table(rows);
