/* The flash prefill attention (attention_avx512.c, cpu_kernels.attn_flash)
 * against the per-query row path (nmlx_cpu_attn_set_path(0), as
 * NMLX_ATTN_BLOCK=0) through the backend's op on the same inputs: odd T,
 * q_pos > 0, n_kv above and below q_pos + T, sliding windows, softcap,
 * sinks, GQA groups 1 / 2 / 4 / 8 (and 3, 16: rows not a multiple of 16),
 * HD 64 / 80 / 128 (and 16, 256), f32 / f16 / bf16 caches, 1 and 2 threads,
 * each output row within 4e-6 of its scale, max over d of sum_j p_j |v_jd|
 * (in double; at least the row's max |out|), of the row path's (the two
 * differ by f32 rounding: sum order, e^x, normalising before or after P V), rows
 * that see nothing exactly zero in both; and the kernel's e^x against libm
 * in ulp. Skipped where no kernel set has the flash kernel. */
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "harness.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t T, H, KVH, HD, q_pos, n_kv, window;
    float softcap;
    int sinks;
    float qmax; /* q uniform in [-qmax, qmax): larger scores, peakier softmax */
} fcase;

static double worst_seen;

static void run_case(nmlx_backend *be, const char *isa, int nth, const fcase *c, nmlx_dtype dt) {
    const int64_t T = c->T, H = c->H, KVH = c->KVH, HD = c->HD;
    const int64_t cap = c->n_kv + 5;
    float *q = test_rand_floats((size_t)(T * H * HD), -c->qmax, c->qmax);
    float *k = test_rand_floats((size_t)(KVH * cap * HD), -1, 1);
    float *v = test_rand_floats((size_t)(KVH * cap * HD), -1, 1);
    uint16_t *k16 = NULL, *v16 = NULL;
    if (dt != NMLX_DT_F32) {
        k16 = malloc((size_t)(KVH * cap * HD) * sizeof(uint16_t));
        v16 = malloc((size_t)(KVH * cap * HD) * sizeof(uint16_t));
        for (int64_t i = 0; i < KVH * cap * HD; i++) {
            k16[i] = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(k[i]) : nmlx_f32_to_f16(k[i]);
            v16[i] = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(v[i]) : nmlx_f32_to_f16(v[i]);
        }
    }
    float *sinks = c->sinks ? test_rand_floats((size_t)H, -2, 2) : NULL;
    float *o_row = test_rand_floats((size_t)(T * H * HD), -9, 9);
    float *o_fl = test_rand_floats((size_t)(T * H * HD), -9, 9);
    float *scratch = calloc((size_t)(nth * (H / KVH) * c->n_kv + 1), sizeof(float));
    nmlx_attn_args a = {.q = q,
                        .k = dt == NMLX_DT_F32 ? k : NULL,
                        .v = dt == NMLX_DT_F32 ? v : NULL,
                        .T = T,
                        .H = H,
                        .KVH = KVH,
                        .HD = HD,
                        .cap = cap,
                        .q_pos = c->q_pos,
                        .n_kv = c->n_kv,
                        .scale = 1.0f / sqrtf((float)HD),
                        .window = c->window,
                        .softcap = c->softcap,
                        .sinks = sinks,
                        .scratch = scratch,
                        .kv_dtype = dt,
                        .k16 = k16,
                        .v16 = v16};
    nmlx_cpu_attn_set_path(0);
    a.out = o_row;
    be->ops->attention(be, &a);
    nmlx_cpu_attn_set_path(3); /* flash wherever it runs, small T too */
    a.out = o_fl;
    be->ops->attention(be, &a);
    nmlx_cpu_attn_set_path(-1);
    /* each row's scale: max_d sum_j p_j |v_jd| in double (the size of the
     * terms summed; a long row's out cancels far below it) */
    double *mag = calloc((size_t)(T * H), sizeof(double));
    double *sj = malloc((size_t)c->n_kv * sizeof(double)),
           *acc = malloc((size_t)HD * sizeof(double));
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t kvh = h / (H / KVH), qi = c->q_pos + t;
            double m = sinks ? sinks[h] : -INFINITY;
            for (int64_t j = 0; j < c->n_kv; j++) {
                sj[j] = -INFINITY;
                if (j > qi || (c->window > 0 && j <= qi - c->window)) continue;
                const float *kr = k + (kvh * cap + j) * HD;
                double d = 0;
                for (int64_t i = 0; i < HD; i++) {
                    const double kv = dt == NMLX_DT_F16 ? nmlx_f16_to_f32(nmlx_f32_to_f16(kr[i]))
                                      : dt == NMLX_DT_BF16
                                          ? nmlx_bf16_to_f32(nmlx_f32_to_bf16(kr[i]))
                                          : kr[i];
                    d += (double)q[(t * H + h) * HD + i] * kv;
                }
                d *= a.scale;
                if (c->softcap > 0) d = tanh(d / c->softcap) * c->softcap;
                sj[j] = d, m = fmax(m, d);
            }
            double den = sinks ? exp(sinks[h] - m) : 0;
            for (int64_t j = 0; j < c->n_kv; j++)
                den += exp(sj[j] - m);
            memset(acc, 0, (size_t)HD * sizeof(double));
            for (int64_t j = 0; j < c->n_kv; j++) {
                const double pj = exp(sj[j] - m) / den;
                if (pj == 0) continue;
                for (int64_t i = 0; i < HD; i++)
                    acc[i] += pj * fabs(v[(kvh * cap + j) * HD + i]);
            }
            for (int64_t i = 0; i < HD; i++)
                mag[t * H + h] = fmax(mag[t * H + h], acc[i]);
        }
    double worst = 0;
    int64_t zero_bad = 0, worst_at = -1;
    for (int64_t r = 0; r < T * H; r++) {
        const float *x = o_row + r * HD, *y = o_fl + r * HD;
        double mx = 0, e = 0;
        int zr = 1;
        for (int64_t d = 0; d < HD; d++) {
            mx = fmax(mx, fabs(x[d]));
            e = fmax(e, fabs((double)x[d] - y[d]));
            zr &= x[d] == 0.0f;
        }
        if (zr) { /* the row path's zero row (nothing visible): zeros too */
            for (int64_t d = 0; d < HD; d++)
                zero_bad += y[d] != 0.0f;
            continue;
        }
        const double rel = e / fmax(mx, mag[r]);
        if (!(rel <= worst)) worst = rel, worst_at = r; /* NaN sticks */
    }
    worst_seen = worst > worst_seen ? worst : worst_seen;
    EXPECT(worst < 4e-6 && zero_bad == 0,
           "flash vs row %s/%d %s T=%lld H=%lld KVH=%lld HD=%lld q_pos=%lld n_kv=%lld win=%lld "
           "cap=%g sinks=%d qmax=%g: worst row %.3g of its scale (row %lld), %lld nonzero in zero "
           "rows",
           isa, nth, nmlx_dtype_name(dt), (long long)T, (long long)H, (long long)KVH, (long long)HD,
           (long long)c->q_pos, (long long)c->n_kv, (long long)c->window, c->softcap, c->sinks,
           c->qmax, worst, (long long)worst_at, (long long)zero_bad);
    free(q), free(k), free(v), free(k16), free(v16), free(sinks), free(o_row), free(o_fl);
    free(scratch), free(mag), free(sj), free(acc);
}

static void test_exp(void) {
    /* every 97th float in [-104, 0] and both ends: ulp of the result against
     * exp in double rounded to float (below FLT_MIN: absolute, in units of
     * the smallest denormal) */
    const int64_t n = 1 << 20;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        x[i] = -104.0f * (float)i / (float)(n - 1) - 1e-9f * (float)(i % 97);
    x[0] = 0.0f, x[1] = -INFINITY, x[2] = -1e30f, x[3] = -1e-30f;
    memcpy(y, x, (size_t)n * sizeof(float));
    nmlx_avx512_exp(y, n);
    double worst = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        const double ref = exp((double)x[i]);
        const float rf = (float)ref;
        double ulp;
        if (rf < FLT_MIN)
            ulp = fabs(y[i] - ref) / 1.401298464324817e-45;
        else
            ulp = fabs(y[i] - ref) / (nextafterf(rf, INFINITY) - rf);
        if (!(ulp <= worst)) worst = ulp, at = i;
    }
    printf("exp16 on [-104, 0]: max error %.3f ulp (at x = %.9g)\n", worst, x[at]);
    EXPECT(worst <= 2.0, "exp16: %.3f ulp at x = %.9g", worst, x[at]);
    EXPECT(y[1] == 0.0f && y[2] == 0.0f && y[0] == 1.0f, "exp16 at -inf / -1e30 / 0: %g %g %g",
           y[1], y[2], y[0]);
    free(x), free(y);
}

int main(void) {
    const fcase cs[] = {
        /* T   H  KVH  HD  q_pos n_kv  win softcap sinks qmax */
        {5, 2, 1, 64, 0, 5, 0, 0, 0, 1},         /* one small block, GQA 2 */
        {33, 16, 8, 128, 0, 33, 0, 0, 0, 1},     /* Qwen3 shape, GQA 2, block tail */
        {67, 32, 8, 64, 0, 67, 0, 0, 0, 2},      /* Llama-3.2-1B shape, GQA 4 */
        {41, 8, 8, 80, 19, 60, 0, 0, 1, 1},      /* MHA (g 1), q_pos > 0, sinks, HD 80 */
        {29, 16, 2, 128, 100, 129, 0, 0, 0, 3},  /* GQA 8, chunked prefill */
        {45, 8, 2, 64, 7, 52, 9, 0, 0, 1},       /* window 9, GQA 4 */
        {37, 4, 4, 128, 50, 87, 1, 0, 1, 1},     /* window 1, sinks */
        {23, 6, 2, 80, 11, 34, 0, 30.0f, 0, 4},  /* GQA 3 (30-row items), softcap */
        {31, 16, 1, 64, 3, 34, 16, 20.0f, 1, 2}, /* GQA 16, window, softcap, sinks */
        {19, 8, 1, 16, 0, 19, 0, 0, 0, 1},       /* HD 16, GQA 8 */
        {13, 4, 2, 256, 40, 53, 0, 0, 1, 1},     /* HD 256 */
        {21, 4, 2, 64, 30, 40, 5, 0, 1, 1},      /* n_kv < q_pos + T: late queries see nothing */
        {9, 4, 1, 128, 0, 9, 0, 0, 0, 8},        /* peaky softmax */
        {130, 16, 8, 128, 0, 130, 0, 0, 0, 1},   /* many blocks, both threads */
        {99, 16, 4, 80, 400, 499, 64, 0, 0, 2},  /* window 64 deep in the cache */
        {6, 4, 1, 128, 8994, 9000, 0, 0, 1, 1},  /* half caches too long to widen per head */
        {7, 4, 2, 64, 8993, 9000, 300, 0, 0, 1}, /* the same, a window: widened per head */
    };
    const nmlx_dtype dts[] = {NMLX_DT_F32, NMLX_DT_F16, NMLX_DT_BF16};
    const char *isas[] = {"avx2", "avx512", "avx512bf16"};
    int ran = 0, ran512 = 0;
    for (int s = 0; s < 3; s++)
        for (int nth = 1; nth <= 2; nth++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cpu_create_isa(nth, isas[s], &be) != NMLX_OK) {
                nmlx_clear_error();
                continue;
            }
            if (!cpu_kernels_of(be)->attn_flash) {
                nmlx_backend_free(be);
                continue;
            }
            ran = 1;
            ran512 |= s > 0;
            test_seed(1234 + (uint64_t)(s * 2 + nth));
            for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
                for (int d = 0; d < 3; d++)
                    run_case(be, isas[s], nth, &cs[i], dts[d]);
            nmlx_backend_free(be);
        }
    if (ran512) test_exp(); /* the AVX-512 kernel's e^x (the avx2 one's is simd_avx2.h's exp8) */
    if (ran) {
        printf("flash attention vs row path: RAN, worst row %.3g of its scale\n", worst_seen);
    } else {
        printf("flash attention: SKIPPED (no AVX-512 kernel set on this CPU)\n");
    }
    return test_summary();
}
