/* Quantized test weights for the CUDA tests: a random [D, N] weight packed
 * as `nmlx convert` writes it (host memory), its device twin, and x with a
 * wide dynamic range for the quantized mat-mat tests. */
#ifndef NMLX_TEST_CUDA_QWEIGHT_H
#define NMLX_TEST_CUDA_QWEIGHT_H

#include "compute/backend.h"
#include "compute/quant.h"
#include "harness.h"

#include <math.h>
#include <stdlib.h>

/* Host buffers the tests hold until the end: the CUDA backend keys its
 * prepared copies by host address (as a model's weights stay mapped). */
typedef struct {
    void *p[4096];
    int n;
} test_kept;
static inline test_kept *test_kept_pool(void) {
    static test_kept k;
    return &k;
}
static inline void *test_keep(void *p) {
    test_kept *k = test_kept_pool();
    if (k->n < 4096) k->p[k->n++] = p;
    return p;
}
static inline void test_free_kept(void) {
    test_kept *k = test_kept_pool();
    for (int i = 0; i < k->n; i++)
        free(k->p[i]);
    k->n = 0;
}

/* x [T, N] (malloc'd) with a wide dynamic range: |x| = 10^u, u uniform in
 * [-3, 3], random signs; rows t % tiny_mod == tiny_at all tiny (|x| <=
 * 1e-5), rows t % big_mod == big_at 100x larger. */
static inline float *test_wide_x(int64_t T, int64_t N, int tiny_mod, int tiny_at, int big_mod,
                                 int big_at) {
    float *x = malloc((size_t)(T * N) * sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < N; k++) {
            float v = powf(10.0f, test_randf(-3, 3)) * (test_randf(0, 1) < 0.5f ? -1.0f : 1.0f);
            if (t % tiny_mod == tiny_at)
                v = test_randf(-1e-5f, 1e-5f);
            else if (t % big_mod == big_at)
                v *= 100.0f;
            x[t * N + k] = v;
        }
    return x;
}

/* Host buffers are handed to keep(), which must hold them until the end:
 * the CUDA backend keys its prepared copies by host address. */
static inline nmlx_weight test_qweight(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt,
                                       int64_t D, int64_t N, void *(*keep)(void *)) {
    float *wv = malloc((size_t)(D * N) * sizeof(float));
    for (int64_t i = 0; i < D * N; i++)
        wv[i] = test_randf(-1, 1);
    const int64_t words = nmlx_quant_row_words(N, bits), G = N / gs;
    if (mode == NMLX_QUANT_MXFP4) sdt = NMLX_DT_U8;
    const size_t ss = nmlx_dtype_size(sdt);
    uint32_t *packed = keep(malloc((size_t)(D * words) * 4));
    char *sc = keep(malloc((size_t)(D * G) * ss)), *bi = NULL;
    if (mode == NMLX_QUANT_AFFINE) bi = keep(malloc((size_t)(D * G) * ss));
    for (int64_t r = 0; r < D; r++)
        nmlx_quant_quantize_row(mode, bits, gs, wv + r * N, N, packed + r * words,
                                sc + (size_t)(r * G) * ss, bi ? bi + (size_t)(r * G) * ss : NULL,
                                sdt);
    free(wv);
    nmlx_weight w = {.w = {.dtype = NMLX_DT_U32, .ndim = 2, .shape = {D, words}, .name = "qw"},
                     .scales = {.dtype = sdt, .ndim = 2, .shape = {D, G}, .name = "qs"},
                     .mode = mode,
                     .bits = bits,
                     .group_size = gs,
                     .rows = D,
                     .cols = N};
    w.w.data = packed;
    w.scales.data = sc;
    if (bi)
        w.biases =
            (nmlx_tensor){.dtype = sdt, .ndim = 2, .shape = {D, G}, .data = bi, .name = "qb"};
    return w;
}

/* the device twin of a host quantized weight (prepared parts) */
static inline nmlx_weight test_qweight_device(nmlx_backend *gpu, const nmlx_weight *w) {
    nmlx_weight g = *w;
    const nmlx_tensor *p = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &w->w, &p) == NMLX_OK, "prepare: %s", nmlx_last_error());
    if (p) g.w = *p;
    EXPECT(gpu->ops->prepare_tensor(gpu, &w->scales, &p) == NMLX_OK, "prepare: %s",
           nmlx_last_error());
    if (p) g.scales = *p;
    if (w->mode == NMLX_QUANT_AFFINE) {
        EXPECT(gpu->ops->prepare_tensor(gpu, &w->biases, &p) == NMLX_OK, "prepare: %s",
               nmlx_last_error());
        if (p) g.biases = *p;
    }
    return g;
}

/* rows [r0, r0 + n) of a quantized weight (a fused projection's part) */
static inline nmlx_weight test_qweight_rows(const nmlx_weight *w, int64_t r0, int64_t n) {
    nmlx_weight v = *w;
    const int64_t G = w->cols / w->group_size;
    v.w.data = (char *)w->w.data + (size_t)(r0 * w->w.shape[1]) * 4;
    v.w.shape[0] = n;
    v.scales.data = (char *)w->scales.data + (size_t)(r0 * G) * nmlx_dtype_size(w->scales.dtype);
    v.scales.shape[0] = n;
    if (w->mode == NMLX_QUANT_AFFINE) {
        v.biases.data =
            (char *)w->biases.data + (size_t)(r0 * G) * nmlx_dtype_size(w->biases.dtype);
        v.biases.shape[0] = n;
    }
    v.rows = n;
    return v;
}

#endif
