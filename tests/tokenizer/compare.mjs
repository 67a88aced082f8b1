// Compares `nmlx tokenize` with HuggingFace `tokenizers` (npm, the Rust
// library) on real tokenizer.json files: ids with and without special
// tokens, whole decode with and without skip_special, and the streaming
// detokenizer, over tests/tokenizer/corpus.jsonl plus seeded random strings
// and random id sequences.
//
//   node tests/tokenizer/compare.mjs path/to/nmlx [vocab ...]
//   NMLX_TOK_SEED=7 NMLX_TOK_RANDOM=2000 node tests/tokenizer/compare.mjs ./build/nmlx
//   NMLX_TOK_VOCABS=llama2,qwen3 node tests/tokenizer/compare.mjs ./build/nmlx
//
// Fails (exit 1) when node_modules is missing: run `npm ci` in the repo root.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VOCABS, VARIANTS, vocabDir, randomStrings, randomIdSeqs } from './vocabs.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const require = createRequire(import.meta.url);

const nmlx = process.argv[2];
if (!nmlx || !existsSync(nmlx)) {
  console.error(`FAIL: usage: node compare.mjs path/to/nmlx [vocab...] (got '${nmlx}')`);
  process.exit(1);
}
let Tokenizer;
try {
  ({ Tokenizer } = require(join(root, 'node_modules', 'tokenizers')));
} catch (e) {
  console.error('FAIL: the reference `tokenizers` npm package is missing: run `npm ci` in the repo root');
  console.error(String(e.message).split('\n')[0]);
  process.exit(1);
}
// vocabularies from the command line, else NMLX_TOK_VOCABS (comma list), else all
const only = process.argv.length > 3 ? process.argv.slice(3) : (process.env.NMLX_TOK_VOCABS || '').split(',').filter(Boolean);
const all = VOCABS.concat(VARIANTS.map((v) => v.name));
const vocabs = only.length ? all.filter((v) => only.includes(v)) : all;
// variants are written to a temporary folder (tokenizer.json only)
const varRoot = mkdtempSync(join(tmpdir(), 'nmlx-tok-'));
process.on('exit', () => rmSync(varRoot, { recursive: true, force: true }));
function dirOf(name) {
  const v = VARIANTS.find((x) => x.name === name);
  if (!v) return vocabDir(root, name);
  const base = join(vocabDir(root, v.base), 'tokenizer.json');
  if (!existsSync(base)) return vocabDir(root, v.base);
  const d = join(varRoot, name);
  mkdirSync(d);
  writeFileSync(join(d, 'tokenizer.json'), JSON.stringify(v.patch(JSON.parse(readFileSync(base, 'utf8')))));
  return d;
}
const seed = Number(process.env.NMLX_TOK_SEED || 1234);
const nRandom = Number(process.env.NMLX_TOK_RANDOM || 300);

const corpus = readFileSync(join(here, 'corpus.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.length)
  .map((l) => JSON.parse(l));

let passed = 0;
let failed = 0;
const show = (s) => JSON.stringify(s).slice(0, 300);

function runNmlx(dir, args, lines) {
  const r = spawnSync(nmlx, ['tokenize', '-m', dir, ...args], {
    input: lines.map((l) => JSON.stringify(l)).join('\n') + (lines.length ? '\n' : ''),
    maxBuffer: 1 << 30,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`nmlx tokenize ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  const out = r.stdout.split('\n');
  out.pop();
  if (out.length !== lines.length) throw new Error(`nmlx tokenize ${args.join(' ')}: ${out.length} lines for ${lines.length}`);
  return out.map((l) => JSON.parse(l));
}

function check(name, what, inputs, expected, got) {
  let bad = 0;
  for (let i = 0; i < inputs.length; i++) {
    const e = JSON.stringify(expected[i]);
    const g = JSON.stringify(got[i]);
    if (e === g) {
      passed++;
      continue;
    }
    failed++;
    if (bad++ < 5) {
      console.error(`FAIL ${name} ${what} #${i}: input ${show(inputs[i])}`);
      console.error(`  expected ${e.slice(0, 400)}`);
      console.error(`  got      ${g.slice(0, 400)}`);
    }
  }
  if (bad) console.error(`FAIL ${name} ${what}: ${bad} of ${inputs.length} differ`);
}

for (const name of vocabs) {
  const dir = dirOf(name);
  if (!existsSync(join(dir, 'tokenizer.json'))) {
    console.error(`FAIL ${name}: ${dir}/tokenizer.json is missing: run \`npm ci\` in the repo root`);
    failed++;
    continue;
  }
  const t0 = Date.now();
  try {
    const hf = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
    const added = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')).added_tokens.map((a) => a.content);
    const texts = corpus.concat(randomStrings(seed, nRandom, added));
    // encode
    const hfPlain = [];
    const hfSpecial = [];
    for (const s of texts) {
      hfPlain.push(Array.from((await hf.encode(s, null, { addSpecialTokens: false })).getIds()));
      hfSpecial.push(Array.from((await hf.encode(s, null, { addSpecialTokens: true })).getIds()));
    }
    check(name, 'encode', texts, hfPlain, runNmlx(dir, [], texts));
    check(name, 'encode --special', texts, hfSpecial, runNmlx(dir, ['--special'], texts));
    // decode: the reference's ids of the texts, and random ids
    const vocabSize = hf.getVocabSize(true);
    const idLists = hfPlain.concat(hfSpecial, randomIdSeqs(seed + 1, 200, vocabSize));
    for (const skip of [false, true]) {
      const expected = [];
      for (const ids of idLists) expected.push(await hf.decode(ids, skip));
      const flag = skip ? ['--skip-special'] : [];
      check(name, `decode${skip ? ' --skip-special' : ''}`, idLists, expected, runNmlx(dir, ['--decode', ...flag], idLists));
      // streaming must equal the whole decode on text-derived ids
      const nText = hfPlain.length + hfSpecial.length;
      check(name, `stream${skip ? ' --skip-special' : ''}`, idLists.slice(0, nText), expected.slice(0, nText),
        runNmlx(dir, ['--decode', '--stream', ...flag], idLists.slice(0, nText)));
    }
    console.log(`${name}: ${texts.length} texts, ${idLists.length} id lists checked in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } catch (e) {
    failed++;
    console.error(`FAIL ${name}: ${e.message}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
