/* The dense AMX-BF16 prefill's check, shared by test_kernels (real tiles)
 * and test_amx_emulated (tiles emulated, amx_emulate.h): y = x W^T for a
 * bf16 W [D, N] and x [T, N] through `matmat` (nmlx_amx_bf16_matmat's
 * signature), its rows split as nth threads split them (`unaligned`: a
 * range that does not start or end on 16 rows), against x rounded to bf16
 * times the exact W in double: error below 2e-5 (1 + N / 1024) of max|y|,
 * and rows outside the range untouched. `what` names the kernel in the
 * messages. Include after harness.h and compute/cpu/cpu_internal.h. */
#ifndef NMLX_TEST_AMX_BF16_CHECK_H
#define NMLX_TEST_AMX_BF16_CHECK_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

typedef bool (*amx_bf16_matmat_fn)(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                   int64_t d0, int64_t d1);

static void amx_bf16_check(amx_bf16_matmat_fn matmat, const char *what, const uint16_t *W,
                           const float *x, int64_t T, int64_t D, int64_t N, int nth,
                           bool unaligned) {
    float *y = malloc((size_t)(T * D) * sizeof(float));
    for (int64_t i = 0; i < T * D; i++)
        y[i] = 1234.5f; /* sentinel outside [lo, hi) */
    nmlx_weight w = {.w = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, N}, .data = (void *)W},
                     .mode = NMLX_QUANT_NONE,
                     .rows = D,
                     .cols = N};
    const int64_t lo = unaligned ? D / 5 : 0, hi = unaligned ? D - D / 7 : D;
    for (int ith = 0; ith < nth; ith++) {
        int64_t d0, d1;
        cpu_split(hi - lo, ith, nth, unaligned ? 1 : 16, &d0, &d1);
        if (d0 >= d1) continue;
        EXPECT(matmat(&w, x, y, T, lo + d0, lo + d1), "%s refused T=%lld D=%lld N=%lld", what,
               (long long)T, (long long)D, (long long)N);
    }
    double emax = 0, rmax = 0;
    bool untouched = true;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            if (d < lo || d >= hi) {
                untouched &= y[t * D + d] == 1234.5f;
                continue;
            }
            double s = 0;
            for (int64_t n = 0; n < N; n++)
                s += (double)nmlx_bf16_to_f32(W[d * N + n]) *
                     nmlx_bf16_to_f32(nmlx_f32_to_bf16(x[t * N + n]));
            double e = fabs((double)y[t * D + d] - s);
            if (!(e <= emax)) emax = e;
            rmax = fmax(rmax, fabs(s));
        }
    double e = rmax > 0 ? emax / rmax : emax;
    EXPECT(e < 2e-5 * (1 + N / 1024.0) && untouched,
           "%s T=%lld D=%lld N=%lld nth=%d%s: err %.3g, outside rows %s", what, (long long)T,
           (long long)D, (long long)N, nth, unaligned ? " unaligned" : "", e,
           untouched ? "untouched" : "WRITTEN");
    free(y);
}

#endif
