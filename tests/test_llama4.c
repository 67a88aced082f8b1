/* Llama 4 beyond what test_fixtures checks (one-shot prefill, token-by-token
 * decode, greedy):
 *  - the chunked KV cache (shared/chunked_kv_cache.c): rows, views and
 *    trims against a plain list of positions, chunk boundaries included;
 *  - sigmoid top-k routing (NMLX_MOE_TOPK_SIGMOID) against a sort;
 *  - every llama4 fixture with its prompt fed in pieces (single tokens,
 *    pieces that end on and across attention chunk boundaries): each
 *    call's rows vs the reference logits (float32 tolerance, same argmax);
 *  - session trims inside the live chunk and into the chunk before are exact;
 *    a trim back past the chunk before makes the next eval fail with a
 *    message (nothing crashes), and trimming to a chunk boundary recovers;
 *  - config spellings of the same model agree, features switched off differ;
 *  - nmlx convert / quantize-on-load split Llama 4's fused experts right;
 *  - batched decode (nmlx_batch_eval) equals each session stepped alone. */
#define _DEFAULT_SOURCE /* realpath, symlink */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"
#include "shared/chunked_kv_cache.h"
#include "shared/moe.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define F32_TOL 1e-4

/* ---- chunked KV cache ------------------------------------------------- */

static void test_chunked_cache(void) {
    nmlx_backend *be = NULL;
    EXPECT(nmlx_backend_cpu_create(1, &be) == NMLX_OK, "cpu backend");
    if (!be) return;
    const int64_t KVH = 2, HD = 4, C = 5, MAXC = 40;
    nmlx_chunked_kv_cache c;
    EXPECT(nmlx_chunked_kv_cache_init(&c, be, KVH, HD, C, MAXC) == NMLX_OK, "init");
    float k[8 * 2 * 4], v[8 * 2 * 4];
    /* feed positions in calls of these sizes (split at chunk ends like the model) */
    const int64_t calls[] = {3, 1, 4, 7, 1, 1, 2, 5};
    int64_t pos = 0;
    bool ok = true;
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        for (int64_t left = calls[i]; left > 0;) {
            int64_t n = nmlx_chunked_kv_cache_room(&c);
            if (n > left) n = left;
            for (int64_t t = 0; t < n; t++)
                for (int64_t j = 0; j < KVH * HD; j++) {
                    k[t * KVH * HD + j] = (float)(pos + t) + 0.01f * (float)j;
                    v[t * KVH * HD + j] = -(float)(pos + t) - 0.01f * (float)j;
                }
            nmlx_kv_view view;
            ok = ok && nmlx_chunked_kv_cache_reserve(&c, n) == NMLX_OK;
            nmlx_chunked_kv_cache_update(&c, be, k, v, n, &view);
            int64_t start = pos - pos % C;
            ok = ok && view.q_row == pos - start && view.n_kv == pos + n - start &&
                 view.window == 0 && (pos % C) + n <= C;
            for (int64_t r = 0; r < view.n_kv; r++) /* row r holds position start + r */
                for (int64_t h = 0; h < KVH; h++)
                    ok = ok &&
                         view.keys[(h * view.cap + r) * HD] ==
                             (float)(start + r) + 0.01f * (float)(h * HD) &&
                         view.values[(h * view.cap + r) * HD + 1] ==
                             -(float)(start + r) - 0.01f * (float)(h * HD + 1);
            pos += n;
            left -= n;
        }
    EXPECT(ok && c.offset == pos, "chunked cache rows and views over %lld positions",
           (long long)pos);
    /* trims: inside the live chunk and into the chunk before keep their rows */
    int64_t C0 = pos - pos % C; /* live chunk start (pos = 24: chunk 20..24, before: 15..19) */
    EXPECT(nmlx_chunked_kv_cache_trim(&c, 2) == 2 &&
               nmlx_chunked_kv_cache_reserve(&c, 1) == NMLX_OK,
           "trim inside the chunk");
    nmlx_chunked_kv_cache_trim(&c, c.offset - (C0 - 3)); /* into the chunk before */
    ok = nmlx_chunked_kv_cache_reserve(&c, 1) == NMLX_OK && c.offset == C0 - 3;
    {
        nmlx_kv_view view;
        for (int64_t j = 0; j < KVH * HD; j++)
            k[j] = v[j] = -99.0f; /* position C0 - 3 again */
        nmlx_chunked_kv_cache_update(&c, be, k, v, 1, &view);
        int64_t start = C0 - C; /* rows 0, 1 are positions start, start + 1: kept */
        ok = ok && view.n_kv == C - 2 && view.q_row == C - 3 &&
             view.keys[1 * HD] == (float)(start + 1) && view.keys[(C - 3) * HD] == -99.0f;
    }
    EXPECT(ok, "trim into the chunk before: its earlier rows are still there");
    /* back past the start of the chunk before: lost until a chunk boundary */
    nmlx_chunked_kv_cache_trim(&c, c.offset - (C0 - C - 2));
    EXPECT(nmlx_chunked_kv_cache_reserve(&c, 1) == NMLX_ERR_INVALID_ARG &&
               strstr(nmlx_last_error(), "attention chunk"),
           "trim past the chunk before is reported: %s", nmlx_last_error());
    nmlx_chunked_kv_cache_trim(&c, c.offset % C);
    EXPECT(c.offset % C == 0 && nmlx_chunked_kv_cache_reserve(&c, 1) == NMLX_OK,
           "trim to a chunk boundary recovers");
    EXPECT(nmlx_chunked_kv_cache_reserve(&c, MAXC) == NMLX_ERR_CONTEXT_OVERFLOW,
           "context overflow");
    EXPECT(c.cap == 2 * C, "two chunk slots");
    nmlx_chunked_kv_cache_free(&c, be);
    /* max_context below the chunk: the buffer is the context */
    EXPECT(nmlx_chunked_kv_cache_init(&c, be, 1, 2, 8192, 7) == NMLX_OK && c.cap == 7,
           "cap = min(chunk, context)");
    nmlx_chunked_kv_cache_free(&c, be);
    nmlx_backend_free(be);
}

/* ---- routing ------------------------------------------------------------- */

static void test_sigmoid_routing(void) {
    const int64_t E = 7, K = 3, T = 9;
    float logits[9 * 7], scores[9 * 3];
    int32_t idx[9 * 3];
    test_seed(44);
    for (int64_t i = 0; i < T * E; i++)
        logits[i] = (float)((double)(test_rand_u64() % 2000) / 250.0 - 4.0);
    nmlx_moe_shape s = {.n_experts = E, .top_k = K, .routing = NMLX_MOE_TOPK_SIGMOID};
    nmlx_moe_route(&s, logits, T, idx, scores);
    bool ok = true;
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * E;
        for (int64_t j = 0; j < K; j++) {
            int32_t e = idx[t * K + j];
            int64_t above = 0; /* experts strictly better than e, or equal with a lower index */
            for (int64_t x = 0; x < E; x++)
                above += l[x] > l[e] || (l[x] == l[e] && x < e);
            ok = ok && above == j;
            ok = ok && fabs(scores[t * K + j] - 1.0 / (1.0 + exp(-(double)l[e]))) < 1e-7;
        }
    }
    EXPECT(ok, "top-k sigmoid routing");
}

/* ---- the fixtures fed in pieces ------------------------------------------ */

typedef struct {
    int32_t *prompt, greedy[16];
    size_t n;
    int V;
    float *logits;
    int64_t chunk;
} ref;

static bool ref_open(const char *dir, ref *r) {
    char p[1200];
    memset(r, 0, sizeof *r);
    snprintf(p, sizeof p, "%s/expected.json", dir);
    json_t *e = json_load_file(p, 0, NULL);
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *c = json_load_file(p, 0, NULL);
    bool ok = e && c;
    if (ok) {
        json_t *pr = json_object_get(e, "prompt_ids"), *g = json_object_get(e, "greedy_ids");
        json_t *tc = json_object_get(c, "text_config");
        r->n = json_array_size(pr);
        r->V = (int)json_integer_value(json_object_get(e, "vocab_size"));
        r->chunk = json_integer_value(json_object_get(tc ? tc : c, "attention_chunk_size"));
        r->prompt = malloc(r->n * sizeof *r->prompt);
        for (size_t i = 0; i < r->n; i++)
            r->prompt[i] = (int32_t)json_integer_value(json_array_get(pr, i));
        for (size_t i = 0; i < 16; i++)
            r->greedy[i] = (int32_t)json_integer_value(json_array_get(g, i));
        snprintf(p, sizeof p, "%s/logits.bin", dir);
        r->logits = test_read_floats(p, r->n * (size_t)r->V);
        ok = r->logits && r->n > 4 && r->V > 0 && r->chunk > 1;
    }
    json_decref(e);
    json_decref(c);
    return ok;
}

/* Feeds the prompt in pieces of the given sizes (the last repeats), all
 * logits kept; returns max |diff| / max |ref|, or NAN on an error; *same_argmax
 * says whether every row's argmax is the reference's. */
static double feed_pieces(nmlx_session *s, const ref *r, const size_t *sizes, size_t n_sizes,
                          bool *same_argmax) {
    double diff = 0, mx = 0;
    bool argmax_ok = true;
    nmlx_session_reset(s);
    for (size_t at = 0, i = 0; at < r->n; i++) {
        size_t n = sizes[i < n_sizes ? i : n_sizes - 1];
        if (n > r->n - at) n = r->n - at;
        if (nmlx_session_eval(s, r->prompt + at, n, 1) != NMLX_OK) return NAN;
        size_t rows = 0;
        const float *got = nmlx_session_all_logits(s, &rows);
        if (!got || rows != n) return NAN;
        for (size_t t = 0; t < n; t++) {
            const float *g = got + t * (size_t)r->V, *x = r->logits + (at + t) * (size_t)r->V;
            for (int j = 0; j < r->V; j++) {
                double d = fabs((double)g[j] - (double)x[j]);
                if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
                if (fabs((double)x[j]) > mx) mx = fabs((double)x[j]);
            }
            argmax_ok = argmax_ok && test_argmax(g, r->V) == test_argmax(x, r->V);
        }
        at += n;
    }
    *same_argmax = argmax_ok;
    return mx > 0 ? diff / mx : NAN;
}

static void test_fixture(const char *root, const char *name) {
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    ref r;
    bool have = ref_open(dir, &r);
    EXPECT(have, "%s: fixture readable", dir);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    if (!have || nmlx_model_load(dir, &mp, &m) != NMLX_OK ||
        nmlx_session_create(m, NULL, &s) != NMLX_OK) {
        EXPECT(0, "%s: load: %s", dir, nmlx_last_error());
        goto done;
    }
    size_t C = (size_t)r.chunk;
    const size_t ones[] = {1};
    const size_t at_edge[] = {C - 1, 1, C, 2}; /* ends on a boundary, then crosses */
    const size_t across[] = {C + 2, C - 1, 3}; /* starts mid-chunk, spans two */
    const size_t uneven[] = {3, 4, 2, 7};
    const struct {
        const char *what;
        const size_t *sizes;
        size_t n;
    } plans[] = {{"one token at a time", ones, 1},
                 {"pieces ending on chunk boundaries", at_edge, 4},
                 {"pieces across chunk boundaries", across, 3},
                 {"uneven pieces", uneven, 4}};
    for (size_t p = 0; p < sizeof plans / sizeof plans[0]; p++) {
        bool same = false;
        double ratio = feed_pieces(s, &r, plans[p].sizes, plans[p].n, &same);
        EXPECT(ratio <= F32_TOL && same, "%s, %s: max|diff|/max|ref| = %.3e, argmax %s: %s", name,
               plans[p].what, ratio, same ? "same" : "DIFFERS", nmlx_last_error());
        printf("%-20s %-36s %.2e\n", name, plans[p].what, ratio);
    }
    /* trims back inside the live chunk and into the chunk before are exact:
     * the same tokens again give the reference rows */
    {
        size_t n = r.n, live = n % C, backs[2] = {2, live + 2};
        for (int i = 0; i < 2; i++) {
            size_t back = backs[i];
            if (back >= n) continue;
            nmlx_session_reset(s);
            nmlx_status st = nmlx_session_eval(s, r.prompt, n, 0);
            if (st == NMLX_OK) st = nmlx_session_trim(s, back);
            if (st == NMLX_OK) st = nmlx_session_eval(s, r.prompt + n - back, back, 1);
            size_t rows = 0;
            const float *got = st == NMLX_OK ? nmlx_session_all_logits(s, &rows) : NULL;
            double diff = 0, mx = 0;
            for (size_t t = 0; got && rows == back && t < back; t++)
                for (int j = 0; j < r.V; j++) {
                    const float *x = r.logits + (n - back + t) * (size_t)r.V;
                    double d = fabs((double)got[t * (size_t)r.V + j] - (double)x[j]);
                    if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
                    if (fabs((double)x[j]) > mx) mx = fabs((double)x[j]);
                }
            EXPECT(got && rows == back && mx > 0 && diff / mx <= F32_TOL,
                   "%s: trim %zu (%s) then re-eval: %.3e %s", name, back,
                   i ? "into the chunk before" : "inside the live chunk", mx > 0 ? diff / mx : 0,
                   st == NMLX_OK ? "" : nmlx_last_error());
        }
        /* back past the start of the chunk before: the next eval says why it
         * cannot go on; trimming to a chunk boundary recovers */
        size_t prev_start = n - live >= C ? n - live - C : 0;
        size_t to = prev_start > 0 ? prev_start - 1 : 0;
        if (prev_start > 0 && to % C != 0) {
            nmlx_session_reset(s);
            nmlx_status st = nmlx_session_eval(s, r.prompt, n, 0);
            if (st == NMLX_OK) nmlx_session_trim(s, n - to);
            st = nmlx_session_eval(s, r.prompt + to, 1, 0);
            EXPECT(st != NMLX_OK && strstr(nmlx_last_error(), "attention chunk"),
                   "%s: eval after a trim past the chunk before fails clearly: %s", name,
                   nmlx_last_error());
            nmlx_session_trim(s, to % C); /* to the chunk boundary */
            size_t from = to - to % C;
            st = nmlx_session_eval(s, r.prompt + from, n - from, 1);
            size_t rows = 0;
            const float *got = st == NMLX_OK ? nmlx_session_all_logits(s, &rows) : NULL;
            EXPECT(got && rows == n - from &&
                       test_argmax(got + (rows - 1) * (size_t)r.V, r.V) ==
                           test_argmax(r.logits + (n - 1) * (size_t)r.V, r.V),
                   "%s: recovered after trimming to a chunk boundary: %s", name, nmlx_last_error());
        }
    }
done:
    nmlx_session_free(s);
    nmlx_model_free(m);
    free(r.prompt);
    free(r.logits);
}

/* Loads dir (quantize_bits/gs on load if bits > 0), evaluates the prompt of
 * the reference r with all logits: max |diff| / max |ref|, or inf (error or
 * an argmax differs). */
static double whole_prompt(const char *dir, const ref *r, int bits, int gs, bool *same) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    mp.no_tokenizer = 1;
    mp.quantize_bits = bits;
    mp.quantize_group_size = gs;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    double ratio = NAN;
    *same = false;
    if (nmlx_model_load(dir, &mp, &m) == NMLX_OK && nmlx_session_create(m, NULL, &s) == NMLX_OK) {
        const size_t all[] = {r->n};
        ratio = feed_pieces(s, r, all, 1, same);
    }
    nmlx_session_free(s);
    nmlx_model_free(m);
    return ratio;
}

/* nmlx convert splits the fused experts.gate_up_proj of Llama 4 into gate and
 * up HALVES (gpt-oss interleaves them): with group size 64 nothing of
 * llama4_mm (widths 48, 24, 40) is quantized, so the converted checkpoint,
 * stacked experts and all, must give the float logits; 8-bit on load of
 * llama4_text (group 32) stays within 5e-2 of the float logits (2.0e-2 measured;
 * wrong gate/up halves would be ~1) with every
 * argmax equal. */
static void test_convert(const char *root) {
    char src[1100], out[1200];
    ref r;
    snprintf(src, sizeof src, "%s/llama4_mm", root);
    snprintf(out, sizeof out, "/tmp/nmlx-llama4-convert-%ld", (long)getpid());
    nmlx_convert_params cp = nmlx_convert_default_params();
    cp.bits = 4;
    cp.group_size = 64;
    if (ref_open(src, &r)) {
        nmlx_status st = nmlx_convert(src, out, &cp);
        EXPECT(st == NMLX_OK, "convert llama4_mm: %s", nmlx_last_error());
        bool same = false;
        double ratio = st == NMLX_OK ? whole_prompt(out, &r, 0, 0, &same) : NAN;
        EXPECT(ratio <= F32_TOL && same, "converted llama4_mm (fused -> stacked experts): %.3e",
               ratio);
        printf("%-20s %-36s %.2e\n", "llama4_mm", "nmlx convert (fused -> stacked)", ratio);
        char p[1300];
        const char *files[] = {"model.safetensors", "config.json", "generation_config.json"};
        for (size_t i = 0; i < 3; i++)
            snprintf(p, sizeof p, "%s/%s", out, files[i]), unlink(p);
        rmdir(out);
    }
    free(r.prompt);
    free(r.logits);
    snprintf(src, sizeof src, "%s/llama4_text", root);
    if (ref_open(src, &r)) {
        bool same = false;
        double ratio = whole_prompt(src, &r, 8, 32, &same);
        EXPECT(ratio <= 5e-2 && same, "llama4_text quantized to 8 bits on load: %.3e", ratio);
        printf("%-20s %-36s %.2e\n", "llama4_text", "8-bit g32 on load vs float", ratio);
    }
    free(r.prompt);
    free(r.logits);
}

/* Config spellings that mean the same model give the same logits; switching
 * a feature off changes them (so the fixture exercises it). Each variant is
 * llama4_text's config with one field replaced (JSON), next to a link to its
 * weights. */
static void test_config_variants(const char *root) {
    char src[1100], dir[64], p[1300], w[1300];
    ref r;
    snprintf(src, sizeof src, "%s/llama4_text", root);
    if (!ref_open(src, &r)) {
        EXPECT(0, "%s readable", src);
        return;
    }
    snprintf(dir, sizeof dir, "/tmp/nmlx-llama4-cfg-%ld", (long)getpid());
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    snprintf(w, sizeof w, "%s/model.safetensors", src);
    char *abs = realpath(w, NULL);
    EXPECT(abs && symlink(abs, p) == 0, "link the weights");
    free(abs);
    static const struct {
        const char *key, *value;
        bool same;
    } cases[] = {
        {"no_rope_layers", "[]", true},                 /* empty = by interval (2) */
        {"no_rope_layers", "[1, 0, 1, 0, 1, 1]", true}, /* longer than the layers: ok */
        {"layer_types",
         "[\"chunked_attention\", \"full_attention\", \"chunked_attention\", "
         "\"full_attention\"]",
         true},
        {"moe_layers", "[1, 3]", true},
        {"attn_temperature_tuning", "4", true}, /* hub / mlx-lm spelling */
        {"attn_temperature_tuning", "false", false},
        {"attention_chunk_size", "64", false},
        {"use_qk_norm", "false", false},
        {"layer_types",
         "[\"full_attention\", \"full_attention\", \"chunked_attention\", "
         "\"full_attention\"]",
         false},
        {"moe_layers", "[]", false},
    };
    snprintf(w, sizeof w, "%s/config.json", src);
    json_t *base = json_load_file(w, 0, NULL);
    snprintf(p, sizeof p, "%s/config.json", dir);
    for (size_t i = 0; base && i < sizeof cases / sizeof cases[0]; i++) {
        json_t *c = json_deep_copy(base);
        json_object_set_new(c, cases[i].key, json_loads(cases[i].value, JSON_DECODE_ANY, NULL));
        if (!strcmp(cases[i].key, "moe_layers") && !strcmp(cases[i].value, "[]")) {
            /* no MoE layer: every layer dense needs dense weights; expect a clear error */
            json_dump_file(c, p, 0);
            nmlx_model_params mp = nmlx_model_default_params();
            mp.no_tokenizer = 1;
            nmlx_model *m = NULL;
            EXPECT(nmlx_model_load(dir, &mp, &m) != NMLX_OK && !m &&
                       strstr(nmlx_last_error(), "feed_forward"),
                   "moe_layers [] on MoE weights fails naming the tensor: %s", nmlx_last_error());
            nmlx_model_free(m);
            json_decref(c);
            continue;
        }
        json_dump_file(c, p, 0);
        json_decref(c);
        bool same = false;
        double ratio = whole_prompt(dir, &r, 0, 0, &same);
        if (cases[i].same)
            EXPECT(ratio <= F32_TOL && same, "%s = %s: %.3e (same model expected): %s",
                   cases[i].key, cases[i].value, ratio, nmlx_last_error());
        else
            EXPECT(ratio > 1e-2 && isfinite(ratio),
                   "%s = %s: %.3e (a different model expected): %s", cases[i].key, cases[i].value,
                   ratio, nmlx_last_error());
        printf("%-20s %-36.36s %.2e\n", cases[i].key, cases[i].value, ratio);
    }
    json_decref(base);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    rmdir(dir);
    free(r.prompt);
    free(r.logits);
}

/* Batched decode (nmlx_batch_eval): N sessions with prompts of different
 * lengths step together through 16 greedy tokens (crossing attention chunk
 * boundaries at different steps); each step's logits must equal the same
 * session's logits stepped alone, bit for bit (fewer than 16 rows). */
static void test_batch(const char *root, const char *name) {
    enum { N = 3, STEPS = 16 };
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    ref r;
    if (!ref_open(dir, &r)) {
        EXPECT(0, "%s readable", dir);
        return;
    }
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    nmlx_session *alone = NULL, *ss[N] = {NULL};
    nmlx_batch *b = NULL;
    size_t V = (size_t)r.V;
    float *want = malloc((size_t)N * STEPS * V * sizeof *want);
    int32_t ids[N][STEPS];
    bool ok = want && nmlx_model_load(dir, &mp, &m) == NMLX_OK &&
              nmlx_session_create(m, NULL, &alone) == NMLX_OK &&
              nmlx_batch_create(m, N, &b) == NMLX_OK;
    /* alone: prompt prefix of n - 2j tokens, then greedy steps */
    for (int j = 0; ok && j < N; j++) {
        nmlx_session_reset(alone);
        ok = nmlx_session_eval(alone, r.prompt, r.n - 2 * (size_t)j, 0) == NMLX_OK;
        for (int t = 0; ok && t < STEPS; t++) {
            const float *l = nmlx_session_logits(alone);
            memcpy(want + ((size_t)j * STEPS + t) * V, l, V * sizeof *want);
            ids[j][t] = (int32_t)test_argmax(l, r.V);
            ok = nmlx_session_eval(alone, &ids[j][t], 1, 0) == NMLX_OK;
        }
    }
    for (int j = 0; ok && j < N; j++)
        ok = nmlx_session_create(m, NULL, &ss[j]) == NMLX_OK &&
             nmlx_session_eval(ss[j], r.prompt, r.n - 2 * (size_t)j, 0) == NMLX_OK;
    EXPECT(ok, "%s: batch setup: %s", name, nmlx_last_error());
    double worst = 0;
    for (int t = 0; ok && t < STEPS; t++) {
        int32_t step[N];
        for (int j = 0; j < N; j++) {
            const float *l = nmlx_session_logits(ss[j]);
            const float *w = want + ((size_t)j * STEPS + t) * V;
            for (size_t v = 0; l && v < V; v++) {
                double d = fabs((double)l[v] - (double)w[v]);
                if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
            }
            step[j] = ids[j][t];
        }
        ok = nmlx_batch_eval(b, ss, step, N) == NMLX_OK;
        EXPECT(ok, "%s: batch step %d: %s", name, t, nmlx_last_error());
    }
    EXPECT(ok && worst == 0, "%s: batched decode vs alone: max |diff| %.3e (bit for bit expected)",
           name, worst);
    printf("%-20s %-36s %.2e\n", name, "batched decode (3) vs alone", worst);
    nmlx_batch_free(b);
    for (int j = 0; j < N; j++)
        nmlx_session_free(ss[j]);
    nmlx_session_free(alone);
    nmlx_model_free(m);
    free(want);
    free(r.prompt);
    free(r.logits);
}

int main(void) {
    test_chunked_cache();
    test_sigmoid_routing();
    const char *src = getenv("NMLX_SOURCE_DIR");
    char root[512];
    snprintf(root, sizeof root, "%s/tests/fixtures", src ? src : ".");
    static const char *const names[] = {"llama4_text", "llama4_mm", "llama4_mm_stacked",
                                        "llama4_text_q4g32"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        test_fixture(root, names[i]);
    test_convert(root);
    test_config_variants(root);
    test_batch(root, "llama4_text");
    test_batch(root, "llama4_mm");
    test_batch(root, "llama4_text_q4g32");
    return test_summary();
}
