/* The SIMD MLX-affine quantizer (src/compute/quant_affine.h) against the
 * scalar reference nmlx_quant_quantize_row_ref: packed codes, scales and
 * biases must be byte-identical (memcmp) for every kernel this CPU runs
 * (portable, avx2, avx512), bits 2/3/4/5/6/8 x group 32/64/128 x scale
 * dtype F32/F16/BF16 x source dtype F32/F16/BF16, odd group counts (1, 3, 7,
 * 65: past the driver's 64-group block), rows of random values, constants,
 * zeros (both signs), huge and tiny magnitudes, subnormals, inf/NaN entries
 * and raw random bit patterns; then multi-row quantization over a thread
 * pool (1 and 3 threads) and the public nmlx_quant_quantize_row (which also
 * takes the KV cache's groups of 8/16, through the reference). */
#include "common.h"
#include "compute/quant.h"
#include "compute/quant_affine.h"
#include "compute/threadpool.h"
#include "harness.h"

#include <float.h>
#include <string.h>

enum { N_KINDS = 12 };
static const char *const kind_names[N_KINDS] = {
    "uniform", "normal+outlier", "constant+", "constant-", "zeros",       "signed zeros",
    "huge",    "tiny",           "subnormal", "inf/nan",   "random bits", "one nonzero"};

static float one_value(int kind, int64_t i, int64_t n) {
    switch (kind) {
    case 0: return test_randf(-1.0f, 1.0f);
    case 1: {
        float v = test_randf(-1, 1) + test_randf(-1, 1) + test_randf(-1, 1);
        return i % 37 == 5 ? v * 40.0f : v * 0.02f;
    }
    case 2: return 0.3125f;
    case 3: return -1.7f;
    case 4: return 0.0f;
    case 5: return (test_rand_u64() & 1) ? -0.0f : 0.0f;
    case 6: return test_randf(-1, 1) * 3.0e38f;
    case 7: return test_randf(-1, 1) * 1.0e-30f;
    case 8: return test_randf(-1, 1) * FLT_MIN; /* f32 subnormals */
    case 9: {
        uint64_t r = test_rand_u64() % 8;
        return r == 0 ? INFINITY : r == 1 ? -INFINITY : r == 2 ? NAN : test_randf(-2, 2);
    }
    case 11: return i == n / 2 ? -0.75f : 0.0f;
    default: return 0.0f;
    }
}

/* A row of n source values in dtype xdt (kind 10: raw random bits). */
static void fill(int kind, nmlx_dtype xdt, void *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint64_t r = test_rand_u64();
        if (kind == 10) {
            if (xdt == NMLX_DT_F32)
                ((uint32_t *)dst)[i] = (uint32_t)(r >> 17);
            else
                ((uint16_t *)dst)[i] = (uint16_t)(r >> 23);
            continue;
        }
        float v = one_value(kind, i, n);
        if (xdt == NMLX_DT_F32)
            ((float *)dst)[i] = v;
        else if (xdt == NMLX_DT_F16)
            ((uint16_t *)dst)[i] = nmlx_f32_to_f16(v);
        else
            ((uint16_t *)dst)[i] = nmlx_f32_to_bf16(v);
    }
}

typedef struct bufs {
    void *src;
    float *f32;
    uint32_t *q[2];
    char *s[2], *b[2];
} bufs;

static const nmlx_dtype dts[3] = {NMLX_DT_F32, NMLX_DT_F16, NMLX_DT_BF16};
static const int all_bits[6] = {2, 3, 4, 5, 6, 8}, all_gs[3] = {32, 64, 128};

/* The reference on rows [0, rows): widen the row as the old loader did
 * (nmlx_to_f32), then the scalar quantizer. */
static void reference(const bufs *B, int bits, int gs, nmlx_dtype xdt, nmlx_dtype sdt, int64_t rows,
                      int64_t cols) {
    size_t es = nmlx_dtype_size(xdt), ses = nmlx_dtype_size(sdt);
    int64_t words = nmlx_quant_row_words(cols, bits), groups = cols / gs;
    for (int64_t r = 0; r < rows; r++) {
        nmlx_to_f32(xdt, (const char *)B->src + (size_t)(r * cols) * es, B->f32, (size_t)cols);
        nmlx_quant_quantize_row_ref(NMLX_QUANT_AFFINE, bits, gs, B->f32, cols, B->q[0] + r * words,
                                    B->s[0] + (size_t)(r * groups) * ses,
                                    B->b[0] + (size_t)(r * groups) * ses, sdt);
    }
}

static int same(const bufs *B, int bits, int gs, nmlx_dtype sdt, int64_t rows, int64_t cols) {
    size_t qb = (size_t)(rows * nmlx_quant_row_words(cols, bits)) * 4;
    size_t sb = (size_t)(rows * (cols / gs)) * nmlx_dtype_size(sdt);
    return !memcmp(B->q[0], B->q[1], qb) && !memcmp(B->s[0], B->s[1], sb) &&
           !memcmp(B->b[0], B->b[1], sb);
}

static void clear_out(bufs *B, size_t qb, size_t sb) {
    for (int k = 0; k < 2; k++) { /* different garbage: every byte must be written */
        memset(B->q[k], k ? 0xA5 : 0x5A, qb);
        memset(B->s[k], k ? 0xA5 : 0x5A, sb);
        memset(B->b[k], k ? 0xA5 : 0x5A, sb);
    }
}

enum { MAX_ROWS = 37, MAX_COLS = 128 * 65 };

static void test_kernel(const char *isa, nmlx_qaffine_fn k, bufs *B) {
    static const int64_t ngroups[4] = {1, 3, 7, 65};
    int cases = 0, bad = 0;
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int si = 0; si < 3; si++)
                for (int xi = 0; xi < 3; xi++)
                    for (int kind = 0; kind < N_KINDS; kind++)
                        for (int ni = 0; ni < 4; ni++) {
                            int bits = all_bits[bi], gs = all_gs[gi];
                            nmlx_dtype sdt = dts[si], xdt = dts[xi];
                            int64_t cols = gs * ngroups[ni];
                            size_t qb = (size_t)nmlx_quant_row_words(cols, bits) * 4;
                            size_t sb = (size_t)(cols / gs) * nmlx_dtype_size(sdt);
                            clear_out(B, qb, sb);
                            fill(kind, xdt, B->src, cols);
                            reference(B, bits, gs, xdt, sdt, 1, cols);
                            nmlx_qaffine_row(k, bits, gs, xdt, B->src, cols, B->q[1], B->s[1],
                                             B->b[1], sdt);
                            cases++;
                            if (!same(B, bits, gs, sdt, 1, cols) && bad++ < 5)
                                EXPECT(0, "%s: bits %d group %d scales %s source %s %s, %lld cols",
                                       isa, bits, gs, nmlx_dtype_name(sdt), nmlx_dtype_name(xdt),
                                       kind_names[kind], (long long)cols);
                        }
    EXPECT(bad == 0, "%s: %d of %d rows differ from the reference", isa, bad, cases);
    printf("  %-8s %d rows byte-identical to the reference\n", isa, cases - bad);
}

/* rows over a pool of nth threads (1: no pool), mixed kinds per row */
static void test_rows(nmlx_pool *pool, int nth, bufs *B) {
    int bad = 0, cases = 0;
    for (int bi = 0; bi < 6; bi++)
        for (int xi = 0; xi < 3; xi++) {
            int bits = all_bits[bi], gs = all_gs[(bi + xi) % 3];
            nmlx_dtype xdt = dts[xi], sdt = dts[(bi + 2 * xi) % 3];
            int64_t rows = MAX_ROWS - bi, cols = gs * (5 + 2 * xi);
            size_t es = nmlx_dtype_size(xdt);
            for (int64_t r = 0; r < rows; r++)
                fill((int)(r % N_KINDS), xdt, (char *)B->src + (size_t)(r * cols) * es, cols);
            size_t qb = (size_t)(rows * nmlx_quant_row_words(cols, bits)) * 4;
            size_t sb = (size_t)(rows * (cols / gs)) * nmlx_dtype_size(sdt);
            clear_out(B, qb, sb);
            reference(B, bits, gs, xdt, sdt, rows, cols);
            nmlx_qaffine_rows(nth > 1 ? pool : NULL, NULL, bits, gs, xdt, B->src, rows, cols,
                              B->q[1], B->s[1], B->b[1], sdt);
            cases++;
            if (!same(B, bits, gs, sdt, rows, cols)) {
                bad++;
                EXPECT(0, "%d threads: bits %d group %d %s from %s, %lld x %lld differ", nth, bits,
                       gs, nmlx_dtype_name(sdt), nmlx_dtype_name(xdt), (long long)rows,
                       (long long)cols);
            }
        }
    EXPECT(bad == 0, "%d threads: %d of %d matrices differ", nth, bad, cases);
}

/* nmlx_quant_quantize_row (f32 rows; the KV cache's groups of 8 and 16 too) */
static void test_public(bufs *B) {
    static const int gss[5] = {8, 16, 32, 64, 128};
    int bad = 0;
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 5; gi++)
            for (int kind = 0; kind < N_KINDS; kind++) {
                int bits = all_bits[bi], gs = gss[gi];
                int64_t cols = (int64_t)gs * 9;
                size_t qb = (size_t)nmlx_quant_row_words(cols, bits) * 4,
                       sb = (size_t)(cols / gs) * 2;
                clear_out(B, qb, sb);
                fill(kind, NMLX_DT_F32, B->f32, cols);
                nmlx_quant_quantize_row_ref(NMLX_QUANT_AFFINE, bits, gs, B->f32, cols, B->q[0],
                                            B->s[0], B->b[0], NMLX_DT_BF16);
                nmlx_quant_quantize_row(NMLX_QUANT_AFFINE, bits, gs, B->f32, cols, B->q[1], B->s[1],
                                        B->b[1], NMLX_DT_BF16);
                if (!same(B, bits, gs, NMLX_DT_BF16, 1, cols) && bad++ < 5)
                    EXPECT(0, "nmlx_quant_quantize_row: bits %d group %d %s", bits, gs,
                           kind_names[kind]);
            }
    EXPECT(bad == 0, "nmlx_quant_quantize_row: %d rows differ", bad);
}

int main(void) {
    bufs B;
    size_t n = (size_t)MAX_ROWS * MAX_COLS;
    B.src = nmlx_malloc(n * 4);
    B.f32 = nmlx_malloc(n * 4);
    for (int k = 0; k < 2; k++) {
        B.q[k] = nmlx_malloc(n);
        B.s[k] = nmlx_malloc(n / 8);
        B.b[k] = nmlx_malloc(n / 8);
    }
    EXPECT(B.src && B.f32 && B.q[0] && B.q[1] && B.s[0] && B.s[1] && B.b[0] && B.b[1], "alloc");
    test_seed(20261205);
    printf("affine quantizer kernels vs nmlx_quant_quantize_row_ref:\n");
    static const char *const isas[3] = {"portable", "avx2", "avx512"};
    for (int i = 0; i < 3; i++) {
        nmlx_qaffine_fn k = nmlx_qaffine_kernel(isas[i]);
        if (!k) {
            printf("  %-8s not supported by this CPU (skipped)\n", isas[i]);
            continue;
        }
        test_kernel(isas[i], k, &B);
    }
    EXPECT(nmlx_qaffine_kernel("sse9") == NULL, "unknown kernel name");
    EXPECT(nmlx_qaffine_kernel(NULL) != NULL, "a best kernel");
    nmlx_pool *pool = nmlx_pool_create(3);
    EXPECT(pool != NULL, "pool: %s", nmlx_last_error());
    test_rows(NULL, 1, &B);
    if (pool) test_rows(pool, 3, &B);
    nmlx_pool_free(pool);
    test_public(&B);
    nmlx_free(B.src);
    nmlx_free(B.f32);
    for (int k = 0; k < 2; k++)
        nmlx_free(B.q[k]), nmlx_free(B.s[k]), nmlx_free(B.b[k]);
    return test_summary();
}
