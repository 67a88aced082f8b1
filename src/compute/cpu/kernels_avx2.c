/* AVX2+FMA+F16C kernels (all but matmul, which is in matmul_avx2.c).
 * Compiled with -mavx2 -mfma -mf16c; only called after a cpuid check.
 * Activations use the polynomial exp/erf of simd_avx2.h. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"

#include <math.h>

void nmlx_avx2_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1);

static float dot(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        __m256i m = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

static void axpy(float a, const float *x, float *y, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* 8 weights from any float dtype as f32 */
static inline __m256 load8_any(nmlx_dtype dt, const void *p, int64_t i) {
    if (dt == NMLX_DT_BF16) return load8_bf16((const uint16_t *)p + i);
    if (dt == NMLX_DT_F16) return load8_f16((const uint16_t *)p + i);
    return _mm256_loadu_ps((const float *)p + i);
}

static void rmsnorm_row(const float *x, const nmlx_tensor *w, float w_offset, float eps, float *y,
                        int64_t D) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t i = 0;
    for (; i + 16 <= D; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    double ss = hsum8(_mm256_add_ps(s0, s1));
    for (; i < D; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
    __m256 vinv = _mm256_set1_ps(inv), voff = _mm256_set1_ps(w_offset);
    i = 0;
    if (!w) {
        for (; i + 8 <= D; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
        for (; i < D; i++) y[i] = x[i] * inv;
        return;
    }
    nmlx_dtype dt = w->dtype;
    if (dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16) {
        for (; i + 8 <= D; i += 8) {
            __m256 wv = _mm256_add_ps(load8_any(dt, w->data, i), voff);
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), wv));
        }
    }
    for (; i < D; i++) y[i] = x[i] * inv * (nmlx_load_f32(dt, w->data, (size_t)i) + w_offset);
}

/* act(g) for 8 lanes */
static inline __m256 act8(nmlx_act act, __m256 g) {
    const __m256 one = _mm256_set1_ps(1.0f);
    switch (act) {
    case NMLX_ACT_SILU: {
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        return _mm256_div_ps(g, _mm256_add_ps(one, e));
    }
    case NMLX_ACT_GELU_TANH: { /* x / (1 + exp(-2u)) = 0.5 x (1 + tanh u) */
        __m256 g2 = _mm256_mul_ps(g, g);
        __m256 u = _mm256_mul_ps(g, _mm256_fmadd_ps(g2, _mm256_set1_ps(0.044715f), one));
        __m256 e = exp8(_mm256_mul_ps(u, _mm256_set1_ps(-2.0f * 0.7978845608028654f)));
        return _mm256_div_ps(g, _mm256_add_ps(one, e));
    }
    case NMLX_ACT_GELU_ERF: {
        __m256 erf = erf8(_mm256_mul_ps(g, _mm256_set1_ps(0.7071067811865476f)));
        return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), g), _mm256_add_ps(one, erf));
    }
    }
    return g;
}

static void act_mul(nmlx_act act, const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(act8(act, _mm256_loadu_ps(gate + i)),
                                                _mm256_loadu_ps(up + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        __m256 r = _mm256_mul_ps(act8(act, _mm256_maskload_ps(gate + i, m)),
                                 _mm256_maskload_ps(up + i, m));
        _mm256_maskstore_ps(out + i, m, r);
    }
}

static void act_inplace(nmlx_act act, float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, act8(act, _mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(x + i, m, act8(act, _mm256_maskload_ps(x + i, m)));
    }
}

static void add(const float *a, const float *b, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 r0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 r1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        _mm256_storeu_ps(out + i, r0);
        _mm256_storeu_ps(out + i + 8, r1);
    }
    for (; i < n; i++) out[i] = a[i] + b[i];
}

static void scale(float *x, float s, int64_t n) {
    __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++) x[i] *= s;
}

static void softmax_row(float *x, int64_t n, float sink) {
    __m256 vm = _mm256_set1_ps(sink);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float m = hmax8(vm);
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) m = 0;
    __m256 vmax = _mm256_set1_ps(m), vs = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    double sum = hsum8(vs);
    for (; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    if (sink != -INFINITY) sum += expf(sink - m);
    scale(x, sum > 0 ? (float)(1.0 / sum) : 0.0f, n);
}

const cpu_kernels nmlx_cpu_kernels_avx2 = {
    .isa = "avx2",
    .matmul_rows = nmlx_avx2_matmul_rows,
    .dot = dot,
    .axpy = axpy,
    .attn_scores = nmlx_avx2_attn_scores,
    .attn_mix = nmlx_avx2_attn_mix,
    .attn_flash_ok = nmlx_avx2_attn_flash_ok,
    .attn_flash = nmlx_avx2_attn_flash,
    .rmsnorm_row = rmsnorm_row,
    .act_mul = act_mul,
    .act = act_inplace,
    .add = add,
    .scale = scale,
    .softmax_row = softmax_row,
    .matmul_few = nmlx_avx2_matmul_few,
};
