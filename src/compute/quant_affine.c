/* The MLX-affine row quantizer: portable kernel, kernel choice, row and
 * multi-row drivers (see quant_affine.h). */
#include "compute/quant_affine.h"

#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

enum { MAX_GS = 128, GROUP_BLOCK = 64 };

/* src group -> f32, in bulk (bf16: a shift; f16: exact conversion) */
static void widen(nmlx_dtype xdt, const void *src, int n, float *dst) {
    if (xdt == NMLX_DT_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (xdt == NMLX_DT_BF16) {
        const uint16_t *s = src;
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            memcpy(dst + i, &u, 4);
        }
    } else {
        const uint16_t *s = src;
        for (int i = 0; i < n; i++)
            dst[i] = nmlx_f16_to_f32(s[i]);
    }
}

void nmlx_qaffine_portable(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng,
                           uint8_t *packed, float *scale, float *bias) {
    const float nbins = (float)((1 << bits) - 1);
    const size_t es = nmlx_dtype_size(xdt);
    float w[MAX_GS];
    uint8_t codes[MAX_GS];
    for (int64_t g = 0; g < ng; g++) {
        widen(xdt, (const char *)src + (size_t)(g * gs) * es, gs, w);
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < gs; j++) {
            if (w[j] > hi) hi = w[j];
            if (w[j] < lo) lo = w[j];
        }
        float s, b;
        nmlx_qaffine_params(lo, hi, bits, &s, &b);
        for (int j = 0; j < gs; j++) {
            float q = rintf((w[j] - b) / s);
            q = fminf(fmaxf(q, 0.0f), nbins);
            codes[j] = (uint8_t)q;
        }
        nmlx_qaffine_pack_any(codes, gs, bits, packed + (size_t)(g * gs * bits / 8));
        scale[g] = s;
        bias[g] = b;
    }
}

#if defined(__x86_64__)
static int cpu_level(void) { /* 0 portable, 1 avx2 (+fma, f16c), 2 avx512 f/bw/vl/dq */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 29) & 1u)) return 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return 2;
    return 1;
}
#else
static int cpu_level(void) { return 0; }
#endif

static nmlx_qaffine_fn kernel_at(int level) {
#if defined(__x86_64__)
    if (level >= 2) return nmlx_qaffine_avx512;
    if (level == 1) return nmlx_qaffine_avx2;
#endif
    (void)level;
    return nmlx_qaffine_portable;
}

nmlx_qaffine_fn nmlx_qaffine_kernel(const char *isa) {
    static _Atomic(nmlx_qaffine_fn) best;
    if (isa) {
        int want = !strcmp(isa, "portable") ? 0
                   : !strcmp(isa, "avx2")   ? 1
                   : !strcmp(isa, "avx512") ? 2
                                            : -1;
        return want >= 0 && want <= cpu_level() ? kernel_at(want) : NULL;
    }
    nmlx_qaffine_fn k = atomic_load_explicit(&best, memory_order_acquire);
    if (!k) { /* racing first calls pick the same kernel */
        int level = cpu_level();
        const char *env = getenv("NMLX_CPU");
        if (env && !strcmp(env, "portable")) level = 0;
        if (env && !strcmp(env, "avx2") && level > 1) level = 1;
        k = kernel_at(level);
        atomic_store_explicit(&best, k, memory_order_release);
    }
    return k;
}

static void store(nmlx_dtype dt, void *p, size_t i, float v) {
    if (dt == NMLX_DT_F16)
        ((uint16_t *)p)[i] = nmlx_f32_to_f16(v);
    else if (dt == NMLX_DT_BF16)
        ((uint16_t *)p)[i] = nmlx_f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

void nmlx_qaffine_row(nmlx_qaffine_fn k, int bits, int gs, nmlx_dtype xdt, const void *src,
                      int64_t cols, uint32_t *packed, void *scales, void *biases, nmlx_dtype sdt) {
    if (!k) k = nmlx_qaffine_kernel(NULL);
    const size_t es = nmlx_dtype_size(xdt);
    const int64_t ng = cols / gs;
    float s[GROUP_BLOCK], b[GROUP_BLOCK];
    for (int64_t g0 = 0; g0 < ng; g0 += GROUP_BLOCK) {
        int64_t n = ng - g0 < GROUP_BLOCK ? ng - g0 : GROUP_BLOCK;
        k(bits, gs, xdt, (const char *)src + (size_t)(g0 * gs) * es, n,
          (uint8_t *)packed + (size_t)(g0 * gs * bits / 8), s, b);
        for (int64_t g = 0; g < n; g++) {
            store(sdt, scales, (size_t)(g0 + g), s[g]);
            store(sdt, biases, (size_t)(g0 + g), b[g]);
        }
    }
}

typedef struct rows_job {
    nmlx_qaffine_fn k;
    int bits, gs;
    nmlx_dtype xdt, sdt;
    const void *src;
    int64_t rows, cols;
    uint32_t *packed;
    void *scales, *biases;
} rows_job;

static void rows_range(const rows_job *j, int64_t r0, int64_t r1) {
    const size_t es = nmlx_dtype_size(j->xdt), ses = nmlx_dtype_size(j->sdt);
    const int64_t words = j->cols * j->bits / 32, groups = j->cols / j->gs;
    for (int64_t r = r0; r < r1; r++)
        nmlx_qaffine_row(j->k, j->bits, j->gs, j->xdt,
                         (const char *)j->src + (size_t)(r * j->cols) * es, j->cols,
                         j->packed + r * words, (char *)j->scales + (size_t)(r * groups) * ses,
                         (char *)j->biases + (size_t)(r * groups) * ses, j->sdt);
}

static void rows_task(void *ctx, int ith, int nth) {
    const rows_job *j = ctx;
    rows_range(j, j->rows * ith / nth, j->rows * (ith + 1) / nth);
}

void nmlx_qaffine_rows(nmlx_pool *pool, nmlx_qaffine_fn k, int bits, int gs, nmlx_dtype xdt,
                       const void *src, int64_t rows, int64_t cols, uint32_t *packed, void *scales,
                       void *biases, nmlx_dtype sdt) {
    rows_job j = {k ? k : nmlx_qaffine_kernel(NULL),
                  bits,
                  gs,
                  xdt,
                  sdt,
                  src,
                  rows,
                  cols,
                  packed,
                  scales,
                  biases};
    int nth = pool ? nmlx_pool_size(pool) : 1;
    if (nth > rows) nth = (int)rows;
    if (nth <= 1)
        rows_range(&j, 0, rows);
    else
        nmlx_pool_run_n(pool, rows_task, &j, nth);
}
