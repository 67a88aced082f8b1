/* The CUDA backend's moe_experts op (src/compute/cuda/cuda_moe.cu) against
 * the generic path on the CPU backend (portable kernels): SwitchGLU
 * (ported/switch_layers.c nmlx_switch_glu_forward) and the score sum of
 * shared/moe.c, on random experts and routings:
 *  - T = 1, 3, 17, 200 tokens; k = 1, 2, 4, 8 slots; E = 4, 32, 128 experts;
 *  - formats: affine 4-bit g64 BF16 scales, 8-bit g32 F16 scales, 3-bit g32
 *    F32 scales, MXFP4 with expert biases and gpt-oss's clipped SwiGLU,
 *    dense BF16 with biases; widths off multiples of 64 where the format
 *    allows (dense: any);
 *  - routings: random (repeated experts within a token, experts never
 *    chosen) and every pair on one expert;
 *  - both forms: the decode form (fused kernels; forced for every T) and
 *    the prefill form (expert-sorted rows; forced), and the default choice
 *    (the decode form up to 64 pairs; beyond, the prefill form for
 *    quantized experts, a cost model for dense ones).
 * The prefill form of quantized experts runs two grouped launches
 * (counted): the few-rows kernel within 2e-4 of the CPU; the tensor-core
 * tile (affine 4/8-bit and MXFP4 at widths of 64s; f16 x, as the dense
 * prefill) within 1e-3, its task rows (32, 64, automatic) and its absence
 * rotated over the cases. Of dense experts it runs the same
 * matmuls and elementwise ops as the generic path on the GPU: it must
 * match that to 1e-6 (bit for bit expected). moe_routed (routing on the
 * GPU) against nmlx_moe_route + the same form (decode up to 64 pairs;
 * 800 to 1,200 pairs: the prefill form, sorted on the device for quantized
 * experts (counted), on the host from the downloaded routing for dense
 * ones), every routing it takes, logits with ties and a -inf: 1e-6; it
 * must decline with the prefill form forced. Prints the worst relative error per format and form.
 * Exits 77 (ctest: skipped) when no GPU is usable. */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cuda/cuda_backend.h"
#include "compute/quant.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "ported/switch_layers.h"
#include "qweight.h"
#include "shared/moe.h"

#include <math.h>
#include <string.h>

static nmlx_backend *cpu, *gpu;

typedef struct {
    const char *name;
    nmlx_quant_mode mode; /* NMLX_QUANT_NONE: dense BF16 */
    int bits, gs;
    nmlx_dtype sdt;
    bool bias, clipped;
    int64_t D, I; /* model width, expert hidden */
} moe_fmt;

static const moe_fmt FMTS[] = {
    {"q4g64 bf16", NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, false, false, 192, 320},
    {"q8g32 f16", NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_F16, false, false, 96, 160},
    {"q3g32 f32", NMLX_QUANT_AFFINE, 3, 32, NMLX_DT_F32, false, false, 160, 96},
    {"mxfp4 bias clipped", NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, true, true, 96, 224},
    {"dense bf16 bias", NMLX_QUANT_NONE, 0, 0, NMLX_DT_BF16, true, false, 100, 70},
    /* an odd width (the down kernel's last row pair half empty), affine
     * experts with biases, 5/6-bit, group 128, the clipped SwiGLU on affine */
    {"dense bf16 odd", NMLX_QUANT_NONE, 0, 0, NMLX_DT_BF16, false, false, 101, 70},
    {"q5g128 f16 bias", NMLX_QUANT_AFFINE, 5, 128, NMLX_DT_F16, true, false, 128, 256},
    {"q6g64 bf16 clipped", NMLX_QUANT_AFFINE, 6, 64, NMLX_DT_BF16, true, true, 192, 128},
    /* widths of 64s: the tensor-core tile for 8-bit and MXFP4 */
    {"q8g128 f32 bias", NMLX_QUANT_AFFINE, 8, 128, NMLX_DT_F32, true, false, 128, 256},
    {"mxfp4 bias clipped 64s", NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, true, true, 192, 128},
};
enum { N_FMTS = sizeof FMTS / sizeof FMTS[0] };

static double worst[N_FMTS][3]; /* decode form, prefill form, prefill vs GPU generic */
static double worst_routed;     /* moe_routed against the host's routing */
static int routed_cases;

/* a [rows, cols] random dense BF16 buffer (host, kept) */
static uint16_t *rand_bf16(int64_t n, float s) {
    uint16_t *p = test_keep(malloc((size_t)n * 2));
    for (int64_t i = 0; i < n; i++)
        p[i] = nmlx_f32_to_bf16(test_randf(-s, s));
    return p;
}

/* One switch linear of E experts [rows, cols] in format f, on the host
 * (h) and its device twin (d): one stacked weight, per-expert views. */
static void make_linear(const moe_fmt *f, int64_t E, int64_t rows, int64_t cols,
                        nmlx_switch_linear *h, nmlx_switch_linear *d) {
    EXPECT(nmlx_switch_linear_init(h, E, cols, rows, f->bias) == NMLX_OK, "init");
    EXPECT(nmlx_switch_linear_init(d, E, cols, rows, f->bias) == NMLX_OK, "init");
    const nmlx_tensor *p = NULL;
    if (f->mode == NMLX_QUANT_NONE) {
        nmlx_tensor t = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {E * rows, cols}, .name = "w"};
        t.data = rand_bf16(E * rows * cols, 2.0f / sqrtf((float)cols));
        EXPECT(gpu->ops->prepare_tensor(gpu, &t, &p) == NMLX_OK, "prepare");
        for (int64_t e = 0; e < E; e++) {
            nmlx_weight w = {.w = t, .mode = NMLX_QUANT_NONE, .rows = rows, .cols = cols};
            w.w.ndim = 2, w.w.shape[0] = rows, w.w.shape[1] = cols;
            w.w.data = (uint16_t *)t.data + e * rows * cols;
            h->w[e] = w;
            w.w.data = (uint16_t *)p->data + e * rows * cols;
            d->w[e] = w;
        }
    } else {
        nmlx_weight w = test_qweight(f->mode, f->bits, f->gs, f->sdt, E * rows, cols, test_keep);
        nmlx_weight gw = test_qweight_device(gpu, &w);
        for (int64_t e = 0; e < E; e++) {
            h->w[e] = test_qweight_rows(&w, e * rows, rows);
            d->w[e] = test_qweight_rows(&gw, e * rows, rows);
        }
    }
    if (f->bias) {
        nmlx_tensor b = {.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {E * rows}, .name = "b"};
        b.data = rand_bf16(E * rows, 0.5f);
        EXPECT(gpu->ops->prepare_tensor(gpu, &b, &p) == NMLX_OK, "prepare bias");
        for (int64_t e = 0; e < E; e++) {
            nmlx_tensor v = b;
            v.shape[0] = rows;
            v.data = (uint16_t *)b.data + e * rows;
            h->bias[e] = v;
            v.data = (uint16_t *)p->data + e * rows;
            d->bias[e] = v;
        }
    }
}

/* out[t] = sum_j scores[t, j] * y[t * k + j] as shared/moe.c sums it */
static void score_sum(const float *y, const float *scores, int64_t T, int64_t k, int64_t D,
                      float *out) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            float o = 0;
            for (int64_t j = 0; j < k; j++) {
                float v = y[(t * k + j) * D + d] * scores[t * k + j];
                o = j == 0 ? v : o + v;
            }
            out[t * D + d] = o;
        }
}

/* the generic path (switch_glu_forward + score sum) on the GPU, by its ops */
static void gpu_generic(const nmlx_switch_glu *g, const float *dx, const int32_t *idx,
                        const float *scores, int64_t T, int64_t k, nmlx_switch_buffers *b,
                        float *dy, float *dout) {
    const int64_t D = g->in;
    nmlx_switch_glu_forward(gpu, g, dx, idx, T, k, b, dy);
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) {
            float *yr = dy + (t * k + j) * D, *o = dout + t * D;
            gpu->ops->scale(gpu, yr, scores[t * k + j], D);
            if (j == 0)
                gpu->ops->copy(gpu, o, yr, (size_t)D * sizeof(float));
            else
                gpu->ops->add(gpu, o, yr, o, D);
        }
}

static double dev_err(const float *dev, const float *ref, size_t n) {
    float *got = malloc(n * sizeof(float));
    gpu->ops->download(gpu, got, dev, n * sizeof(float));
    double e = test_diff_over_max(got, ref, n);
    free(got);
    return e;
}

static void check_case(int fi, const nmlx_switch_glu *hg, const nmlx_switch_glu *dg, int64_t E,
                       int64_t T, int64_t k, bool one_expert) {
    const moe_fmt *f = &FMTS[fi];
    const int64_t D = f->D, I = f->I, P = T * k;
    float *x = test_rand_floats((size_t)(T * D), -2, 2);
    int32_t *idx = malloc((size_t)P * sizeof *idx);
    float *scores = malloc((size_t)P * sizeof *scores);
    for (int64_t t = 0; t < T; t++) {
        double z = 0;
        for (int64_t j = 0; j < k; j++) {
            /* repeats allowed: a token may send two slots to one expert */
            idx[t * k + j] =
                one_expert ? (int32_t)(E - 1) : (int32_t)(test_rand_u64() % (uint64_t)E);
            scores[t * k + j] = expf(test_randf(-2, 2));
            z += scores[t * k + j];
        }
        for (int64_t j = 0; j < k; j++)
            scores[t * k + j] = (float)(scores[t * k + j] / z);
    }
    /* the CPU reference */
    nmlx_switch_buffers cb;
    EXPECT(nmlx_switch_buffers_alloc(&cb, cpu, P, E, D, I) == NMLX_OK, "cpu buffers");
    float *y = malloc((size_t)(P * D) * sizeof(float)), *ref = malloc((size_t)(T * D) * 4);
    nmlx_switch_glu_forward(cpu, hg, x, idx, T, k, &cb, y);
    score_sum(y, scores, T, k, D, ref);
    nmlx_switch_buffers_free(&cb, cpu);
    /* the GPU */
    nmlx_switch_buffers gb;
    EXPECT(nmlx_switch_buffers_alloc(&gb, gpu, P, E, D, I) == NMLX_OK, "gpu buffers");
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    float *dout = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    float *dgen = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    float *dy = gpu->ops->alloc(gpu, (size_t)(P * D) * 4);
    gpu->ops->upload(gpu, dx, x, (size_t)(T * D) * 4);
    /* the most rows one expert gets: dense BF16 matmuls over 64 rows round
     * x to bf16 (cuBLAS, as test_cuda_ops bounds them) */
    int64_t most = 0;
    for (int64_t e = 0; e < E; e++) {
        int64_t n = 0;
        for (int64_t p = 0; p < P; p++)
            n += idx[p] == e;
        most = n > most ? n : most;
    }
    const bool quant = f->mode != NMLX_QUANT_NONE;
    /* decode form: f32 sums, one expert row a warp (the CPU's f32 sums in
     * another order) */
    const double tol_small = 1e-4;
    /* prefill form: the backend's matmuls (one row: int16 x for affine
     * 4/8-bit, 2e-4 a matmul; tensor cores ~1e-5; dense BF16 past 64 rows:
     * x in bf16; 9 to 64 rows: x as bf16 hi + lo, 5e-5 a matmul) */
    const double tol_sorted = quant ? 1e-3 : most > 64 ? 5e-2 : most > 8 ? 3e-4 : 1e-4;
    /* the grouped kernels (quantized experts, prefill form): x as bf16 hi +
     * lo for every row count, f32 sums (~1e-5) */
    const double tol_grouped = 2e-4;
    /* the tensor-core tile: automatic, 64 rows, off, 32 rows, in turn */
    static const int qmm_cfgs[4] = {1, 64, 0, 32};
    static int qmm_turn;
    const int qmm_cfg = qmm_cfgs[qmm_turn++ % 4];
    nmlx_cuda_set_moe_qmm(qmm_cfg);
    const int modes[3] = {3, 2, 1};
    float *poison = malloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < T * D; i++)
        poison[i] = NAN;
    for (int mi = 0; mi < 3; mi++) {
        long s0, o0, s1, o1;
        /* every element of the output must be written by this mode's run */
        gpu->ops->upload(gpu, dout, poison, (size_t)(T * D) * 4);
        nmlx_cuda_moe_stats(&s0, &o0);
        const unsigned long long g0 = nmlx_cuda_moe_rows_launches(),
                                 q0 = nmlx_cuda_moe_qmm_launches();
        nmlx_backend_cuda_set_moe(gpu, modes[mi]);
        bool ran = gpu->ops->moe_experts(gpu, dg, dx, idx, scores, T, k, &gb, dout);
        nmlx_cuda_moe_stats(&s1, &o1);
        const unsigned long long rlaunch = nmlx_cuda_moe_rows_launches() - g0,
                                 qlaunch = nmlx_cuda_moe_qmm_launches() - q0,
                                 glaunch = rlaunch + qlaunch;
        EXPECT(nmlx_backend_cuda_check(gpu) == NMLX_OK, "moe_experts %s: %s", f->name,
               nmlx_last_error());
        EXPECT(ran, "moe_experts %s T=%lld k=%lld E=%lld mode %d declined", f->name, (long long)T,
               (long long)k, (long long)E, modes[mi]);
        const bool small = s1 > s0;
        EXPECT(small != (o1 > o0), "moe_experts ran exactly one form");
        if (modes[mi] == 3) EXPECT(small, "%s: the decode form did not run", f->name);
        if (modes[mi] == 2) EXPECT(!small, "%s: the prefill form did not run", f->name);
        if (modes[mi] == 1 && P <= 64)
            EXPECT(small, "%s: the default form for %lld pairs", f->name, (long long)P);
        /* the prefill form of quantized experts: one grouped launch for
         * gate and up, one for down; per-expert matmuls for dense ones */
        EXPECT(glaunch == (small || !quant ? 0u : 2u), "%s %s form: %llu grouped launches", f->name,
               small ? "decode" : "prefill", glaunch);
        /* the tile takes 4/8-bit and MXFP4 at widths of 64s, unless off */
        const bool tile = quant && !small && qmm_cfg && (f->bits == 4 || f->bits == 8) &&
                          D % 64 == 0 && I % 64 == 0 && f->gs <= 128 && D % f->gs == 0 &&
                          I % f->gs == 0;
        EXPECT(qlaunch == (tile ? 2u : 0u), "%s %s form, tile setting %d: %llu tile launches",
               f->name, small ? "decode" : "prefill", qmm_cfg, qlaunch);
        if (modes[mi] == 1 && P > 64 && quant)
            EXPECT(!small, "%s: the default form for %lld pairs", f->name, (long long)P);
        double e = dev_err(dout, ref, (size_t)(T * D));
        double tol = small ? tol_small : qlaunch ? tol_sorted : glaunch ? tol_grouped : tol_sorted;
        EXPECT(e <= tol, "moe_experts %s %s form T=%lld k=%lld E=%lld%s: rel err %.2e > %.0e",
               f->name, small ? "decode" : "prefill", (long long)T, (long long)k, (long long)E,
               one_expert ? " one expert" : "", e, tol);
        int w = small ? 0 : 1;
        if (e > worst[fi][w]) worst[fi][w] = e;
        if (modes[mi] == 2) {
            /* dense experts: the prefill form runs the generic path's ops
             * on the GPU (the same bits); quantized: the grouped kernels,
             * within both paths' errors */
            float *gen = malloc((size_t)(T * D) * 4);
            gpu_generic(dg, dx, idx, scores, T, k, &gb, dy, dgen);
            gpu->ops->download(gpu, gen, dgen, (size_t)(T * D) * 4);
            double eg = dev_err(dout, gen, (size_t)(T * D));
            const double tg = glaunch ? tol_sorted : 1e-6;
            EXPECT(eg <= tg,
                   "moe_experts %s prefill form vs GPU generic T=%lld k=%lld: %.2e > %.0e", f->name,
                   (long long)T, (long long)k, eg, tg);
            if (eg > worst[fi][2]) worst[fi][2] = eg;
            free(gen);
        }
    }
    free(poison);
    nmlx_backend_cuda_set_moe(gpu, 1);
    nmlx_cuda_set_moe_qmm(-1);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dout), gpu->ops->free(gpu, dgen);
    gpu->ops->free(gpu, dy);
    nmlx_switch_buffers_free(&gb, gpu);
    free(x), free(idx), free(scores), free(y), free(ref);
}

/* moe_routed (the routing on the GPU) against the host's routing
 * (nmlx_moe_route) and moe_experts' decode form: the same output to
 * rounding of exp (1e-6 of max|out|). Logits on a coarse grid (ties), a
 * -inf among them; every routing the op takes. Then where it must decline:
 * the prefill form forced, more pairs than the decode form takes. */
static void check_routed(int fi, const nmlx_switch_glu *dg, int64_t E, int64_t T, int64_t k) {
    const moe_fmt *f = &FMTS[fi];
    const int64_t D = f->D, P = T * k;
    float *x = test_rand_floats((size_t)(T * D), -2, 2);
    float *logits = malloc((size_t)(T * E) * sizeof *logits);
    for (int64_t i = 0; i < T * E; i++) /* steps of 0.25: ties among the top k */
        logits[i] = roundf(test_randf(-3, 3) * 4.0f) / 4.0f;
    logits[test_rand_u64() % (uint64_t)(T * E)] = -INFINITY;
    int32_t *idx = malloc((size_t)P * sizeof *idx);
    float *scores = malloc((size_t)P * sizeof *scores);
    nmlx_switch_buffers gb;
    EXPECT(nmlx_switch_buffers_alloc(&gb, gpu, P > 65 ? P : 65, E, D, f->I) == NMLX_OK,
           "gpu buffers");
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    float *dl = gpu->ops->alloc(gpu, (size_t)(T * E) * 4);
    float *dref = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    float *dout = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    gpu->ops->upload(gpu, dx, x, (size_t)(T * D) * 4);
    gpu->ops->upload(gpu, dl, logits, (size_t)(T * E) * 4);
    float *ref = malloc((size_t)(T * D) * 4), *got = malloc((size_t)(T * D) * 4);
    const struct {
        int routing;
        bool norm;
    } rs[3] = {{NMLX_MOE_SOFTMAX_TOPK, true},
               {NMLX_MOE_SOFTMAX_TOPK, false},
               {NMLX_MOE_TOPK_SOFTMAX, false}};
    for (int r = 0; r < 3; r++) {
        nmlx_moe_shape sh = {
            .n_experts = E, .top_k = k, .routing = rs[r].routing, .norm_topk = rs[r].norm};
        nmlx_moe_route(&sh, logits, T, idx, scores);
        /* the default choice of form, as the routed op makes it */
        nmlx_backend_cuda_set_moe(gpu, 1);
        EXPECT(gpu->ops->moe_experts(gpu, dg, dx, idx, scores, T, k, &gb, dref), "host routed");
        const long c0 = nmlx_cuda_moe_routed_calls(), d0 = nmlx_cuda_moe_devsort_calls();
        const bool ran =
            gpu->ops->moe_routed(gpu, dg, dx, dl, rs[r].routing, rs[r].norm, T, k, &gb, dout);
        EXPECT(ran && nmlx_cuda_moe_routed_calls() == c0 + 1,
               "moe_routed %s T=%lld k=%lld E=%lld routing %d declined", f->name, (long long)T,
               (long long)k, (long long)E, rs[r].routing);
        /* past the decode form's pairs, quantized experts (grouped kernels)
         * are sorted on the device; dense ones on the host */
        const long want =
            P > 64 && f->mode != NMLX_QUANT_NONE && nmlx_cuda_moe_sorts_on_device() ? 1 : 0;
        EXPECT(nmlx_cuda_moe_devsort_calls() - d0 == want,
               "moe_routed %s T=%lld k=%lld: %ld device sorts, %ld expected", f->name, (long long)T,
               (long long)k, nmlx_cuda_moe_devsort_calls() - d0, want);
        EXPECT(nmlx_backend_cuda_check(gpu) == NMLX_OK, "moe_routed: %s", nmlx_last_error());
        gpu->ops->download(gpu, ref, dref, (size_t)(T * D) * 4);
        gpu->ops->download(gpu, got, dout, (size_t)(T * D) * 4);
        const double e = test_diff_over_max(got, ref, (size_t)(T * D));
        EXPECT(e <= 1e-6,
               "moe_routed %s T=%lld k=%lld E=%lld routing %d norm %d: %.2e vs host routing",
               f->name, (long long)T, (long long)k, (long long)E, rs[r].routing, rs[r].norm, e);
        if (e > worst_routed) worst_routed = e;
        routed_cases++;
    }
    /* declines: the prefill form forced; past the decode form's pairs */
    nmlx_backend_cuda_set_moe(gpu, 2);
    EXPECT(!gpu->ops->moe_routed(gpu, dg, dx, dl, 1, true, T, k, &gb, dout),
           "moe_routed ran with the prefill form forced");
    nmlx_backend_cuda_set_moe(gpu, 1);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dl), gpu->ops->free(gpu, dref);
    gpu->ops->free(gpu, dout);
    nmlx_switch_buffers_free(&gb, gpu);
    free(x), free(logits), free(idx), free(scores), free(ref), free(got);
}

static void check_format(int fi, int64_t E) {
    const moe_fmt *f = &FMTS[fi];
    nmlx_switch_glu hg = {.act = f->clipped ? NMLX_SWITCH_SWIGLU_CLIPPED : NMLX_SWITCH_SWIGLU,
                          .alpha = 1.702f,
                          .limit = 7.0f,
                          .in = f->D,
                          .hidden = f->I};
    nmlx_switch_glu dg = hg;
    make_linear(f, E, f->I, f->D, &hg.gate, &dg.gate);
    make_linear(f, E, f->I, f->D, &hg.up, &dg.up);
    make_linear(f, E, f->D, f->I, &hg.down, &dg.down);
    const int64_t Ts[] = {1, 3, 17, 200}, ks[] = {1, 2, 4, 8};
    for (int ti = 0; ti < 4; ti++)
        for (int ki = 0; ki < 4; ki++) /* k = 8 of 4 experts: repeats certain */
            check_case(fi, &hg, &dg, E, Ts[ti], ks[ki], false);
    check_case(fi, &hg, &dg, E, 17, 8, true); /* every pair on one expert */
    check_case(fi, &hg, &dg, E, 1, 4, true);
    /* 100 x 8, 300 x 4, 520 x 2: prefill chunks (routed and, for quantized
     * experts, sorted on the GPU; 1024 pairs a pass of the sort) */
    const int64_t rT[7] = {1, 1, 3, 8, 100, 300, 520}, rk[7] = {1, 4, 8, 8, 8, 4, 2};
    for (int i = 0; i < 7; i++)
        if (rk[i] <= E) check_routed(fi, &dg, E, rT[i], rk[i]);
    nmlx_switch_linear *ls[] = {&hg.gate, &hg.up, &hg.down, &dg.gate, &dg.up, &dg.down};
    for (int i = 0; i < 6; i++)
        nmlx_switch_linear_free(ls[i]);
}

int main(void) {
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    EXPECT(gpu->ops->moe_experts != NULL, "the CUDA backend has moe_experts");
    if (!gpu->ops->moe_experts) return test_summary(); /* NMLX_FUSED=0 */
    /* the scalar reference kernels (SIMD ones use polynomial exp) */
    EXPECT(nmlx_backend_cpu_create_isa(2, "portable", &cpu) == NMLX_OK, "cpu backend");
    EXPECT(cpu->ops->moe_experts == NULL, "the CPU backend runs the generic path");
    test_seed(20261205);
    const int64_t Es[] = {4, 32, 128};
    for (int fi = 0; fi < N_FMTS; fi++)
        for (int ei = 0; ei < 3; ei++)
            check_format(fi, Es[ei]);
    for (int fi = 0; fi < N_FMTS; fi++)
        printf("%-20s worst rel err: decode form %.2e, prefill form %.2e, prefill vs GPU "
               "generic %.2e\n",
               FMTS[fi].name, worst[fi][0], worst[fi][1], worst[fi][2]);
    printf("moe_routed: %d cases, worst rel err against the host's routing %.2e\n", routed_cases,
           worst_routed);
    nmlx_backend_free(gpu);
    nmlx_backend_free(cpu);
    test_free_kept();
    return test_summary();
}
