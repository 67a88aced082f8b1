/* Tokenizer unit tests on small inline tokenizer.json files: BPE merges
 * against a naive reference merger on random words, byte fallback and unk,
 * added tokens (lstrip/rstrip/single_word/normalized/special), each
 * pre-tokenizer, normalizer and decoder, streaming == whole decode, invalid
 * UTF-8, error paths and allocation-failure injection. The comparison with
 * HuggingFace on real vocabularies is tests/tokenizer/compare.mjs. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "tokenizer/tokenizer_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void write_file(const char *name, const char *text) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *name) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    unlink(path);
}

/* Loads a tokenizer from JSON text; NULL (and the status) on failure. */
static nmlx_tokenizer *load_json(const char *json, nmlx_status *st_out) {
    write_file("tokenizer.json", json);
    nmlx_tokenizer *t = NULL;
    nmlx_status st = nmlx_tokenizer_load(tmpdir, &t);
    if (st_out) *st_out = st;
    return st == NMLX_OK ? t : NULL;
}

/* Encodes and compares with the expected ids. */
static void expect_ids(const nmlx_tokenizer *t, const char *text, int special, const int32_t *want,
                       size_t n_want, const char *what) {
    int32_t *ids = NULL;
    size_t n = 0;
    nmlx_status st = nmlx_tokenize(t, text, strlen(text), special, &ids, &n);
    int same = st == NMLX_OK && n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    EXPECT(same, "%s: encode '%s' gave %zu ids (status %d: %s)", what, text, n, st,
           nmlx_last_error());
    if (!same && st == NMLX_OK) {
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    nmlx_free(ids);
}

static void expect_decode(const nmlx_tokenizer *t, const int32_t *ids, size_t n, int skip,
                          const char *want, const char *what) {
    char *text = NULL;
    size_t len = 0;
    nmlx_status st = nmlx_detokenize(t, ids, n, skip, &text, &len);
    EXPECT(st == NMLX_OK && len == strlen(want) && !strcmp(text, want),
           "%s: decode gave '%s', want '%s'", what, text ? text : "(null)", want);
    nmlx_free(text);
}

/* Streams ids one by one and checks the pieces add up to the whole decode
 * and that every piece is valid UTF-8. */
static void expect_stream_equals_decode(const nmlx_tokenizer *t, const int32_t *ids, size_t n,
                                        int skip, const char *what) {
    char *whole = NULL;
    size_t wl = 0;
    EXPECT(nmlx_detokenize(t, ids, n, skip, &whole, &wl) == NMLX_OK, "%s: decode", what);
    nmlx_detokenizer *d = NULL;
    EXPECT(nmlx_detokenizer_create(t, skip, &d) == NMLX_OK, "%s: create", what);
    tok_buf acc = {0};
    int pieces_valid = 1;
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        nmlx_status st =
            i < n ? nmlx_detokenizer_push(d, ids[i], &p, &pl) : nmlx_detokenizer_flush(d, &p, &pl);
        EXPECT(st == NMLX_OK, "%s: push", what);
        if (i < n && !tok_utf8_valid(p, pl)) pieces_valid = 0;
        tok_buf_append(&acc, p, pl);
    }
    EXPECT(pieces_valid, "%s: a streamed piece is not valid UTF-8", what);
    EXPECT(acc.len == wl && (wl == 0 || !memcmp(acc.p, whole, wl)),
           "%s: stream '%.*s' != whole '%s'", what, (int)acc.len, acc.p ? acc.p : "", whole);
    tok_buf_free(&acc);
    nmlx_detokenizer_free(d);
    nmlx_free(whole);
}

/* ---- BPE against a naive merger ---------------------------------------- */

enum { NV = 64, NM = 48 };
static char vocab_str[NV][64];
static int n_vocab;
static int merge_a[NM], merge_b[NM], n_merges;

static int vocab_find(const char *s) {
    for (int i = 0; i < n_vocab; i++)
        if (!strcmp(vocab_str[i], s)) return i;
    return -1;
}

/* Naive BPE: repeatedly merge the lowest-rank adjacent pair, leftmost first. */
static size_t naive_bpe(const char *text, int32_t *out) {
    int sym[512];
    size_t n = 0;
    for (const char *p = text; *p; p++) {
        char c[4] = {0};
        if (*p == ' ')
            strcpy(c, "\xC4\xA0"); /* byte-level space: U+0120 */
        else
            c[0] = *p;
        sym[n++] = vocab_find(c);
    }
    for (;;) {
        int best = -1;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++)
            for (int r = 0; r < n_merges; r++)
                if (merge_a[r] == sym[i] && merge_b[r] == sym[i + 1] && (best < 0 || r < best)) {
                    best = r;
                    at = i;
                }
        if (best < 0) break;
        char cat[128];
        snprintf(cat, sizeof cat, "%.63s%.63s", vocab_str[sym[at]], vocab_str[sym[at + 1]]);
        sym[at] = vocab_find(cat);
        memmove(sym + at + 1, sym + at + 2, (n - at - 2) * sizeof *sym);
        n--;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = sym[i];
    return n;
}

static void test_bpe_random(void) {
    test_seed(42);
    for (int round = 0; round < 20; round++) {
        n_vocab = 0;
        strcpy(vocab_str[n_vocab++], "a");
        strcpy(vocab_str[n_vocab++], "b");
        strcpy(vocab_str[n_vocab++], "c");
        strcpy(vocab_str[n_vocab++], "\xC4\xA0");
        n_merges = 0;
        while (n_merges < NM && n_vocab < NV) {
            int a = (int)(test_rand_u64() % (uint64_t)n_vocab);
            int b = (int)(test_rand_u64() % (uint64_t)n_vocab);
            if (strlen(vocab_str[a]) + strlen(vocab_str[b]) > 12) continue;
            char cat[128];
            snprintf(cat, sizeof cat, "%.63s%.63s", vocab_str[a], vocab_str[b]);
            int dup = 0;
            for (int r = 0; r < n_merges; r++)
                dup |= merge_a[r] == a && merge_b[r] == b;
            if (dup) continue;
            if (vocab_find(cat) < 0) strcpy(vocab_str[n_vocab++], cat);
            merge_a[n_merges] = a;
            merge_b[n_merges] = b;
            n_merges++;
        }
        tok_buf j = {0};
        char line[256];
        tok_buf_append(&j, "{\"model\":{\"type\":\"BPE\",\"vocab\":{", 32);
        for (int i = 0; i < n_vocab; i++) {
            snprintf(line, sizeof line, "%s\"%.63s\":%d", i ? "," : "", vocab_str[i], i);
            tok_buf_append(&j, line, strlen(line));
        }
        /* alternate the two merge forms */
        tok_buf_append(&j, "},\"merges\":[", 12);
        for (int r = 0; r < n_merges; r++) {
            if (round % 2)
                snprintf(line, sizeof line, "%s[\"%.63s\",\"%.63s\"]", r ? "," : "",
                         vocab_str[merge_a[r]], vocab_str[merge_b[r]]);
            else
                snprintf(line, sizeof line, "%s\"%.63s %.63s\"", r ? "," : "",
                         vocab_str[merge_a[r]], vocab_str[merge_b[r]]);
            tok_buf_append(&j, line, strlen(line));
        }
        const char *tail =
            "]},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
            "\"use_regex\":false},\"decoder\":{\"type\":\"ByteLevel\"}}";
        tok_buf_append(&j, tail, strlen(tail));
        nmlx_tokenizer *t = load_json(j.p, NULL);
        tok_buf_free(&j);
        EXPECT(t != NULL, "random BPE load: %s", nmlx_last_error());
        if (!t) continue;
        for (int k = 0; k < 30; k++) {
            char text[200];
            size_t len = 1 + test_rand_u64() % 150;
            for (size_t i = 0; i < len; i++)
                text[i] = "abc "[test_rand_u64() % 4];
            text[len] = '\0';
            int32_t want[512];
            size_t nw = naive_bpe(text, want);
            expect_ids(t, text, 0, want, nw, "random BPE");
            expect_ids(t, text, 0, want, nw, "random BPE (cached)");
            expect_decode(t, want, nw, 0, text, "random BPE decode");
        }
        nmlx_tokenizer_free(t);
    }
}

/* ---- sentencepiece style: byte fallback, unk, Metaspace -------------- */

static const char *SP_JSON =
    "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
    "\"\xE2\x96\x81\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"}]},"
    "\"pre_tokenizer\":null,"
    "\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true,\"normalized\":false,"
    "\"lstrip\":false,\"rstrip\":false,\"single_word\":false},"
    "{\"id\":1,\"content\":\"<s>\",\"special\":true,\"normalized\":false,\"lstrip\":false,"
    "\"rstrip\":false,\"single_word\":false}],"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<"
    "s>\",\"type_id\":0}},"
    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\","
    "\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{"
    "\"String\":\"\xE2\x96\x81\"},\"content\":\" \"},"
    "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" "
    "\",\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
    "\"vocab\":{"
    "\"<unk>\":0,\"<s>\":1,\"<0xC3>\":2,\"<0xA9>\":3,\"\xE2\x96\x81\":4,\"h\":5,\"i\":6,\"hi\":7,"
    "\"\xE2\x96\x81hi\":8,\"x\":9},"
    "\"merges\":[\"h i\",\"\xE2\x96\x81 hi\"]}}";

static void test_sentencepiece(void) {
    nmlx_status st;
    nmlx_tokenizer *t = load_json(SP_JSON, &st);
    EXPECT(t != NULL, "sentencepiece load: %s", nmlx_last_error());
    if (!t) return;
    /* "hi hi" -> "▁hi▁hi" ; é has no token: byte fallback <0xC3><0xA9>; ü has a
     * missing byte (0xBC): unk, fused over consecutive unknowns */
    expect_ids(t, "hi hi", 0, (int32_t[]){8, 8}, 2, "sp merges");
    expect_ids(t, "hi hi", 1, (int32_t[]){1, 8, 8}, 3, "sp template");
    expect_ids(t, "\xC3\xA9x", 0, (int32_t[]){4, 2, 3, 9}, 4, "sp byte fallback");
    expect_ids(t, "x\xC3\xBC\xC3\xBCx", 0, (int32_t[]){4, 9, 0, 9}, 4, "sp fuse_unk");
    expect_ids(t, "", 1, (int32_t[]){1}, 1, "sp empty");
    /* the added token splits the text; Prepend applies to each piece */
    expect_ids(t, "hi<s>hi", 0, (int32_t[]){8, 1, 8}, 3, "sp added token");
    expect_decode(t, (int32_t[]){1, 8, 8, 2, 3}, 5, 0, "<s> hi hi\xC3\xA9", "sp decode");
    expect_decode(t, (int32_t[]){1, 8, 8, 2, 3}, 5, 1, "hi hi\xC3\xA9", "sp decode skip");
    expect_decode(t, (int32_t[]){2, 9}, 2, 0, "\xEF\xBF\xBDx", "sp lone byte");
    EXPECT(nmlx_tokenizer_bos_id(t) == -1, "no tokenizer_config: no bos");
    EXPECT(nmlx_tokenizer_is_special(t, 1) && !nmlx_tokenizer_is_special(t, 8), "is_special");
    EXPECT(nmlx_tokenizer_token_to_id(t, "\xE2\x96\x81hi") == 8, "token_to_id");
    EXPECT(!strcmp(nmlx_tokenizer_id_to_token(t, 7), "hi"), "id_to_token");
    EXPECT(nmlx_tokenizer_id_to_token(t, 99) == NULL, "id_to_token out of range");
    EXPECT(nmlx_tokenizer_vocab_size(t) == 10, "vocab size");
    test_seed(7);
    for (int k = 0; k < 200; k++) {
        int32_t ids[12];
        size_t n = 1 + test_rand_u64() % 12;
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)(test_rand_u64() % 10);
        expect_stream_equals_decode(t, ids, n, (int)(k & 1), "sp stream");
    }
    nmlx_tokenizer_free(t);
}

/* ---- added tokens --------------------------------------------------------- */

static void test_added_tokens(void) {
    /* characters a b ' ' as tokens; added: [X] lstrip, [Y] rstrip, word
     * single_word, "ab" normalized under Lowercase */
    const char *json = "{\"normalizer\":{\"type\":\"Lowercase\"},"
                       "\"added_tokens\":["
                       "{\"id\":10,\"content\":\"[X]\",\"special\":true,\"normalized\":false,"
                       "\"lstrip\":true,\"rstrip\":false,\"single_word\":false},"
                       "{\"id\":11,\"content\":\"[Y]\",\"special\":true,\"normalized\":false,"
                       "\"lstrip\":false,\"rstrip\":true,\"single_word\":false},"
                       "{\"id\":12,\"content\":\"word\",\"special\":false,\"normalized\":false,"
                       "\"lstrip\":false,\"rstrip\":false,\"single_word\":true},"
                       "{\"id\":13,\"content\":\"AB\",\"special\":false,\"normalized\":true,"
                       "\"lstrip\":false,\"rstrip\":false,\"single_word\":false}],"
                       "\"decoder\":{\"type\":\"Fuse\"},"
                       "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\" "
                       "\":2,\"w\":3,\"o\":4,\"r\":5,\"d\":6,\"x\":7},\"merges\":[]}}";
    nmlx_tokenizer *t = load_json(json, NULL);
    EXPECT(t != NULL, "added load: %s", nmlx_last_error());
    if (!t) return;
    expect_ids(t, "a  [X]b", 0, (int32_t[]){0, 10, 1}, 3, "lstrip eats spaces");
    expect_ids(t, "a[Y]  b", 0, (int32_t[]){0, 11, 1}, 3, "rstrip eats spaces");
    expect_ids(t, "a word b", 0, (int32_t[]){0, 2, 12, 2, 1}, 5, "single word");
    expect_ids(t, "awordb", 0, (int32_t[]){0, 3, 4, 5, 6, 1}, 6, "single word inside a word");
    expect_ids(t, "xAbx", 0, (int32_t[]){7, 13, 7}, 3, "normalized token matches lowercased text");
    expect_ids(t, "x[x]", 0, (int32_t[]){7, 7}, 2, "unknown chars dropped (no unk)");
    expect_decode(t, (int32_t[]){0, 10, 1, 12}, 4, 0, "a[X]bword", "added decode");
    expect_decode(t, (int32_t[]){0, 10, 1, 12}, 4, 1, "abword", "added decode skip special");
    nmlx_tokenizer_free(t);
}

/* ---- continuing_subword_prefix / end_of_word_suffix ------------------- */

static void test_prefix_suffix(void) {
    nmlx_tokenizer *t =
        load_json("{\"model\":{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"vocab\":{"
                  "\"a\":0,\"##b\":1,\"ab\":2,\"##c\":3,\"abc\":4,\"b\":5},\"merges\":[\"a "
                  "##b\",\"ab ##c\"]}}",
                  NULL);
    EXPECT(t != NULL, "prefix load: %s", nmlx_last_error());
    if (t) {
        expect_ids(t, "abc", 0, (int32_t[]){4}, 1, "continuing_subword_prefix merges");
        expect_ids(t, "bab", 0, (int32_t[]){5, 1}, 2,
                   "prefix after the first char (##a unknown: dropped)");
        nmlx_tokenizer_free(t);
    }
    t = load_json("{\"model\":{\"type\":\"BPE\",\"end_of_word_suffix\":\"</w>\",\"vocab\":{"
                  "\"a\":0,\"b</w>\":1,\"ab</w>\":2,\"a</w>\":3},\"merges\":[\"a b</w>\"]}}",
                  NULL);
    EXPECT(t != NULL, "suffix load: %s", nmlx_last_error());
    if (t) {
        expect_ids(t, "ab", 0, (int32_t[]){2}, 1, "end_of_word_suffix merges");
        expect_ids(t, "a", 0, (int32_t[]){3}, 1, "suffix on the last char");
        nmlx_tokenizer_free(t);
    }
}

/* ---- pre-tokenizers (internal pipeline) --------------------------------- */

/* Pre-tokenizes `text` with the given pre_tokenizer JSON and compares the
 * pieces, written as "p1|p2|...". */
static void expect_pieces(const char *pretok, const char *text, const char *want) {
    char json[2048];
    snprintf(
        json, sizeof json,
        "{\"pre_tokenizer\":%s,\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
        pretok);
    nmlx_tokenizer *t = load_json(json, NULL);
    EXPECT(t != NULL, "pretok load %s: %s", pretok, nmlx_last_error());
    if (!t) return;
    tok_work w = {0};
    tok_buf_append(&w.arena, text, strlen(text));
    if (strlen(text)) tok_pieces_push(&w.a, 0, (uint32_t)strlen(text), -1, 1);
    nmlx_status st = tok_pretokenize(t, &w);
    tok_buf got = {0};
    for (size_t i = 0; i < w.a.n; i++) {
        if (i) tok_buf_append(&got, "|", 1);
        tok_buf_append(&got, w.arena.p + w.a.v[i].off, w.a.v[i].len);
    }
    tok_buf_append(&got, "", 0);
    EXPECT(st == NMLX_OK && !strcmp(got.p, want), "%s on '%s': got '%s', want '%s'", pretok, text,
           got.p, want);
    tok_buf_free(&got);
    tok_work_free(&w);
    nmlx_tokenizer_free(t);
}

static void test_pretokenizers(void) {
    const char *split =
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\d+\"},\"behavior\":\"%s\",\"invert\":%s}";
    char buf[256];
    const char *beh[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                         "Contiguous"};
    const char *want[] = {"ab|12|cd|3", "ab|cd", "ab12|cd3", "ab|12cd|3", "ab|12|cd|3"};
    for (int i = 0; i < 5; i++) {
        snprintf(buf, sizeof buf, split, beh[i], "false");
        expect_pieces(buf, "ab12cd3", want[i]);
    }
    snprintf(buf, sizeof buf, split, "Removed", "true");
    expect_pieces(buf, "ab12cd3", "12|3");
    expect_pieces("{\"type\":\"Split\",\"pattern\":{\"String\":\" "
                  "\"},\"behavior\":\"MergedWithPrevious\",\"invert\":false}",
                  "a b  c", "a |b | |c");
    expect_pieces("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+(?!\\\\S)|\\\\s+\"},"
                  "\"behavior\":\"Isolated\",\"invert\":false}",
                  "a   b", "a|  | |b");
    expect_pieces("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}",
                  "Hello world's  2024!!", " Hello| world|'s| | 2024|!!");
    expect_pieces("{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}", "a b",
                  "a b");
    expect_pieces("{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\",\"prepend_scheme\":"
                  "\"always\",\"split\":true}",
                  "hi  there", "\xE2\x96\x81hi|\xE2\x96\x81|\xE2\x96\x81there");
    expect_pieces("{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\",\"prepend_scheme\":"
                  "\"never\",\"split\":false}",
                  "hi there", "hi\xE2\x96\x81there");
    expect_pieces("{\"type\":\"Digits\",\"individual_digits\":true}", "a123b", "a|1|2|3|b");
    expect_pieces("{\"type\":\"Digits\",\"individual_digits\":false}", "a123b45", "a|123|b|45");
    expect_pieces("{\"type\":\"Punctuation\",\"behavior\":\"Isolated\"}", "hi, there!?",
                  "hi|,| there|!|?");
    expect_pieces("{\"type\":\"Whitespace\"}", "hi, there  you!", "hi|,|there|you|!");
    expect_pieces("{\"type\":\"WhitespaceSplit\"}", " hi,\tthere  ", "hi,|there");
    expect_pieces("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"WhitespaceSplit\"},{"
                  "\"type\":\"Digits\",\"individual_digits\":true}]}",
                  "a1 b22", "a|1|b|2|2");
}

/* ---- normalizers ---------------------------------------------------------- */

static void expect_normalized(const char *norm, const char *text, const char *want) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"normalizer\":%s,\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
             norm);
    nmlx_tokenizer *t = load_json(json, NULL);
    EXPECT(t != NULL, "normalizer load %s: %s", norm, nmlx_last_error());
    if (!t) return;
    tok_work w = {0};
    tok_buf out = {0};
    nmlx_status st = tok_normalize(t, &w, text, strlen(text), &out);
    tok_buf_append(&out, "", 0);
    EXPECT(st == NMLX_OK && !strcmp(out.p, want), "%s on '%s': got '%s', want '%s'", norm, text,
           out.p, want);
    tok_buf_free(&out);
    tok_work_free(&w);
    nmlx_tokenizer_free(t);
}

static void test_normalizers(void) {
    expect_normalized("{\"type\":\"NFC\"}", "e\xCC\x81", "\xC3\xA9");
    expect_normalized("{\"type\":\"NFD\"}", "\xC3\xA9", "e\xCC\x81");
    expect_normalized("{\"type\":\"NFKC\"}", "\xEF\xAC\x81\xEF\xBC\xA1",
                      "fiA");                                              /* ﬁ, fullwidth A */
    expect_normalized("{\"type\":\"NFKD\"}", "\xE2\x84\xAB", "A\xCC\x8A"); /* Å (angstrom) */
    expect_normalized("{\"type\":\"Lowercase\"}", "HeLLo \xC3\x89\xC4\xB0",
                      "hello \xC3\xA9i\xCC\x87");
    expect_normalized("{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":false}", " \t a b ",
                      "a b ");
    expect_normalized("{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true}",
                      "\xE3\x80\x80 a b \n", "a b");
    expect_normalized("{\"type\":\"Prepend\",\"prepend\":\"_\"}", "ab", "_ab");
    expect_normalized("{\"type\":\"Prepend\",\"prepend\":\"_\"}", "", "");
    expect_normalized("{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"[0-9]+\"},\"content\":\"#\"}",
                      "a12b3", "a#b#");
    expect_normalized("{\"type\":\"Replace\",\"pattern\":{\"String\":\"ab\"},\"content\":\"X\"}",
                      "aabab", "aXX");
    expect_normalized("{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Lowercase\"},"
                      "{\"type\":\"Replace\",\"pattern\":{\"String\":\" "
                      "\"},\"content\":\"_\"},{\"type\":\"NFKC\"}]}",
                      "A B\xEF\xBC\xA1", "a_ba"); /* lowercase, then NFKC folds fullwidth a */
}

/* ---- decoders ------------------------------------------------------------- */

static void test_decoders(void) {
    const char *json = "{\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Metaspace\","
                       "\"replacement\":\"\xE2\x96\x81\","
                       "\"prepend_scheme\":\"always\",\"split\":true}]},"
                       "\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xE2\x96\x81hi\":0,"
                       "\"\xE2\x96\x81there\":1,\"!\":2},\"merges\":[]}}";
    nmlx_tokenizer *t = load_json(json, NULL);
    EXPECT(t != NULL, "metaspace load: %s", nmlx_last_error());
    if (t) {
        expect_decode(t, (int32_t[]){0, 1, 2}, 3, 0, "hi there!", "metaspace decoder");
        nmlx_tokenizer_free(t);
    }
    /* byte-level: a character split across tokens, and an invalid byte */
    const char *bl =
        "{\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
        "\"decoder\":{\"type\":\"ByteLevel\"},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xC3\x83\":0,\"\xC2\xA9\":1,\"a\":2,\"\xC4\xA0\":"
        "3,\"\xC3\xBF\":4},\"merges\":[]}}";
    t = load_json(bl, NULL);
    EXPECT(t != NULL, "bytelevel load: %s", nmlx_last_error());
    if (t) {
        expect_decode(t, (int32_t[]){2, 3, 0, 1}, 4, 0, "a \xC3\xA9", "bytelevel decoder");
        expect_decode(t, (int32_t[]){0, 2}, 2, 0,
                      "\xEF\xBF\xBD"
                      "a",
                      "bytelevel partial char");
        expect_ids(t, "a \xC3\xA9", 0, (int32_t[]){2, 3, 0, 1}, 4, "bytelevel encode");
        /* invalid UTF-8 input is replaced by U+FFFD (EF BF BD): no token, dropped */
        expect_ids(t,
                   "a\xFF"
                   "a",
                   0, (int32_t[]){2, 2}, 2, "invalid utf-8 replaced");
        test_seed(3);
        for (int k = 0; k < 300; k++) {
            int32_t ids[10];
            size_t n = 1 + test_rand_u64() % 10;
            for (size_t i = 0; i < n; i++)
                ids[i] = (int32_t)(test_rand_u64() % 5);
            expect_stream_equals_decode(t, ids, n, 0, "bytelevel stream");
        }
        nmlx_tokenizer_free(t);
    }
    /* no decoder: tokens joined with spaces */
    t = load_json("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]}}", NULL);
    if (t) {
        expect_decode(t, (int32_t[]){0, 1, 0}, 3, 0, "a b a", "no decoder");
        expect_decode(t, NULL, 0, 0, "", "empty decode");
        nmlx_tokenizer_free(t);
    }
}

/* ---- BOS/EOS from tokenizer_config.json ----------------------------------- */

static void test_config(void) {
    write_file("tokenizer_config.json",
               "{\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"</s>\",\"lstrip\":false}}");
    nmlx_tokenizer *t = load_json("{\"added_tokens\":[{\"id\":1,\"content\":\"<s>\",\"special\":"
                                  "true},{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
                                  "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                                  NULL);
    EXPECT(t && nmlx_tokenizer_bos_id(t) == 1 && nmlx_tokenizer_eos_id(t) == 2,
           "bos/eos from config");
    EXPECT(t && nmlx_tokenizer_vocab_size(t) == 3, "vocab size counts added tokens");
    nmlx_tokenizer_free(t);
    remove_file("tokenizer_config.json");
}

/* ---- errors and fault injection ------------------------------------------- */

static void expect_load_error(const char *json, nmlx_status want, const char *needle) {
    nmlx_status st;
    nmlx_tokenizer *t = load_json(json, &st);
    EXPECT(!t && st == want && strstr(nmlx_last_error(), needle),
           "load error: status %d (want %d), message '%s' (want '%s')", st, want, nmlx_last_error(),
           needle);
    nmlx_tokenizer_free(t);
}

static void test_errors(void) {
    nmlx_tokenizer *t = NULL;
    EXPECT(nmlx_tokenizer_load("/nonexistent/dir", &t) == NMLX_ERR_IO && !t, "missing dir");
    EXPECT(nmlx_tokenizer_load(NULL, &t) == NMLX_ERR_INVALID_ARG, "NULL dir");
    expect_load_error("{\"model\": {", NMLX_ERR_FORMAT, "malformed JSON");
    expect_load_error("[1,2]", NMLX_ERR_FORMAT, "not a JSON object");
    expect_load_error("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", NMLX_ERR_UNSUPPORTED,
                      "model type 'Unigram' is not supported");
    expect_load_error("{\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"model\":{\"type\":"
                      "\"BPE\",\"vocab\":{},\"merges\":[]}}",
                      NMLX_ERR_UNSUPPORTED,
                      "pre_tokenizer type 'BertPreTokenizer' is not supported");
    expect_load_error("{\"normalizer\":{\"type\":\"Precompiled\"},\"model\":{\"type\":\"BPE\","
                      "\"vocab\":{},\"merges\":[]}}",
                      NMLX_ERR_UNSUPPORTED, "normalizer type 'Precompiled' is not supported");
    expect_load_error("{\"decoder\":{\"type\":\"WordPiece\"},\"model\":{\"type\":\"BPE\",\"vocab\":"
                      "{},\"merges\":[]}}",
                      NMLX_ERR_UNSUPPORTED, "decoder type 'WordPiece' is not supported");
    expect_load_error("{\"post_processor\":{\"type\":\"Foo\"},\"model\":{\"type\":\"BPE\","
                      "\"vocab\":{},\"merges\":[]}}",
                      NMLX_ERR_UNSUPPORTED, "post_processor type 'Foo' is not supported");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}",
                      NMLX_ERR_FORMAT, "missing from the vocab");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}",
                      NMLX_ERR_FORMAT, "no valid id");
    expect_load_error("{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                      "\"behavior\":\"Isolated\",\"invert\":false},"
                      "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
                      NMLX_ERR_UNSUPPORTED, "does not compile");
    int32_t *ids;
    size_t n;
    EXPECT(nmlx_tokenize(NULL, "a", 1, 0, &ids, &n) == NMLX_ERR_INVALID_ARG, "tokenize NULL tok");
    nmlx_tokenizer_free(NULL);
    nmlx_detokenizer_free(NULL);
}

static void test_fault_injection(void) {
    /* every allocation of load, encode, decode and streaming may fail */
    int load_ok = 0, enc_ok = 0;
    for (long k = 1; k < 400 && !(load_ok && enc_ok); k++) {
        nmlx_test_fail_alloc_after(k);
        nmlx_tokenizer *t = load_json(SP_JSON, NULL);
        nmlx_test_fail_alloc_after(0);
        if (!t) {
            EXPECT(strstr(nmlx_last_error(), "out of memory") != NULL, "fault %ld: message '%s'", k,
                   nmlx_last_error());
            continue;
        }
        load_ok = 1;
        nmlx_test_fail_alloc_after(k);
        int32_t *ids = NULL;
        size_t n = 0;
        nmlx_status st = nmlx_tokenize(t, "hi hi \xC3\xA9<s>x", 11, 1, &ids, &n);
        char *text = NULL;
        nmlx_status st2 = nmlx_detokenize(t, (int32_t[]){1, 8, 2, 3}, 4, 0, &text, NULL);
        nmlx_detokenizer *d = NULL;
        if (nmlx_detokenizer_create(t, 0, &d) == NMLX_OK) {
            const char *p;
            size_t pl;
            nmlx_detokenizer_push(d, 8, &p, &pl);
            nmlx_detokenizer_push(d, 2, &p, &pl);
            nmlx_detokenizer_flush(d, &p, &pl);
        }
        nmlx_test_fail_alloc_after(0);
        EXPECT(st == NMLX_OK || st == NMLX_ERR_NOMEM, "fault %ld: encode status %d", k, st);
        EXPECT(st2 == NMLX_OK || st2 == NMLX_ERR_NOMEM, "fault %ld: decode status %d", k, st2);
        if (st == NMLX_OK && st2 == NMLX_OK) enc_ok = 1;
        nmlx_free(ids);
        nmlx_free(text);
        nmlx_detokenizer_free(d);
        nmlx_tokenizer_free(t);
    }
    EXPECT(load_ok && enc_ok, "fault injection reached success");
}

/* Truncated files fail cleanly, never crash. */
static void test_truncated(void) {
    size_t n = strlen(SP_JSON);
    char *buf = malloc(n + 1);
    int all_failed = 1;
    for (size_t k = 0; k < n; k += 3) {
        memcpy(buf, SP_JSON, k);
        buf[k] = '\0';
        nmlx_status st;
        nmlx_tokenizer *t = load_json(buf, &st);
        if (t || st != NMLX_ERR_FORMAT) all_failed = 0;
        nmlx_tokenizer_free(t);
    }
    EXPECT(all_failed, "every truncation of a tokenizer.json fails with NMLX_ERR_FORMAT");
    free(buf);
}

/* One tokenizer shared by threads gives every thread the same ids. */
typedef struct thread_arg {
    const nmlx_tokenizer *t;
    int ok;
} thread_arg;

static void *encode_thread(void *p) {
    thread_arg *a = p;
    a->ok = 1;
    for (int k = 0; k < 300; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        const char *text = (k & 1) ? "hi hi hi \xC3\xA9 hi" : "hihi hi<s>hi";
        if (nmlx_tokenize(a->t, text, strlen(text), 1, &ids, &n) != NMLX_OK) a->ok = 0;
        static const int32_t want_odd[] = {1, 8, 8, 8, 4, 2, 3, 8};
        static const int32_t want_even[] = {1, 8, 7, 8, 1, 8};
        const int32_t *want = (k & 1) ? want_odd : want_even;
        size_t nw = (k & 1) ? 8 : 6;
        if (n != nw || memcmp(ids, want, n * sizeof *ids)) a->ok = 0;
        nmlx_free(ids);
    }
    return NULL;
}

static void test_threads(void) {
    nmlx_tokenizer *t = load_json(SP_JSON, NULL);
    if (!t) return;
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){t, 0};
        pthread_create(&th[i], NULL, encode_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        EXPECT(args[i].ok, "thread %d got other ids", i);
    }
    nmlx_tokenizer_free(t);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nmlx_tok_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_bpe_random();
    test_sentencepiece();
    test_added_tokens();
    test_prefix_suffix();
    test_pretokenizers();
    test_normalizers();
    test_decoders();
    test_config();
    test_errors();
    test_fault_injection();
    test_truncated();
    test_threads();
    remove_file("tokenizer.json");
    rmdir(tmpdir);
    return test_summary();
}
