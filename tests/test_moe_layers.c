/* Mixture-of-experts layers against independent references:
 *  - gather-sort (ported/switch_layers.c) groups pairs by expert, stably;
 *  - SwitchGLU (both activations, biases, F32 and BF16 experts, duplicate
 *    experts per token) vs a naive per-pair double-precision loop, on every
 *    kernel set this CPU runs, 1 and 2 threads;
 *  - routing (shared/moe.c) vs a sort-based reference;
 *  - the sanitizer's mlx-lm stacked layout: the qwen3_moe and gpt_oss
 *    fixtures rewritten as `switch_mlp.*` / `experts.*_proj` stacks must
 *    give transformers' logits (float32 tolerance), and an 8-bit stacked
 *    quantized qwen3_moe must give exactly the logits of the same weights
 *    quantized per expert (2-D loader). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/quant.h"
#include "harness.h"
#include "model_util.h"
#include "ckpt_util.h"
#include "io/safetensors.h"
#include "io/safetensors_write.h"
#include "nmlx.h"
#include "ported/switch_layers.h"
#include "shared/moe.h"

#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- gather-sort ------------------------------------------------------ */

static void test_gather_sort(void) {
    const int64_t E = 6, P = 53;
    int32_t idx[53];
    for (int64_t p = 0; p < P; p++)
        idx[p] = (int32_t)(test_rand_u64() % (uint64_t)E);
    idx[0] = 5;
    idx[1] = 5; /* a repeated expert, and expert 4 may stay empty */
    nmlx_switch_buffers b = {.n_experts = E};
    b.order = calloc((size_t)P, sizeof *b.order);
    b.start = calloc((size_t)E + 1, sizeof *b.start);
    nmlx_switch_gather_sort(&b, idx, P);
    bool ok = b.start[0] == 0 && b.start[E] == P;
    for (int64_t e = 0; e < E; e++) {
        int64_t n = 0;
        for (int64_t p = 0; p < P; p++)
            n += idx[p] == e;
        ok = ok && b.start[e + 1] - b.start[e] == n;
        for (int64_t s = b.start[e]; s < b.start[e + 1]; s++) {
            ok = ok && idx[b.order[s]] == e;
            if (s > b.start[e]) ok = ok && b.order[s] > b.order[s - 1]; /* stable */
        }
    }
    EXPECT(ok, "gather_sort groups pairs by expert, stably");
    free(b.order);
    free(b.start);
}

/* ---- SwitchGLU vs naive ------------------------------------------------ */

typedef struct {
    void *w[3];            /* gate, up [E, H, D]; down [E, D, H] */
    float *bias[3];        /* [E, H], [E, H], [E, D] */
    double *ew[3], *eb[3]; /* exact values for the reference */
} rand_experts;

static void fill(nmlx_dtype dt, void *buf, double *exact, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) {
        float f = test_randf(-s, s);
        if (dt == NMLX_DT_F32)
            ((float *)buf)[i] = f;
        else
            ((uint16_t *)buf)[i] = nmlx_f32_to_bf16(f);
        exact[i] = nmlx_load_f32(dt, buf, (size_t)i);
    }
}

static void check_switch_glu(nmlx_backend *be, nmlx_dtype dt, nmlx_switch_act act, bool bias) {
    const int64_t E = 5, D = 20, H = 12, T = 9, k = 3;
    rand_experts r;
    int64_t rows[3] = {H, H, D}, cols[3] = {D, D, H};
    nmlx_switch_glu g = {.act = act, .alpha = 1.702f, .limit = 7.0f, .in = D, .hidden = H};
    nmlx_switch_linear *ls[3] = {&g.gate, &g.up, &g.down};
    for (int m = 0; m < 3; m++) {
        int64_t n = E * rows[m] * cols[m];
        r.w[m] = malloc((size_t)n * nmlx_dtype_size(dt));
        r.ew[m] = malloc((size_t)n * sizeof(double));
        r.bias[m] = malloc((size_t)(E * rows[m]) * sizeof(float));
        r.eb[m] = malloc((size_t)(E * rows[m]) * sizeof(double));
        fill(dt, r.w[m], r.ew[m], n, 2.0f / sqrtf((float)cols[m]) * 2.0f);
        fill(NMLX_DT_F32, r.bias[m], r.eb[m], E * rows[m], bias ? 0.5f : 0.0f);
        nmlx_switch_linear_init(ls[m], E, cols[m], rows[m], bias);
        for (int64_t e = 0; e < E; e++) {
            nmlx_tensor t = {.dtype = dt, .ndim = 2, .shape = {rows[m], cols[m]}};
            t.data = (char *)r.w[m] + (size_t)(e * rows[m] * cols[m]) * nmlx_dtype_size(dt);
            ls[m]->w[e] = (nmlx_weight){.w = t, .rows = rows[m], .cols = cols[m]};
            if (bias)
                ls[m]->bias[e] = (nmlx_tensor){.dtype = NMLX_DT_F32,
                                               .ndim = 1,
                                               .shape = {rows[m]},
                                               .data = r.bias[m] + e * rows[m]};
        }
    }
    float *x = malloc((size_t)(T * D) * sizeof(float)), *y = malloc((size_t)(T * k * D) * 4);
    int32_t idx[27];
    for (int64_t i = 0; i < T * D; i++)
        x[i] = test_randf(-3.0f, 3.0f);
    for (int64_t p = 0; p < T * k; p++)
        idx[p] = (int32_t)(test_rand_u64() % (uint64_t)E);
    idx[3] = idx[4] = idx[5] = 2; /* one token sends all its slots to one expert */
    nmlx_switch_buffers b;
    EXPECT(nmlx_switch_buffers_alloc(&b, be, T * k, E, D, H) == NMLX_OK, "buffers");
    nmlx_switch_glu_forward(be, &g, x, idx, T, k, &b, y);
    double worst = 0;
    for (int64_t p = 0; p < T * k; p++) {
        int64_t e = idx[p];
        const float *xt = x + (p / k) * D;
        double h[12];
        for (int64_t i = 0; i < H; i++) {
            double gs = r.eb[0][e * H + i], us = r.eb[1][e * H + i];
            for (int64_t d = 0; d < D; d++) {
                gs += r.ew[0][(e * H + i) * D + d] * xt[d];
                us += r.ew[1][(e * H + i) * D + d] * xt[d];
            }
            if (act == NMLX_SWITCH_SWIGLU) {
                h[i] = gs / (1.0 + exp(-gs)) * us;
            } else {
                gs = fmin(gs, 7.0);
                us = fmax(-7.0, fmin(us, 7.0));
                h[i] = gs / (1.0 + exp(-1.702 * gs)) * (us + 1.0);
            }
        }
        for (int64_t d = 0; d < D; d++) {
            double o = r.eb[2][e * D + d];
            for (int64_t i = 0; i < H; i++)
                o += r.ew[2][(e * D + d) * H + i] * h[i];
            double err = fabs(y[p * D + d] - o) / (1.0 + fabs(o));
            if (err > worst) worst = err;
        }
    }
    EXPECT(worst < 2e-5, "switch_glu %s act=%d bias=%d isa=%s threads=%d: rel err %g",
           nmlx_dtype_name(dt), (int)act, bias, nmlx_backend_cpu_isa(be), be->n_threads, worst);
    nmlx_switch_buffers_free(&b, be);
    for (int m = 0; m < 3; m++) {
        nmlx_switch_linear_free(ls[m]);
        free(r.w[m]);
        free(r.ew[m]);
        free(r.bias[m]);
        free(r.eb[m]);
    }
    free(x);
    free(y);
}

/* ---- routing ----------------------------------------------------------- */

static void test_route(void) {
    const int64_t E = 7, k = 3, T = 5;
    float logits[35], scores[15];
    int32_t idx[15];
    for (int i = 0; i < 35; i++)
        logits[i] = test_randf(-4.0f, 4.0f);
    for (int mode = 0; mode < 3; mode++) {
        nmlx_moe_shape s = {.n_experts = E,
                            .top_k = k,
                            .routing = mode == 2 ? NMLX_MOE_TOPK_SOFTMAX : NMLX_MOE_SOFTMAX_TOPK,
                            .norm_topk = mode == 1};
        nmlx_moe_route(&s, logits, T, idx, scores);
        double worst = 0;
        bool order_ok = true;
        for (int64_t t = 0; t < T; t++) {
            const float *l = logits + t * E;
            int ref[7];
            for (int e = 0; e < E; e++)
                ref[e] = e;
            for (int a = 0; a < E; a++) /* selection sort, descending */
                for (int c = a + 1; c < E; c++)
                    if (l[ref[c]] > l[ref[a]]) {
                        int tmp = ref[a];
                        ref[a] = ref[c];
                        ref[c] = tmp;
                    }
            double z = 0, zk = 0;
            for (int e = 0; e < E; e++)
                z += exp(l[e]);
            for (int j = 0; j < k; j++)
                zk += exp(l[ref[j]]);
            for (int j = 0; j < k; j++) {
                order_ok = order_ok && idx[t * k + j] == ref[j];
                double want = exp(l[ref[j]]) / (mode == 0 ? z : zk);
                worst = fmax(worst, fabs(scores[t * k + j] - want));
            }
        }
        EXPECT(order_ok && worst < 1e-6, "route mode %d: experts %s, score err %g", mode,
               order_ok ? "ok" : "differ", worst);
    }
}

/* ---- stacked layout on the fixtures ------------------------------------ */

/* Quantizes rows [R, cols] (8-bit affine, group 32, f32 scales) as `name`. */
static void add_quant(ckpt *c, const char *name, int ndim, const int64_t *shape, const float *w) {
    int64_t cols = shape[ndim - 1], R = 1;
    char key[300];
    if (cols % 32) { /* as mlx-lm: widths not a multiple of the group stay float */
        snprintf(key, sizeof key, "%s.weight", name);
        ckpt_add(c, key, NMLX_DT_F32, ndim, shape, w);
        return;
    }
    for (int i = 0; i < ndim - 1; i++)
        R *= shape[i];
    int64_t words = nmlx_quant_row_words(cols, 8), groups = cols / 32;
    uint32_t *q = ckpt_keep(c, (size_t)(R * words) * 4);
    float *sc = ckpt_keep(c, (size_t)(R * groups) * 4),
          *bi = ckpt_keep(c, (size_t)(R * groups) * 4);
    for (int64_t r = 0; r < R; r++)
        nmlx_quant_quantize_row(NMLX_QUANT_AFFINE, 8, 32, w + r * cols, cols, q + r * words,
                                sc + r * groups, bi + r * groups, NMLX_DT_F32);
    int64_t s2[4];
    for (int i = 0; i < ndim; i++)
        s2[i] = shape[i];
    s2[ndim - 1] = words;
    snprintf(key, sizeof key, "%s.weight", name);
    ckpt_add(c, key, NMLX_DT_U32, ndim, s2, q);
    s2[ndim - 1] = groups;
    snprintf(key, sizeof key, "%s.scales", name);
    ckpt_add(c, key, NMLX_DT_F32, ndim, s2, sc);
    snprintf(key, sizeof key, "%s.biases", name);
    ckpt_add(c, key, NMLX_DT_F32, ndim, s2, bi);
}

/* c and src's config.json (quant: with an 8-bit g32 quantization entry) */
static bool write_ckpt(const ckpt *c, const char *src, const char *dir, bool quant) {
    json_t *edit =
        quant ? json_pack("{s:{s:i,s:i}}", "quantization", "group_size", 32, "bits", 8) : NULL;
    bool ok = ckpt_write(c, src, dir, edit);
    json_decref(edit);
    return ok;
}

/* Prompt logits of the model at dir; caller frees. */
static float *run_logits(const char *dir, const char *fixture, size_t *rows, size_t *V) {
    size_t n = 0;
    int32_t *p = test_prompt_ids(fixture, &n);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    float *out = NULL;
    if (nmlx_model_load(dir, &mp, &m) == NMLX_OK && nmlx_session_create(m, NULL, &s) == NMLX_OK &&
        nmlx_session_eval(s, p, n, 1) == NMLX_OK) {
        *V = (size_t)nmlx_model_vocab_size(m);
        const float *all = nmlx_session_all_logits(s, rows);
        out = malloc(*rows * *V * sizeof(float));
        memcpy(out, all, *rows * *V * sizeof(float));
    } else {
        fprintf(stderr, "  %s: %s\n", dir, nmlx_last_error());
    }
    nmlx_session_free(s);
    nmlx_model_free(m);
    free(p);
    return out;
}

/* Rewrites a fixture's experts into mlx-lm's stacked layout (quant: 8-bit). */
static void stack_fixture(const char *fixture, const char *dir, bool quant, bool per_expert_q) {
    nmlx_weights *ws = NULL;
    if (nmlx_weights_open_dir(fixture, &ws) != NMLX_OK) {
        EXPECT(false, "open %s: %s", fixture, nmlx_last_error());
        return;
    }
    ckpt c = {0};
    char name[300];
    for (size_t i = 0; i < nmlx_weights_count(ws); i++) {
        const nmlx_tensor *t = nmlx_weights_at(ws, i);
        int layer, e;
        char proj[64];
        if (sscanf(t->name, "model.layers.%d.mlp.experts.%d.%63[a-z_].weight", &layer, &e, proj) ==
            3) {
            if (per_expert_q) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s", layer, e, proj);
                add_quant(&c, name, 2, t->shape, t->data);
                continue;
            }
            if (e != 0) continue; /* stacked when expert 0 is seen */
            int64_t E = 0;
            for (;; E++) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%lld.%s.weight", layer,
                         (long long)E, proj);
                if (!nmlx_weights_find(ws, name)) break;
            }
            size_t per = nmlx_tensor_nbytes(t);
            float *st = ckpt_keep(&c, per * (size_t)E);
            for (int64_t x = 0; x < E; x++) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%lld.%s.weight", layer,
                         (long long)x, proj);
                memcpy((char *)st + per * (size_t)x, nmlx_weights_find(ws, name)->data, per);
            }
            int64_t shape[3] = {E, t->shape[0], t->shape[1]};
            snprintf(name, sizeof name, "model.layers.%d.mlp.switch_mlp.%s", layer, proj);
            if (quant) {
                add_quant(&c, name, 3, shape, st);
            } else {
                strcat(name, ".weight");
                ckpt_add(&c, name, t->dtype, 3, shape, st);
            }
        } else if (sscanf(t->name, "model.layers.%d.mlp.experts.%63[a-z_]", &layer, proj) == 2) {
            /* gpt-oss: gate_up_proj [E, D, 2I], down_proj [E, I, D], biases */
            const float *src = t->data;
            int64_t E = t->shape[0];
            if (!strcmp(proj, "gate_up_proj")) {
                int64_t D = t->shape[1], I = t->shape[2] / 2, sh[3] = {E, I, D};
                float *g = ckpt_keep(&c, (size_t)(E * I * D) * 4),
                      *u = ckpt_keep(&c, (size_t)(E * I * D) * 4);
                for (int64_t x = 0; x < E; x++)
                    for (int64_t h = 0; h < I; h++)
                        for (int64_t d = 0; d < D; d++) {
                            g[(x * I + h) * D + d] = src[(x * D + d) * 2 * I + 2 * h];
                            u[(x * I + h) * D + d] = src[(x * D + d) * 2 * I + 2 * h + 1];
                        }
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_proj.weight", layer);
                ckpt_add(&c, name, NMLX_DT_F32, 3, sh, g);
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.up_proj.weight", layer);
                ckpt_add(&c, name, NMLX_DT_F32, 3, sh, u);
            } else if (!strcmp(proj, "gate_up_proj_bias")) {
                int64_t I = t->shape[1] / 2, sh[2] = {E, I};
                float *g = ckpt_keep(&c, (size_t)(E * I) * 4),
                      *u = ckpt_keep(&c, (size_t)(E * I) * 4);
                for (int64_t x = 0; x < E * I; x++) {
                    g[x] = src[2 * x];
                    u[x] = src[2 * x + 1];
                }
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_proj.bias", layer);
                ckpt_add(&c, name, NMLX_DT_F32, 2, sh, g);
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.up_proj.bias", layer);
                ckpt_add(&c, name, NMLX_DT_F32, 2, sh, u);
            } else if (!strcmp(proj, "down_proj")) {
                int64_t I = t->shape[1], D = t->shape[2], sh[3] = {E, D, I};
                float *dn = ckpt_keep(&c, (size_t)(E * I * D) * 4);
                for (int64_t x = 0; x < E; x++)
                    for (int64_t h = 0; h < I; h++)
                        for (int64_t d = 0; d < D; d++)
                            dn[(x * D + d) * I + h] = src[(x * I + h) * D + d];
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.down_proj.weight", layer);
                ckpt_add(&c, name, NMLX_DT_F32, 3, sh, dn);
            } else {
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.down_proj.bias", layer);
                ckpt_add(&c, name, t->dtype, t->ndim, t->shape, t->data);
            }
        } else {
            ckpt_add(&c, t->name, t->dtype, t->ndim, t->shape, t->data);
        }
    }
    EXPECT(write_ckpt(&c, fixture, dir, quant || per_expert_q), "write %s", dir);
    ckpt_free(&c);
    nmlx_weights_close(ws);
}

static void test_stacked(const char *src_dir, const char *tmp) {
    char fixture[512], dir[600], path[700];
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/%s", test_src_dir(), src_dir);
    snprintf(dir, sizeof dir, "%s/stacked", tmp);
    stack_fixture(fixture, dir, false, false);
    size_t rows = 0, V = 0;
    float *got = run_logits(dir, fixture, &rows, &V);
    snprintf(path, sizeof path, "%s/logits.bin", fixture);
    float *ref = test_read_floats(path, rows * V);
    double r = got && ref ? test_diff_over_max(got, ref, rows * V) : 1.0;
    printf("  %-20s stacked (mlx-lm layout)  max|diff|/max|ref| = %.3g\n", src_dir, r);
    EXPECT(got && r <= 1e-4, "%s stacked: ratio %g", src_dir, r);
    free(got);
    free(ref);
}

static void test_stacked_quant(const char *src_dir, const char *tmp) {
    char fixture[512], a[600], b[600];
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/%s", test_src_dir(), src_dir);
    snprintf(a, sizeof a, "%s/stacked_q8", tmp);
    snprintf(b, sizeof b, "%s/per_expert_q8", tmp);
    stack_fixture(fixture, a, true, false);
    stack_fixture(fixture, b, false, true);
    size_t ra = 0, rb = 0, V = 0;
    float *la = run_logits(a, fixture, &ra, &V), *lb = run_logits(b, fixture, &rb, &V);
    double r = la && lb && ra == rb ? test_diff_over_max(la, lb, ra * V) : 1.0;
    printf("  %-20s stacked q8 vs per-expert q8  max|diff|/max|ref| = %.3g\n", src_dir, r);
    EXPECT(la && lb && r <= 1e-6, "%s stacked quantized: ratio %g", src_dir, r);
    free(la);
    free(lb);
}

/* Every allocation of loading + running a MoE model failing in turn: a clean
 * error each time, nothing leaked (sanitizer builds), then success. */
static void test_fault_injection(const char *name) {
    const int32_t ids[5] = {1, 2, 3, 4, 5};
    test_fixture_fault_sweep(name, ids, 5);
}

/* A missing expert tensor and an impossible top-k are errors naming them. */
static void test_bad_inputs(const char *tmp) {
    char fixture[512], dir[600], path[1400];
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/qwen3_moe", test_src_dir());
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    nmlx_weights *ws = NULL;
    if (nmlx_weights_open_dir(fixture, &ws) != NMLX_OK) return;
    ckpt c = {0};
    for (size_t i = 0; i < nmlx_weights_count(ws); i++) {
        const nmlx_tensor *t = nmlx_weights_at(ws, i);
        if (strcmp(t->name, "model.layers.1.mlp.experts.3.up_proj.weight") != 0)
            ckpt_add(&c, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    write_ckpt(&c, fixture, dir, false);
    ckpt_free(&c);
    nmlx_weights_close(ws);
    nmlx_model_params mp = nmlx_model_default_params();
    nmlx_model *m = NULL;
    nmlx_status st = nmlx_model_load(dir, &mp, &m);
    EXPECT(st != NMLX_OK &&
               strstr(nmlx_last_error(), "model.layers.1.mlp.experts.3.up_proj.weight"),
           "missing expert: %s", nmlx_last_error());
    nmlx_model_free(m);
    /* top-k larger than the experts */
    snprintf(path, sizeof path, "cp %s/model.safetensors %s/model.safetensors", fixture, dir);
    EXPECT(system(path) == 0, "copy");
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    json_object_set_new(cfg, "num_experts_per_tok", json_integer(9));
    json_dump_file(cfg, path, 0);
    json_decref(cfg);
    m = NULL;
    st = nmlx_model_load(dir, &mp, &m);
    EXPECT(st != NMLX_OK && strstr(nmlx_last_error(), "num_experts_per_tok"), "top-k > experts: %s",
           nmlx_last_error());
    nmlx_model_free(m);
}

int main(void) {
    test_seed(777);
    test_gather_sort();
    test_route();
    const char *isas[] = {"portable", "avx2"};
    for (int a = 0; a < 2; a++)
        for (int nt = 1; nt <= 2; nt++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cpu_create_isa(nt, isas[a], &be) != NMLX_OK) continue;
            check_switch_glu(be, NMLX_DT_F32, NMLX_SWITCH_SWIGLU, false);
            check_switch_glu(be, NMLX_DT_BF16, NMLX_SWITCH_SWIGLU, false);
            check_switch_glu(be, NMLX_DT_F32, NMLX_SWITCH_SWIGLU_CLIPPED, true);
            check_switch_glu(be, NMLX_DT_BF16, NMLX_SWITCH_SWIGLU_CLIPPED, true);
            nmlx_backend_free(be);
        }
    char tmp[] = "/tmp/nmlx_moe_XXXXXX";
    if (!mkdtemp(tmp)) return 1;
    const char *names[] = {"qwen3_moe", "holdout/qwen3_moe", "gpt_oss", "holdout/gpt_oss"};
    for (int i = 0; i < 4; i++)
        test_stacked(names[i], tmp);
    test_stacked_quant("qwen3_moe", tmp);
    test_bad_inputs(tmp);
    test_fault_injection("holdout/qwen3_moe");
    test_fault_injection("gpt_oss");
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return test_summary();
}
