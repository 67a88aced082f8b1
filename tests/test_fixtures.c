/* nmlx against transformers: every fixture folder under tests/fixtures/ and
 * tests/fixtures/holdout/ (made by tests/fixtures/make_fixtures.py) through
 * the public API only, with 1 and 2 threads:
 *  - prefill: nmlx_session_eval(prompt, all_logits) vs logits.bin;
 *    float32: max |diff| <= 1e-4 x max |ref|, bf16: argmax at every row,
 *    quantized (expected.json has "quantization"): the precision contract,
 *    max |diff| <= 2e-2 x max |ref| and argmax at every row (the default may
 *    round activations to bf16 inside quantized matmuls, as MLX does);
 *  - decode: prompt then the greedy ids one at a time, each step's logits vs
 *    greedy_logits.bin (same tolerances; exercises the KV cache path);
 *  - greedy: nmlx_generate (temperature 0, ignore_eos, 16 tokens) on a fresh
 *    session gives expected.json's greedy_ids exactly.
 * Then bad inputs, on damaged copies of a fixture in a temp dir: each must
 * fail with a non-OK status and a message naming the file, tensor or field.
 * Prints one line per fixture and thread count with the measured ratios. */
#define _POSIX_C_SOURCE 200809L

#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <dirent.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define F32_TOL 1e-4
#define QUANT_TOL 2e-2
#define N_GREEDY 16

/* ---- small file helpers ------------------------------------------------ */

static bool write_all(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, len, f) == len;
    return (fclose(f) == 0) && ok;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the sub-folders of `dir` that hold an expected.json. */
static size_t list_fixtures(const char *dir, char ***out) {
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    size_t n = 0, cap = 0;
    char **names = NULL;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s/expected.json", dir, e->d_name);
        if (!is_file(path)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        names[n] = malloc(strlen(e->d_name) + 1);
        if (!names[n]) break;
        strcpy(names[n++], e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    *out = names;
    return n;
}

/* ---- expected.json ------------------------------------------------------ */

typedef struct {
    char name[256];
    char path[4096];
    bool bf16, quant;
    int32_t vocab;
    int32_t *prompt;
    size_t n_prompt;
    int32_t greedy[N_GREEDY];
    float *logits;        /* [n_prompt, vocab] */
    float *greedy_logits; /* [N_GREEDY, vocab] or NULL */
} fixture;

static void fixture_free(fixture *fx) {
    free(fx->prompt);
    free(fx->logits);
    free(fx->greedy_logits);
}

static bool fixture_open(const char *dir, const char *name, fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->name, sizeof fx->name, "%s", name);
    snprintf(fx->path, sizeof fx->path, "%s/%s", dir, name);
    char p[4608];
    snprintf(p, sizeof p, "%s/expected.json", fx->path);
    json_error_t err;
    json_t *root = json_load_file(p, 0, &err);
    EXPECT(root != NULL, "%s: %s", p, err.text);
    if (!root) return false;
    bool ok = false;
    json_t *prompt = json_object_get(root, "prompt_ids");
    json_t *greedy = json_object_get(root, "greedy_ids");
    const char *dtype = json_string_value(json_object_get(root, "dtype"));
    fx->vocab = (int32_t)json_integer_value(json_object_get(root, "vocab_size"));
    if (!json_is_array(prompt) || !json_is_array(greedy) || !dtype || fx->vocab <= 0 ||
        json_array_size(greedy) != N_GREEDY || json_array_size(prompt) == 0) {
        EXPECT(0, "%s: missing or malformed fields", p);
        goto done;
    }
    fx->bf16 = strcmp(dtype, "bfloat16") == 0;
    fx->quant = json_object_get(root, "quantization") != NULL;
    fx->n_prompt = json_array_size(prompt);
    fx->prompt = malloc(fx->n_prompt * sizeof *fx->prompt);
    if (!fx->prompt) goto done;
    for (size_t i = 0; i < fx->n_prompt; i++)
        fx->prompt[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    for (size_t i = 0; i < N_GREEDY; i++)
        fx->greedy[i] = (int32_t)json_integer_value(json_array_get(greedy, i));
    snprintf(p, sizeof p, "%s/logits.bin", fx->path);
    fx->logits = test_read_floats(p, fx->n_prompt * (size_t)fx->vocab);
    EXPECT(fx->logits != NULL, "%s: missing or not %zu x %d floats", p, fx->n_prompt, fx->vocab);
    snprintf(p, sizeof p, "%s/greedy_logits.bin", fx->path);
    if (is_file(p)) {
        fx->greedy_logits = test_read_floats(p, (size_t)N_GREEDY * (size_t)fx->vocab);
        EXPECT(fx->greedy_logits != NULL, "%s: not %d x %d floats", p, N_GREEDY, fx->vocab);
    }
    ok = fx->logits != NULL;
done:
    json_decref(root);
    return ok;
}

/* ---- comparisons -------------------------------------------------------- */

typedef struct {
    double max_diff, max_ref; /* over all rows compared */
    size_t worst_row, worst_col;
    float worst_got, worst_ref;
    long first_bad_argmax; /* row, or -1 */
    size_t bad_ref_id, bad_got_id;
    float bad_ref_val[2], bad_got_val[2]; /* ref/got logit at ref id, at got id */
} cmp_stats;

static void cmp_init(cmp_stats *c) {
    memset(c, 0, sizeof *c);
    c->first_bad_argmax = -1;
}

static void cmp_row(cmp_stats *c, size_t row, const float *got, const float *ref, int32_t V) {
    for (int32_t j = 0; j < V; j++) {
        double d = fabs((double)got[j] - (double)ref[j]);
        if (!(d <= c->max_diff)) { /* also catches NaN */
            c->max_diff = isnan(d) ? INFINITY : d;
            c->worst_row = row;
            c->worst_col = (size_t)j;
            c->worst_got = got[j];
            c->worst_ref = ref[j];
        }
        if (fabs((double)ref[j]) > c->max_ref) c->max_ref = fabs((double)ref[j]);
    }
    size_t ar = test_argmax(ref, V), ag = test_argmax(got, V);
    if (ar != ag && c->first_bad_argmax < 0) {
        c->first_bad_argmax = (long)row;
        c->bad_ref_id = ar;
        c->bad_got_id = ag;
        c->bad_ref_val[0] = ref[ar];
        c->bad_ref_val[1] = ref[ag];
        c->bad_got_val[0] = got[ar];
        c->bad_got_val[1] = got[ag];
    }
}

static double cmp_ratio(const cmp_stats *c) {
    return c->max_ref > 0 ? c->max_diff / c->max_ref : INFINITY;
}

/* Applies the fixture's tolerance; `what` is "prefill" or "decode". */
static void cmp_expect(const fixture *fx, int threads, const char *what, const cmp_stats *c) {
    if (!fx->bf16) {
        const double tol = fx->quant ? QUANT_TOL : F32_TOL;
        EXPECT(cmp_ratio(c) <= tol,
               "%s (threads %d) %s: max|diff|/max|ref| = %.3e > %.0e at position %zu, id %zu "
               "(got %.6f, ref %.6f)",
               fx->path, threads, what, cmp_ratio(c), tol, c->worst_row, c->worst_col, c->worst_got,
               c->worst_ref);
    }
    EXPECT(c->first_bad_argmax < 0,
           "%s (threads %d) %s: argmax differs at position %ld: ref id %zu, got id %zu "
           "(ref logits %.6f vs %.6f, got %.6f vs %.6f)",
           fx->path, threads, what, c->first_bad_argmax, c->bad_ref_id, c->bad_got_id,
           c->bad_ref_val[0], c->bad_ref_val[1], c->bad_got_val[0], c->bad_got_val[1]);
}

/* One fixture with one thread count. */
static void check_fixture(const fixture *fx, int threads) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = threads;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    nmlx_status st = nmlx_model_load(fx->path, &mp, &m);
    EXPECT(st == NMLX_OK, "%s: load failed: %s", fx->path, nmlx_last_error());
    if (st != NMLX_OK) return;
    EXPECT(nmlx_model_vocab_size(m) == fx->vocab, "%s: vocab %d, expected %d", fx->path,
           nmlx_model_vocab_size(m), fx->vocab);
    if (nmlx_model_vocab_size(m) != fx->vocab) goto done;
    const int32_t V = fx->vocab;

    /* prefill, all rows */
    cmp_stats pre;
    cmp_init(&pre);
    const float *rows = NULL;
    st = nmlx_session_create(m, NULL, &s);
    EXPECT(st == NMLX_OK, "%s: session: %s", fx->path, nmlx_last_error());
    if (st != NMLX_OK) goto done;
    st = nmlx_session_eval(s, fx->prompt, fx->n_prompt, 1);
    EXPECT(st == NMLX_OK, "%s: eval: %s", fx->path, nmlx_last_error());
    if (st == NMLX_OK) {
        size_t n_rows = 0;
        rows = nmlx_session_all_logits(s, &n_rows);
        EXPECT(rows && n_rows == fx->n_prompt, "%s: all_logits has %zu rows, expected %zu",
               fx->path, n_rows, fx->n_prompt);
        if (rows && n_rows == fx->n_prompt) {
            for (size_t t = 0; t < fx->n_prompt; t++)
                cmp_row(&pre, t, rows + t * V, fx->logits + t * V, V);
            cmp_expect(fx, threads, "prefill", &pre);
            const float *last = nmlx_session_logits(s);
            EXPECT(last && memcmp(last, rows + (fx->n_prompt - 1) * V, V * sizeof(float)) == 0,
                   "%s: nmlx_session_logits differs from the last all_logits row", fx->path);
        }
    }

    /* decode: one token at a time after the prompt, vs greedy_logits.bin */
    cmp_stats dec;
    cmp_init(&dec);
    bool have_dec = false;
    if (fx->greedy_logits && st == NMLX_OK) {
        nmlx_session_reset(s);
        st = nmlx_session_eval(s, fx->prompt, fx->n_prompt, 0);
        for (size_t i = 0; i < N_GREEDY && st == NMLX_OK; i++) {
            const float *l = nmlx_session_logits(s);
            EXPECT(l != NULL, "%s: no logits at decode step %zu", fx->path, i);
            if (!l) break;
            cmp_row(&dec, i, l, fx->greedy_logits + i * V, V);
            st = nmlx_session_eval(s, &fx->greedy[i], 1, 0);
        }
        EXPECT(st == NMLX_OK, "%s: decode eval: %s", fx->path, nmlx_last_error());
        have_dec = st == NMLX_OK;
        if (have_dec) cmp_expect(fx, threads, "decode", &dec);
    }
    nmlx_session_free(s);
    s = NULL;

    /* greedy generation on a fresh session */
    struct {
        int32_t ids[N_GREEDY];
        size_t n;
    } got = {{0}, 0};
    nmlx_generate_result res;
    memset(&res, 0, sizeof res);
    st = nmlx_session_create(m, NULL, &s);
    if (st == NMLX_OK)
        st = test_greedy_ids(s, fx->prompt, fx->n_prompt, got.ids, N_GREEDY, &got.n, &res);
    EXPECT(st == NMLX_OK, "%s: generate: %s", fx->path, nmlx_last_error());
    long first_bad = -1;
    if (st == NMLX_OK) {
        EXPECT(got.n == N_GREEDY && res.n_generated == N_GREEDY,
               "%s: generated %zu tokens (result says %zu), expected %d", fx->path, got.n,
               res.n_generated, N_GREEDY);
        for (size_t i = 0; i < N_GREEDY && i < got.n; i++)
            if (got.ids[i] != fx->greedy[i]) {
                first_bad = (long)i;
                break;
            }
        if (got.n < N_GREEDY && first_bad < 0) first_bad = (long)got.n;
        EXPECT(first_bad < 0, "%s (threads %d): greedy differs at step %ld: got %d, expected %d",
               fx->path, threads, first_bad, first_bad < (long)got.n ? got.ids[first_bad] : -1,
               fx->greedy[first_bad < 0 ? 0 : first_bad]);
    }

    printf("%-40s %-8s t=%d  prefill %.2e%s  decode %s%.2e%s  greedy %s\n", fx->path,
           fx->bf16 ? "bf16" : "f32", threads, cmp_ratio(&pre),
           pre.first_bad_argmax < 0 ? "" : " ARGMAX-MISMATCH", have_dec ? "" : "n/a ",
           have_dec ? cmp_ratio(&dec) : 0.0, dec.first_bad_argmax < 0 ? "" : " ARGMAX-MISMATCH",
           st != NMLX_OK   ? "error"
           : first_bad < 0 ? "ok"
                           : "MISMATCH");
done:
    nmlx_session_free(s);
    nmlx_model_free(m);
}

/* ---- bad inputs --------------------------------------------------------- */

static char tmp_root[256];

static void copy_fixture(const char *src, const char *dst) {
    static const char *files[] = {"config.json", "model.safetensors", "generation_config.json"};
    mkdir(dst, 0755);
    char a[4608], b[4608];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        size_t len = 0;
        char *data = test_read_file(a, &len);
        if (data) write_all(b, data, len);
        free(data);
    }
}

static void remove_fixture_copy(const char *dir) {
    static const char *files[] = {"config.json", "model.safetensors", "generation_config.json"};
    char p[4608];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Loads `dir`, expects a failure whose message contains one of the needles
 * (NULL-terminated list), and that *out stays NULL. */
static void expect_load_fails(const char *what, const char *dir, const char *const *needles) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    nmlx_status st = nmlx_model_load(dir, &mp, &m);
    const char *msg = nmlx_last_error();
    EXPECT(st != NMLX_OK, "bad input '%s': load succeeded", what);
    EXPECT(m == NULL, "bad input '%s': *out set on failure", what);
    bool named = false;
    for (const char *const *n = needles; *n; n++)
        if (msg && strstr(msg, *n)) named = true;
    EXPECT(named, "bad input '%s': message does not name %s%s: \"%s\"", what, needles[0],
           needles[1] ? " (or an alternative)" : "", msg ? msg : "(null)");
    printf("bad input %-28s -> %-18s \"%s\"\n", what, nmlx_status_string(st), msg ? msg : "");
    nmlx_model_free(m);
}

/* The safetensors header: 8-byte little-endian length, then JSON. */
static json_t *st_header(const char *data, size_t len, size_t *hdr_len) {
    if (len < 8) return NULL;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | (unsigned char)data[i];
    if (n > len - 8) return NULL;
    *hdr_len = (size_t)n;
    return json_loadb(data + 8, (size_t)n, 0, NULL);
}

/* Writes a safetensors file from a header object and a data section. */
static bool st_write(const char *path, json_t *hdr, const char *data, size_t data_len) {
    char *js = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    if (!js) return false;
    size_t n = strlen(js), padded = (n + 7) & ~(size_t)7;
    size_t total = 8 + padded + data_len;
    char *buf = malloc(total);
    bool ok = false;
    if (buf) {
        for (int i = 0; i < 8; i++)
            buf[i] = (char)((uint64_t)padded >> (8 * i));
        memcpy(buf + 8, js, n);
        memset(buf + 8 + n, ' ', padded - n);
        memcpy(buf + 8 + padded, data, data_len);
        ok = write_all(path, buf, total);
    }
    free(buf);
    free(js);
    return ok;
}

/* Removes tensor `name` and its bytes, shifting the later offsets. */
static bool st_remove_tensor(const char *path, const char *name) {
    size_t len = 0, hlen = 0;
    char *data = test_read_file(path, &len);
    json_t *hdr = data ? st_header(data, len, &hlen) : NULL;
    bool ok = false;
    json_t *t = hdr ? json_object_get(hdr, name) : NULL;
    if (t) {
        json_t *off = json_object_get(t, "data_offsets");
        size_t b = (size_t)json_integer_value(json_array_get(off, 0));
        size_t e = (size_t)json_integer_value(json_array_get(off, 1));
        const char *body = data + 8 + hlen;
        size_t body_len = len - 8 - hlen;
        char *nb = malloc(body_len);
        if (nb && e >= b && e <= body_len) {
            memcpy(nb, body, b);
            memcpy(nb + b, body + e, body_len - e);
            const char *key;
            json_t *v;
            json_object_foreach(hdr, key, v) {
                json_t *o = json_object_get(v, "data_offsets");
                if (!o) continue;
                json_int_t ob = json_integer_value(json_array_get(o, 0));
                json_int_t oe = json_integer_value(json_array_get(o, 1));
                if (ob >= (json_int_t)e) {
                    json_array_set_new(o, 0, json_integer(ob - (json_int_t)(e - b)));
                    json_array_set_new(o, 1, json_integer(oe - (json_int_t)(e - b)));
                }
            }
            json_object_del(hdr, name);
            ok = st_write(path, hdr, nb, body_len - (e - b));
        }
        free(nb);
    }
    json_decref(hdr);
    free(data);
    return ok;
}

/* Changes one tensor's dtype string in place (same length keeps offsets). */
static bool st_set_dtype(const char *path, const char *name, const char *dtype) {
    size_t len = 0, hlen = 0;
    char *data = test_read_file(path, &len);
    json_t *hdr = data ? st_header(data, len, &hlen) : NULL;
    bool ok = false;
    json_t *t = hdr ? json_object_get(hdr, name) : NULL;
    if (t) {
        json_object_set_new(t, "dtype", json_string(dtype));
        ok = st_write(path, hdr, data + 8 + hlen, len - 8 - hlen);
    }
    json_decref(hdr);
    free(data);
    return ok;
}

/* Sets config.json's key to a JSON value given as text. */
static bool cfg_set(const char *dir, const char *key, const char *json_value) {
    char p[4608];
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *cfg = json_load_file(p, 0, NULL);
    json_t *v = json_loads(json_value, JSON_DECODE_ANY, NULL);
    bool ok = cfg && v && json_object_set_new(cfg, key, v) == 0 &&
              json_dump_file(cfg, p, JSON_INDENT(2)) == 0;
    if (!ok && !cfg) json_decref(v);
    json_decref(cfg);
    return ok;
}

static void check_bad_inputs(const char *src) {
    char dir[512], p[1024];
    /* a tensor present in every standard checkpoint */
    const char *victim = "model.layers.1.mlp.down_proj.weight";
    const char *dtype_victim = "model.layers.0.self_attn.k_proj.weight";

#define FRESH()                                                                                    \
    do {                                                                                           \
        remove_fixture_copy(dir);                                                                  \
        copy_fixture(src, dir);                                                                    \
    } while (0)
    snprintf(dir, sizeof dir, "%s/m", tmp_root);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);

    { /* truncated weights */
        FRESH();
        size_t len = 0;
        char *data = test_read_file(p, &len);
        EXPECT(data && write_all(p, data, len / 2), "cannot truncate %s", p);
        free(data);
        const char *n[] = {"model.safetensors", NULL};
        expect_load_fails("truncated safetensors", dir, n);
    }
    { /* header cut inside the JSON */
        FRESH();
        size_t len = 0;
        char *data = test_read_file(p, &len);
        EXPECT(data && write_all(p, data, 40), "cannot truncate %s", p);
        free(data);
        const char *n[] = {"model.safetensors", NULL};
        expect_load_fails("safetensors header cut", dir, n);
    }
    /* a dtype of the wrong size for the bytes, one we do not support, an
     * unknown dtype string */
    static const struct {
        const char *what, *dtype, *needle;
    } dtype_cases[] = {{"dtype F16 on F32 bytes", "F16", NULL},
                       {"dtype F64", "F64", "F64"},
                       {"dtype Q7 (unknown)", "Q7", "Q7"}};
    for (size_t i = 0; i < sizeof dtype_cases / sizeof dtype_cases[0]; i++) {
        FRESH();
        EXPECT(st_set_dtype(p, dtype_victim, dtype_cases[i].dtype), "cannot edit %s", p);
        const char *n[] = {dtype_victim, dtype_cases[i].needle, NULL};
        expect_load_fails(dtype_cases[i].what, dir, n);
    }
    { /* a missing tensor */
        FRESH();
        EXPECT(st_remove_tensor(p, victim), "cannot remove %s from %s", victim, p);
        const char *n[] = {victim, NULL};
        expect_load_fails("missing tensor", dir, n);
    }
    { /* no weights at all */
        FRESH();
        unlink(p);
        const char *n[] = {"safetensors", NULL};
        expect_load_fails("missing model.safetensors", dir, n);
    }
    { /* malformed config.json */
        FRESH();
        char c[1024];
        snprintf(c, sizeof c, "%s/config.json", dir);
        size_t len = 0;
        char *data = test_read_file(c, &len);
        EXPECT(data && write_all(c, data, len / 2), "cannot truncate %s", c);
        free(data);
        const char *n[] = {"config.json", NULL};
        expect_load_fails("malformed config.json", dir, n);
    }
    { /* config.json that is not an object */
        FRESH();
        char c[1024];
        snprintf(c, sizeof c, "%s/config.json", dir);
        EXPECT(write_all(c, "[1, 2, 3]\n", 10), "cannot write %s", c);
        const char *n[] = {"config.json", NULL};
        expect_load_fails("config.json not an object", dir, n);
    }
    { /* missing config.json */
        FRESH();
        char c[1024];
        snprintf(c, sizeof c, "%s/config.json", dir);
        unlink(c);
        const char *n[] = {"config.json", NULL};
        expect_load_fails("missing config.json", dir, n);
    }
    /* config.json fields: an unknown model_type, a field of the wrong type,
     * sizes that disagree with the weights, more layers than the file has */
    static const struct {
        const char *what, *key, *value, *needles[4];
    } cfg_cases[] = {
        {"unknown model_type",
         "model_type",
         "\"nmlx_no_such_arch\"",
         {"nmlx_no_such_arch", "model_type", NULL}},
        {"num_hidden_layers a string", "num_hidden_layers", "\"two\"", {"num_hidden_layers", NULL}},
        {"hidden_size 40 vs weights", "hidden_size", "40", {".weight", "hidden_size", NULL}},
        {"intermediate_size 100", "intermediate_size", "100", {"mlp.", "intermediate_size", NULL}},
        {"num_hidden_layers 3 of 2",
         "num_hidden_layers",
         "3",
         {"model.layers.2.", "num_hidden_layers", NULL}},
        {"vocab_size 300", "vocab_size", "300", {"embed_tokens", "lm_head", "vocab_size", NULL}},
    };
    for (size_t i = 0; i < sizeof cfg_cases / sizeof cfg_cases[0]; i++) {
        FRESH();
        EXPECT(cfg_set(dir, cfg_cases[i].key, cfg_cases[i].value), "cannot edit config");
        expect_load_fails(cfg_cases[i].what, dir, cfg_cases[i].needles);
    }
    { /* missing folder */
        remove_fixture_copy(dir);
        const char *n[] = {dir, NULL};
        expect_load_fails("missing folder", dir, n);
    }
#undef FRESH
    remove_fixture_copy(dir);
}

/* ---- main --------------------------------------------------------------- */

static size_t run_dir(const char *dir, const char *only) {
    char **names = NULL;
    size_t n = list_fixtures(dir, &names), done = 0;
    for (size_t i = 0; i < n; i++) {
        if (!only || strcmp(only, names[i]) == 0) {
            fixture fx;
            if (fixture_open(dir, names[i], &fx)) {
                check_fixture(&fx, 1);
                check_fixture(&fx, 2);
                done++;
            }
            fixture_free(&fx);
        }
        free(names[i]);
    }
    free(names);
    return done;
}

int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL; /* a fixture name, for debugging */
    char main_dir[4096], hold_dir[4200];
    snprintf(main_dir, sizeof main_dir, "%s/tests/fixtures", test_src_dir());
    snprintf(hold_dir, sizeof hold_dir, "%s/holdout", main_dir);
    EXPECT(is_dir(main_dir), "no fixture folder %s (run from the source tree)", main_dir);

    size_t n = run_dir(main_dir, only);
    size_t nh = run_dir(hold_dir, only);
    if (!only) EXPECT(n >= 7 && nh >= 7, "found %zu fixtures and %zu held-out", n, nh);

    snprintf(tmp_root, sizeof tmp_root, "/tmp/nmlx_test_fixtures_XXXXXX");
    char src[4200];
    snprintf(src, sizeof src, "%s/llama_untied_linear_bias", main_dir);
    if (!only && mkdtemp(tmp_root)) {
        check_bad_inputs(src);
        rmdir(tmp_root);
    }
    return test_summary();
}
