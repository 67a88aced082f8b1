/* Portable C kernels: the reference every SIMD kernel is tested against,
 * and the path on CPUs without AVX2. Accurate to libm precision. */
#include "compute/cpu/cpu_internal.h"
#include "compute/quant.h"

#include <math.h>
#include <string.h>

/* Converts W[d, k0:k0+n] to f32. */
static void load_row(const nmlx_weight *w, int64_t d, int64_t k0, int64_t n, float *dst) {
    if (w->mode != NMLX_QUANT_NONE) { /* the quantized reference: dequantize this segment */
        nmlx_quant_dequant_row(w, d, k0, n, dst);
        return;
    }
    size_t off = (size_t)d * (size_t)w->cols + (size_t)k0;
    size_t es = nmlx_dtype_size(w->w.dtype);
    nmlx_to_f32(w->w.dtype, (const char *)w->w.data + off * es, dst, (size_t)n);
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    /* four partial sums: shorter dependency chains, same accuracy class */
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

enum { RB = 16, KB = 256 }; /* weight block converted to f32 once per block */

/* W (D, N) @ x (T, N)^T -> y (T, D), rows [d0, d1). The weight block
 * [RB rows x KB cols] is converted once and reused for all T tokens. */
static void matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                        int64_t d1) {
    const int64_t N = w->cols, D = w->rows;
    float blk[RB * KB];
    for (int64_t r0 = d0; r0 < d1; r0 += RB) {
        int64_t nr = d1 - r0 < RB ? d1 - r0 : RB;
        for (int64_t k0 = 0; k0 < N; k0 += KB) {
            int64_t nk = N - k0 < KB ? N - k0 : KB;
            for (int64_t r = 0; r < nr; r++) load_row(w, r0 + r, k0, nk, blk + r * KB);
            for (int64_t t = 0; t < T; t++) {
                const float *xt = x + t * N + k0;
                float *yt = y + t * D + r0;
                for (int64_t r = 0; r < nr; r++) {
                    float s = dot_f32(blk + r * KB, xt, nk);
                    yt[r] = k0 == 0 ? s : yt[r] + s;
                }
            }
        }
    }
}

static void axpy(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static float kv_value(nmlx_dtype dt, const void *base, int64_t i) {
    if (dt == NMLX_DT_F16) return nmlx_f16_to_f32(((const uint16_t *)base)[i]);
    if (dt == NMLX_DT_BF16) return nmlx_bf16_to_f32(((const uint16_t *)base)[i]);
    return ((const float *)base)[i];
}

static void attn_scores(nmlx_dtype dt, const float *q, const void *K, int64_t n, int64_t HD,
                        float scale, float *sc) {
    for (int64_t j = 0; j < n; j++) {
        float s0 = 0, s1 = 0; /* two partial sums, as dot_f32 keeps four */
        int64_t d = 0;
        for (; d + 2 <= HD; d += 2) {
            s0 += q[d] * kv_value(dt, K, j * HD + d);
            s1 += q[d + 1] * kv_value(dt, K, j * HD + d + 1);
        }
        for (; d < HD; d++) s0 += q[d] * kv_value(dt, K, j * HD + d);
        sc[j] = (s0 + s1) * scale;
    }
}

static void attn_mix(nmlx_dtype dt, const float *p, const void *V, int64_t n, int64_t HD,
                     float *out) {
    for (int64_t d = 0; d < HD; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < HD; d++) out[d] += p[j] * kv_value(dt, V, j * HD + d);
}

static void rmsnorm_row(const float *x, const nmlx_tensor *w, float w_offset, float eps, float *y,
                        int64_t D) {
    double ss = 0;
    for (int64_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
    if (!w) {
        for (int64_t i = 0; i < D; i++) y[i] = x[i] * inv;
        return;
    }
    for (int64_t i = 0; i < D; i++)
        y[i] = x[i] * inv * (nmlx_load_f32(w->dtype, w->data, (size_t)i) + w_offset);
}

static float act1(nmlx_act act, float x) {
    switch (act) {
    case NMLX_ACT_SILU: return x / (1.0f + expf(-x));
    /* 0.5 x (1 + tanh u) = x / (1 + exp(-2u)) and 0.5 x (1 + erf z) =
     * 0.5 x erfc(-z): same functions, no cancellation for negative x. */
    case NMLX_ACT_GELU_TANH: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        float u = c * (x + 0.044715f * x * x * x);
        return x / (1.0f + expf(-2.0f * u));
    }
    case NMLX_ACT_GELU_ERF: return 0.5f * x * erfcf(x * -0.7071067811865476f);
    }
    return x;
}

static void act_mul(nmlx_act act, const float *gate, const float *up, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = act1(act, gate[i]) * up[i];
}

static void act_inplace(nmlx_act act, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = act1(act, x[i]);
}

static void add(const float *a, const float *b, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void scale(float *x, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

static void softmax_row(float *x, int64_t n, float sink) {
    float m = sink;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) m = 0; /* all -inf: avoid inf - inf */
    double sum = sink == -INFINITY ? 0.0 : (double)expf(sink - m);
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

const cpu_kernels nmlx_cpu_kernels_portable = {
    .isa = "portable",
    .matmul_rows = matmul_rows,
    .dot = dot_f32,
    .axpy = axpy,
    .attn_scores = attn_scores,
    .attn_mix = attn_mix,
    .rmsnorm_row = rmsnorm_row,
    .act_mul = act_mul,
    .act = act_inplace,
    .add = add,
    .scale = scale,
    .softmax_row = softmax_row,
};
