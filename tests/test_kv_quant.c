/* Quantized KV cache (ported/quantized_kv_cache + shared/layer_cache wiring
 * + session kv_bits):
 *  1. the cache: growth as mlx-lm's update_and_fetch (sizes computed here
 *     from its rule), contents across growth points and trims, dequantized
 *     values within one quantization step of the originals and equal to an
 *     independent unpacking of the stored codes, to_quantized, overflow and
 *     bad parameters, allocation failures;
 *  2. the layer cache: full precision (bit-exact) until quantized_kv_start
 *     tokens are held, quantized after;
 *  3. the fixtures: logits with kv_bits 8 and 4 against the full-precision
 *     cache (same model, same ids): prints max |diff| / max |logit| and
 *     argmax agreement per fixture; 8-bit must keep every greedy id of the
 *     float32 fixtures. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"
#include "ported/quantized_kv_cache.h"
#include "shared/layer_cache.h"

#include <dirent.h>
#include <jansson.h>
#include <string.h>

enum { KVH = 3, HD = 64, N_GREEDY = 16 };

static void fill_random(float *x, size_t n, float amp) {
    for (size_t i = 0; i < n; i++)
        x[i] = test_randf(-amp, amp);
}

/* Independent unpacking: element k of a row is bits [k*b, k*b+b) of the
 * row's little-endian bit stream (docs/quantization.md). */
static unsigned code_at(const uint32_t *row, int64_t k, int bits) {
    uint64_t bit = (uint64_t)k * (uint64_t)bits, w = bit / 32, sh = bit % 32;
    uint64_t v = row[w];
    if (sh + (uint64_t)bits > 32) v |= (uint64_t)row[w + 1] << 32;
    return (unsigned)((v >> sh) & ((1u << bits) - 1u));
}

/* Checks position t of head h against the original row x[HD]: the stored
 * codes decode to the dequantized row, and that row is within one step of x
 * per group. Returns the worst |error| / step. */
static double check_row(const nmlx_quantized_kv_cache *c, const uint32_t *codes,
                        const float *scales, const float *biases, const float *deq, const float *x,
                        int64_t h, int64_t t, bool *ok) {
    size_t r = (size_t)(h * c->capacity + t);
    const uint32_t *row = codes + r * (size_t)c->words;
    int gs = c->group_size, nb = (1 << c->bits) - 1;
    double worst = 0;
    for (int64_t g = 0; g < c->groups; g++) {
        float lo = x[g * gs], hi = lo;
        for (int j = 0; j < gs; j++) {
            lo = fminf(lo, x[g * gs + j]);
            hi = fmaxf(hi, x[g * gs + j]);
        }
        double step = (hi - lo) / nb;
        float s = scales[r * (size_t)c->groups + (size_t)g];
        float b = biases[r * (size_t)c->groups + (size_t)g];
        for (int j = 0; j < gs; j++) {
            int64_t k = g * gs + j;
            float want = s * (float)code_at(row, k, c->bits) + b;
            if (deq[k] != want) *ok = false;
            double e = fabs((double)deq[k] - (double)x[k]) / step;
            if (e > worst) worst = e;
        }
    }
    return worst;
}

/* Every held position of both buffers against the originals ref[KVH, *, HD]
 * (keys) and ref_v (same layout, row stride HD, position stride KVH*HD). */
static void check_contents(const nmlx_quantized_kv_cache *c, const float *ref_k, const float *ref_v,
                           const char *what) {
    size_t n = (size_t)(KVH * c->capacity * HD);
    float *dk = malloc(n * sizeof(float)), *dv = malloc(n * sizeof(float));
    if (!dk || !dv) abort();
    nmlx_quantized_kv_cache_dequant(c, dk, dv, c->capacity);
    bool ok = true;
    double worst = 0;
    for (int64_t h = 0; h < KVH; h++)
        for (int64_t t = 0; t < c->offset; t++) {
            size_t o = (size_t)((h * c->capacity + t) * HD), src = (size_t)((t * KVH + h) * HD);
            double e =
                check_row(c, c->k_codes, c->k_scales, c->k_biases, dk + o, ref_k + src, h, t, &ok);
            if (e > worst) worst = e;
            e = check_row(c, c->v_codes, c->v_scales, c->v_biases, dv + o, ref_v + src, h, t, &ok);
            if (e > worst) worst = e;
        }
    EXPECT(ok, "%s: dequantized values differ from the stored codes", what);
    /* MLX's affine rounding is within half a step, plus the edge snap */
    EXPECT(worst <= 1.0, "%s (%d-bit): worst error %.3f quantization steps", what, c->bits, worst);
    free(dk);
    free(dv);
}

/* mlx-lm QuantizedKVCache.update_and_fetch: the capacity after adding n */
static int64_t mlx_capacity(int64_t cap, int64_t prev, int64_t n) {
    if (cap > 0 && prev + n <= cap) return cap;
    int64_t keep = cap == 0 ? 0 : (prev % 256 ? prev : cap);
    return keep + (256 + n - 1) / 256 * 256;
}

static void test_cache(int bits) {
    nmlx_kv_quant_params p = {.bits = bits, .group_size = 32, .start = 0};
    EXPECT(nmlx_kv_quant_check(&p, HD) == NMLX_OK, "params: %s", nmlx_last_error());
    const int64_t MAX = 2000;
    nmlx_quantized_kv_cache c;
    nmlx_quantized_kv_cache_init(&c, KVH, HD, &p, MAX);
    size_t row = (size_t)KVH * HD;
    float *k = malloc((size_t)MAX * row * sizeof(float)),
          *v = malloc((size_t)MAX * row * sizeof(float));
    if (!k || !v) abort();
    fill_random(k, (size_t)MAX * row, 3.0f);
    fill_random(v, (size_t)MAX * row, 0.5f);
    /* appends crossing the growth points, a trim to a step multiple and one
     * not, overwriting the trimmed positions with new values */
    const int64_t steps[][2] = {{100, 0}, {200, 0}, {56, 0}, {1, 0},   {0, 101}, {3, 0},
                                {0, 2},   {300, 0}, {1, 0},  {0, 458}, {400, 0}, {1, 0}};
    int64_t cap = 0;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        int64_t n = steps[i][0];
        if (n) {
            int64_t want = mlx_capacity(cap, c.offset, n);
            EXPECT(nmlx_quantized_kv_cache_reserve(&c, n) == NMLX_OK, "reserve: %s",
                   nmlx_last_error());
            EXPECT(c.capacity == want, "step %zu: capacity %lld, mlx-lm rule gives %lld", i,
                   (long long)c.capacity, (long long)want);
            cap = c.capacity;
            /* fresh values for the positions being (re)written */
            fill_random(k + (size_t)c.offset * row, (size_t)n * row, 3.0f);
            fill_random(v + (size_t)c.offset * row, (size_t)n * row, 0.5f);
            nmlx_quantized_kv_cache_append(&c, k + (size_t)c.offset * row,
                                           v + (size_t)c.offset * row, n);
        } else {
            int64_t before = c.offset;
            EXPECT(nmlx_quantized_kv_cache_trim(&c, steps[i][1]) == steps[i][1], "trim");
            EXPECT(c.offset == before - steps[i][1] && c.capacity == cap, "trim moves offset only");
        }
        char what[64];
        snprintf(what, sizeof what, "after step %zu (offset %lld)", i, (long long)c.offset);
        check_contents(&c, k, v, what);
    }
    int64_t held = c.offset;
    EXPECT(nmlx_quantized_kv_cache_trim(&c, 1 << 20) == held, "trim clamps");
    EXPECT(c.offset == 0, "trim past the start empties");
    /* overflow */
    EXPECT(nmlx_quantized_kv_cache_reserve(&c, MAX + 1) == NMLX_ERR_CONTEXT_OVERFLOW,
           "overflow is an error");
    /* bytes per token: codes + f32 scale and bias per group */
    size_t want = 2 * KVH * ((size_t)HD * bits / 8 + 2 * (HD / 32) * 4);
    EXPECT(nmlx_quantized_kv_bytes_per_token(&c) == want, "bytes per token %zu, want %zu",
           nmlx_quantized_kv_bytes_per_token(&c), want);
    nmlx_quantized_kv_cache_free(&c);

    /* allocation failure while growing keeps the held tokens */
    nmlx_quantized_kv_cache_init(&c, KVH, HD, &p, MAX);
    EXPECT(nmlx_quantized_kv_cache_reserve(&c, 10) == NMLX_OK, "reserve");
    nmlx_quantized_kv_cache_append(&c, k, v, 10);
    for (long nth = 1; nth <= 6; nth++) {
        nmlx_test_fail_alloc_after(nth);
        nmlx_status st = nmlx_quantized_kv_cache_reserve(&c, 300);
        nmlx_test_fail_alloc_after(0);
        EXPECT(st == NMLX_ERR_NOMEM && c.offset == 10 && c.capacity == 256,
               "allocation %ld failing: status %d", nth, st);
    }
    check_contents(&c, k, v, "after failed growth");
    nmlx_quantized_kv_cache_free(&c);
    free(k);
    free(v);
}

static void test_params(void) {
    nmlx_kv_quant_params p = {.bits = 8, .group_size = 64, .start = 0};
    EXPECT(nmlx_kv_quant_check(&p, 128) == NMLX_OK, "8-bit g64 hd128");
    p.bits = 7;
    EXPECT(nmlx_kv_quant_check(&p, 128) == NMLX_ERR_INVALID_ARG, "7 bits rejected");
    p.bits = 4;
    p.group_size = 48;
    EXPECT(nmlx_kv_quant_check(&p, 96) == NMLX_ERR_INVALID_ARG, "group 48 rejected");
    p.group_size = 64;
    EXPECT(nmlx_kv_quant_check(&p, 96) == NMLX_ERR_UNSUPPORTED &&
               strstr(nmlx_last_error(), "head_dim 96"),
           "group 64 vs head_dim 96: %s", nmlx_last_error());
    p.group_size = 8;
    p.bits = 4;
    EXPECT(nmlx_kv_quant_check(&p, 12) == NMLX_ERR_UNSUPPORTED, "12 x 4 bits is not whole words");
    p.start = -1;
    p.group_size = 32;
    EXPECT(nmlx_kv_quant_check(&p, 64) == NMLX_ERR_INVALID_ARG, "negative start");
}

/* to_quantized of a full-precision cache, and the layer cache's start. */
static void test_layer_cache(nmlx_backend *be) {
    const int64_t MAXC = 600, START = 300;
    nmlx_layer_cache lc;
    nmlx_kv_dequant deq = {0};
    EXPECT(nmlx_layer_cache_init(&lc, be, KVH, HD, 0, 256, MAXC) == NMLX_OK, "init");
    nmlx_kv_quant_params p = {.bits = 8, .group_size = 64, .start = START};
    EXPECT(nmlx_layer_cache_set_quant(&lc, &p, &deq) == NMLX_OK, "set_quant");
    size_t row = (size_t)KVH * HD;
    float *k = malloc((size_t)MAXC * row * sizeof(float)),
          *v = malloc((size_t)MAXC * row * sizeof(float));
    if (!k || !v) abort();
    fill_random(k, (size_t)MAXC * row, 2.0f);
    fill_random(v, (size_t)MAXC * row, 2.0f);
    const int64_t calls[] = {200, 150, 1, 1};
    int64_t off = 0;
    for (size_t i = 0; i < 4; i++) {
        int64_t T = calls[i];
        bool before = off >= START; /* converted at this call's reserve */
        EXPECT(nmlx_layer_cache_reserve(&lc, be, T) == NMLX_OK, "reserve: %s", nmlx_last_error());
        EXPECT(lc.quantized == before, "call %zu at %lld tokens: quantized %d", i, (long long)off,
               lc.quantized);
        nmlx_kv_view view;
        nmlx_layer_cache_update(&lc, be, k + off * (int64_t)row, v + off * (int64_t)row, T, &view);
        EXPECT(view.n_kv == off + T && view.q_row == off, "view rows");
        off += T;
        double worst = 0;
        for (int64_t h = 0; h < KVH; h++)
            for (int64_t t = 0; t < off; t++)
                for (int64_t d = 0; d < HD; d++) {
                    double e =
                        fabs(view.keys[(h * view.cap + t) * HD + d] - k[(t * KVH + h) * HD + d]);
                    e += fabs(view.values[(h * view.cap + t) * HD + d] - v[(t * KVH + h) * HD + d]);
                    if (e > worst) worst = e;
                }
        if (!lc.quantized)
            EXPECT(worst == 0, "call %zu: full precision before the start (%g)", i, worst);
        else /* 8-bit, range 4: a step is 4/255 */
            EXPECT(worst > 0 && worst <= 2 * 4.0 / 255, "call %zu: 8-bit error %g", i, worst);
    }
    EXPECT(nmlx_layer_cache_offset(&lc) == off && lc.q.offset == off, "offset");
    EXPECT(nmlx_layer_cache_bytes(&lc) ==
               (size_t)lc.q.capacity * nmlx_quantized_kv_bytes_per_token(&lc.q),
           "bytes");
    EXPECT(nmlx_layer_cache_trim(&lc, 2) == 2 && nmlx_layer_cache_offset(&lc) == off - 2, "trim");
    EXPECT(nmlx_layer_cache_reserve(&lc, be, MAXC) == NMLX_ERR_CONTEXT_OVERFLOW, "overflow");
    nmlx_layer_cache_free(&lc, be);
    nmlx_kv_dequant_free(&deq, be);

    /* a rotating layer ignores kv_bits */
    EXPECT(nmlx_layer_cache_init(&lc, be, KVH, HD, 8, 16, MAXC) == NMLX_OK, "rotating init");
    p.start = 0;
    EXPECT(nmlx_layer_cache_set_quant(&lc, &p, &deq) == NMLX_OK && lc.qp.bits == 0,
           "rotating stays full precision");
    nmlx_layer_cache_free(&lc, be);
    free(k);
    free(v);
}

/* ---- fixtures ---------------------------------------------------------- */

typedef struct run {
    float *rows; /* [n_prompt + N_GREEDY, V]: prompt rows then decode rows */
    int32_t ids[N_GREEDY];
    int group;
} run;

/* Prompt in one call, then N_GREEDY decode steps fed with `force` (or the
 * run's own argmax when NULL). kv_bits 0 = full precision. Returns false if
 * the session cannot be made (group sizes tried 64, 32, 16, 8). */
static bool run_model(nmlx_model *m, const int32_t *prompt, size_t np, int bits, int start,
                      const int32_t *force, run *r) {
    int32_t V = nmlx_model_vocab_size(m);
    nmlx_session *s = NULL;
    static const int groups[] = {64, 32, 16, 8};
    for (int gi = 0; gi < 4 && !s; gi++) {
        nmlx_session_params sp = nmlx_session_default_params();
        sp.kv_bits = bits;
        sp.kv_group_size = groups[gi];
        sp.quantized_kv_start = start;
        sp.kv_dtype = "f32"; /* the reference: a full-precision cache */
        r->group = groups[gi];
        if (nmlx_session_create(m, &sp, &s) != NMLX_OK) s = NULL;
        if (!bits) break;
    }
    if (!s) return false;
    r->rows = malloc((np + N_GREEDY) * (size_t)V * sizeof(float));
    if (!r->rows) abort();
    nmlx_status st = nmlx_session_eval(s, prompt, np, 1);
    EXPECT(st == NMLX_OK, "eval: %s", nmlx_last_error());
    size_t n = 0;
    const float *all = nmlx_session_all_logits(s, &n);
    if (st == NMLX_OK && all && n == np) memcpy(r->rows, all, np * (size_t)V * sizeof(float));
    for (int i = 0; i < N_GREEDY && st == NMLX_OK; i++) {
        const float *last = nmlx_session_logits(s);
        r->ids[i] = test_argmax(last, V);
        int32_t next = force ? force[i] : r->ids[i];
        st = nmlx_session_eval(s, &next, 1, 0);
        EXPECT(st == NMLX_OK, "decode: %s", nmlx_last_error());
        if (st == NMLX_OK)
            memcpy(r->rows + (np + (size_t)i) * V, nmlx_session_logits(s),
                   (size_t)V * sizeof(float));
    }
    nmlx_session_free(s);
    return true;
}

static bool load_ids(json_t *a, int32_t **ids, size_t *n) {
    if (!json_is_array(a) || !json_array_size(a)) return false;
    *n = json_array_size(a);
    *ids = malloc(*n * sizeof **ids);
    if (!*ids) abort();
    for (size_t i = 0; i < *n; i++)
        (*ids)[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return true;
}

static void check_fixture(const char *dir, const char *name) {
    char path[4608];
    snprintf(path, sizeof path, "%s/%s/expected.json", dir, name);
    json_t *root = json_load_file(path, 0, NULL);
    if (!root) return;
    int32_t *prompt = NULL;
    size_t np = 0;
    const char *dtype = json_string_value(json_object_get(root, "dtype"));
    bool f32 = dtype && !strcmp(dtype, "float32");
    if (!load_ids(json_object_get(root, "prompt_ids"), &prompt, &np)) {
        json_decref(root);
        return;
    }
    json_decref(root);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    EXPECT(nmlx_model_load(path, &mp, &m) == NMLX_OK, "%s: %s", name, nmlx_last_error());
    if (!m) {
        free(prompt);
        return;
    }
    int32_t V = nmlx_model_vocab_size(m);
    run ref = {0};
    run_model(m, prompt, np, 0, 0, NULL, &ref);
    size_t rows = np + N_GREEDY;
    for (int bits = 8; bits >= 4; bits -= 4) {
        run q = {0};
        if (!run_model(m, prompt, np, bits, 0, ref.ids, &q)) {
            printf("  %-26s %d-bit: no group size fits this head_dim (skipped)\n", name, bits);
            continue;
        }
        double md = 0, mr = 0;
        size_t agree = 0, greedy_same = 0;
        double flip_margin = 0; /* largest f32-cache top-2 margin among flipped rows */
        for (size_t t = 0; t < rows; t++) {
            const float *a = ref.rows + t * V, *b = q.rows + t * V;
            for (int32_t j = 0; j < V; j++) {
                md = fmax(md, fabs((double)a[j] - b[j]));
                mr = fmax(mr, fabs((double)a[j]));
            }
            int32_t ia = test_argmax(a, V), ib = test_argmax(b, V);
            agree += ia == ib;
            if (ia != ib) flip_margin = fmax(flip_margin, (double)a[ia] - a[ib]);
        }
        for (int i = 0; i < N_GREEDY; i++)
            greedy_same += q.ids[i] == ref.ids[i];
        printf("  %-26s %d-bit g%-3d max|diff|/max|logit| %.2e  argmax %zu/%zu  greedy %zu/%d",
               name, bits, q.group, md / mr, agree, rows, greedy_same, N_GREEDY);
        if (agree < rows) printf("  (flipped rows: f32 top-2 margin <= %.2e)", flip_margin / mr);
        printf("\n");
        if (bits == 8) {
            EXPECT(md / mr <= 0.05, "%s 8-bit: relative logit error %.3g", name, md / mr);
            /* every greedy id kept, except at a near-tie of the f32 cache:
             * a top-2 margin below twice the measured logit error */
            if (f32)
                EXPECT(greedy_same == N_GREEDY || flip_margin <= 2 * md,
                       "%s 8-bit: greedy ids differ from the f32 cache (margin %.3g, error %.3g)",
                       name, flip_margin, md);
        } else {
            EXPECT(md / mr <= 0.5, "%s 4-bit: relative logit error %.3g", name, md / mr);
        }
        free(q.rows);
    }
    /* quantized_kv_start = prompt length: the prompt runs in full precision */
    run late = {0};
    if (run_model(m, prompt, np, 8, (int)np, ref.ids, &late)) {
        EXPECT(!memcmp(late.rows, ref.rows, np * (size_t)V * sizeof(float)),
               "%s: prompt logits changed before quantized_kv_start", name);
        free(late.rows);
    }
    free(ref.rows);
    nmlx_model_free(m);
    free(prompt);
}

static void test_fixtures(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures", test_src_dir());
    DIR *d = opendir(dir);
    EXPECT(d != NULL, "no %s", dir);
    if (!d) return;
    char *names[128];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 128)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    printf("kv cache quantization vs the f32 cache (prompt rows + %d decode rows):\n", N_GREEDY);
    for (size_t i = 0; i < n; i++) {
        check_fixture(dir, names[i]);
        free(names[i]);
    }
}

/* Session-level parameter errors. */
static void test_session_params(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/fixtures/qwen3", test_src_dir());
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    if (nmlx_model_load(path, &mp, &m) != NMLX_OK) return;
    nmlx_session_params sp = nmlx_session_default_params();
    EXPECT(sp.kv_bits == 0 && sp.kv_group_size == 64 && sp.quantized_kv_start == 0, "defaults");
    nmlx_session *s = NULL;
    sp.kv_bits = 7;
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_ERR_INVALID_ARG && !s, "kv_bits 7");
    sp.kv_bits = 4; /* qwen3 fixture: head_dim 16 */
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_ERR_UNSUPPORTED && !s &&
               strstr(nmlx_last_error(), "head_dim 16"),
           "group 64 vs head_dim 16: %s", nmlx_last_error());
    sp.kv_group_size = 16;
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_OK && s, "group 16: %s", nmlx_last_error());
    nmlx_session_free(s);
    nmlx_model_free(m);
}

int main(int argc, char **argv) {
    (void)argv;
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create(1, &be) != NMLX_OK) return 1;
    test_params();
    for (int bits = 2; bits <= 8; bits++)
        if (bits != 7) test_cache(bits);
    test_layer_cache(be);
    nmlx_backend_free(be);
    test_session_params();
    if (argc < 2 || strcmp(argv[1], "--no-fixtures")) test_fixtures();
    return test_summary();
}
