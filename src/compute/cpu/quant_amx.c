/* AMX-BF16 prefill for quantized weights (MLX affine 2/3/4/5/6/8-bit, MXFP4,
 * group 32/64/128; docs/quantization.md): y[T, D] = x[T, N] W[D, N]^T over
 * rows [d0, d1), W dequantized on the fly, one 32-row x 256-column panel
 * at a time (never the whole matrix), into the k-pair layout of
 * matmul_amx.c, and multiplied by amx_tile.h's tile kernel. Runs where
 * matmul_amx.c's probe allows AMX and the one-time pick in
 * quant_bf16_avx512.c finds it faster than the int16 / f32 prefill
 * (NMLX_AMX_QUANT; NMLX_AMX=0 turns every AMX kernel off).
 *
 * Precision, by `terms`:
 * - 3 (the default): x and the dequantized W (computed in f32) each written
 *   as a sum of two bf16, x = xh + xl, W = wh + wl (RNE; |x - xh - xl| <=
 *   2^-16 |x|), and x W taken as xh wh + xh wl + xl wh: per product at most
 *   about 3 x 2^-16 of |x w| from the f32 product (xl wl, <= 2^-16, and the
 *   splits' remainders), bf16 products exact in f32, f32 sums: closer to
 *   f32 than the int16 prefill (kernel error rms 3.5e-6 against 6.3e-5,
 *   bench/amx_quant_acc.c), which the quantized fixtures' argmax clause
 *   needs: bf16 x alone flips two (docs/quantization.md). Three tile
 *   products per 32 columns.
 * - 2 (opt-in, NMLX_AMX_QUANT=2): x as hi + lo, W rounded to bf16 (2^-8:
 *   a fixed perturbation of the weights, x kept to 2^-16); two products.
 * - 1 (opt-in, NMLX_AMX_QUANT=bf16): x and W rounded to bf16 once, as MLX
 *   does (2^-8 each); one tile product.
 * Blocking: x split per block of 512 tokens x 256 columns (token rows
 * zero padded to a multiple of 32); each 32-row panel (hi and lo, 16 KiB
 * each) dequantized once per x block and used by all its tokens. Buffers
 * per call (each worker thread its own). */
#define _GNU_SOURCE
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_avx512.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#ifdef NMLX_AMX_EMULATE /* tests/test_amx_quant_emulated.c: tile ops in C */
#include "amx_emulate.h"
#define QAMX_USABLE() true
#else
#define QAMX_USABLE() nmlx_amx_ok()
#endif
#include "compute/cpu/amx_tile.h"

enum {
    QK = 256,         /* columns per block: a multiple of every group size */
    QXS = QK + 32,    /* row stride of the bf16 x blocks (elements) */
    QTB = 512,        /* tokens per x block */
    QR = 32,          /* W rows per panel (two B tiles) */
    QPG = QK / 2 * 16 /* 32-bit pairs per 16-row half panel */
};

bool nmlx_amx_quant_ok(const nmlx_weight *w) {
    const int gs = w->group_size;
    if (w->w.dtype != NMLX_DT_U32 || w->cols < 32 || w->cols % 32 || w->rows < 1) return false;
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && gs == 32;
    return w->mode == NMLX_QUANT_AFFINE && w->bits >= 2 && w->bits <= 8 && w->bits != 7 &&
           (gs == 32 || gs == 64 || gs == 128);
}

/* 16 floats rounded to bf16; *rest = v - that value (exact in f32) */
static inline __m256i split16(__m512 v, __m512 *rest) {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    *rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    return h;
}

/* xh[t * QXS + k] = bf16 x[t, k0 + k] (and xl the bf16 remainder, where
 * not NULL) for t < mt, k < nk (a multiple of 32); zeros for mt <= t < mtp */
static void fill_x(const float *x, int64_t N, int64_t mt, int64_t mtp, int64_t k0, int64_t nk,
                   uint16_t *xh, uint16_t *xl) {
    for (int64_t t = 0; t < mtp; t++) {
        uint16_t *h = xh + t * QXS, *l = xl ? xl + t * QXS : NULL;
        if (t >= mt) {
            memset(h, 0, (size_t)nk * sizeof *h);
            if (l) memset(l, 0, (size_t)nk * sizeof *l);
            continue;
        }
        const float *src = x + t * N + k0;
        for (int64_t k = 0; k < nk; k += 16) {
            __m512 rest;
            _mm256_storeu_si256((__m256i *)(void *)(h + k),
                                split16(_mm512_loadu_ps(src + k), &rest));
            if (l)
                _mm256_storeu_si256((__m256i *)(void *)(l + k), (__m256i)_mm512_cvtneps_pbh(rest));
        }
    }
}

/* ph[g * QPG + kp * 16 + r] = bf16 pair of W[r0 + 16 g + r, k0 + 2 kp .. +1]
 * (pl, where not NULL: the pair of the remainders), zero for rows >= nr;
 * nk a multiple of 32 (and of the group size). */
static void fill_w(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, __m512 lut,
                   uint32_t *ph, uint32_t *pl) {
    float row[QK] __attribute__((aligned(64)));
    uint16_t rh[16 * QK] __attribute__((aligned(64))), rl[16 * QK] __attribute__((aligned(64)));
    const bool fast = fast_weight(w);
    for (int g = 0; g < 2; g++) {
        for (int r = 0; r < 16; r++) {
            uint16_t *h = rh + r * QK, *l = rl + r * QK;
            if (16 * g + r >= nr) {
                memset(h, 0, (size_t)nk * sizeof *h);
                if (pl) memset(l, 0, (size_t)nk * sizeof *l);
                continue;
            }
            if (fast)
                dequant_seg(w, r0 + 16 * g + r, k0, nk, lut, row);
            else
                nmlx_avx2_quant_row(w, r0 + 16 * g + r, k0, nk, row);
            for (int64_t k = 0; k < nk; k += 16) {
                __m512 rest;
                _mm256_store_si256((__m256i *)(void *)(h + k),
                                   split16(_mm512_load_ps(row + k), &rest));
                if (pl)
                    _mm256_store_si256((__m256i *)(void *)(l + k),
                                       (__m256i)_mm512_cvtneps_pbh(rest));
            }
#ifdef NMLX_AMX_QUANT_BREAK   /* tests only: a packing bug the tests must catch */
#if NMLX_AMX_QUANT_BREAK == 1 /* the two halves of each k-pair swapped */
            for (int64_t k = 0; k < nk; k += 2) {
                const uint16_t v = h[k];
                h[k] = h[k + 1], h[k + 1] = v;
            }
#elif NMLX_AMX_QUANT_BREAK == 2 /* the remainder of W dropped */
            if (pl) memset(l, 0, (size_t)nk * sizeof *l);
#endif
#endif
        }
        for (int64_t kp = 0; kp < nk / 2; kp += 16) {
            transpose16((const float *)(const void *)(rh + 2 * kp), QK / 2,
                        (float *)(void *)(ph + g * QPG + kp * 16), 16);
            if (pl)
                transpose16((const float *)(const void *)(rl + 2 * kp), QK / 2,
                            (float *)(void *)(pl + g * QPG + kp * 16), 16);
        }
    }
}

bool nmlx_amx_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1, int terms) {
    if (!QAMX_USABLE() || !nmlx_amx_quant_ok(w) || terms < 1 || terms > 3 || T < 1 || d0 < 0 ||
        d1 > w->rows || d0 >= d1)
        return false;
    const int64_t N = w->cols, D = w->rows;
    const bool x2 = terms >= 2, w2 = terms == 3; /* x, W as hi + lo */
    const size_t xbytes = (size_t)QTB * QXS * 2, pbytes = (size_t)2 * QPG * 4;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, (x2 ? 2 : 1) * xbytes + (w2 ? 2 : 1) * pbytes)) return false;
    uint16_t *xh = mem, *xl = x2 ? (uint16_t *)(void *)((char *)mem + xbytes) : NULL;
    uint32_t *ph = (uint32_t *)(void *)((char *)mem + (x2 ? 2 : 1) * xbytes);
    uint32_t *pl = w2 ? ph + 2 * QPG : NULL;
    float lut_f[16];
    for (unsigned c = 0; c < 16; c++)
        lut_f[c] = w->mode == NMLX_QUANT_MXFP4 ? nmlx_fp4_value(c) : (float)c;
    const __m512 lut = _mm512_loadu_ps(lut_f);

    amx_tiles_config();
    for (int64_t tb = 0; tb < T; tb += QTB) {
        const int64_t mt = T - tb < QTB ? T - tb : QTB, mtp = (mt + 31) / 32 * 32;
        for (int64_t kb = 0; kb < N; kb += QK) {
            const int64_t nk = N - kb < QK ? N - kb : QK;
            fill_x(x + tb * N, N, mt, mtp, kb, nk, xh, xl);
            for (int64_t db = d0; db < d1; db += QR) {
                const int nr = d1 - db < QR ? (int)(d1 - db) : QR;
                if (db + QR < d1) /* the next panel, or the next column block's first */
                    quant_prefetch_panel(w, db + QR, db + 2 * QR < d1 ? db + 2 * QR : d1, kb, nk);
                else if (kb + QK < N)
                    quant_prefetch_panel(w, d0, d0 + QR < d1 ? d0 + QR : d1, kb + QK,
                                         N - kb - QK < QK ? N - kb - QK : QK);
                fill_w(w, db, nr, kb, nk, lut, ph, pl);
                for (int64_t t = 0; t < mtp; t += 32) {
                    const uint16_t *ah = xh + t * QXS, *al = xl ? xl + t * QXS : NULL;
                    float *yb = y + (tb + t) * D + db;
                    if (terms == 3) { /* xh wl, xh wh, xl wh */
                        const amx_terms op = {{ah, ah, al}, {pl, ph, ph}, QXS, QPG};
                        amx_block(3, &op, nk, yb, D, mt - t, nr, kb == 0);
                    } else if (terms == 2) { /* xh wh, xl wh */
                        const amx_terms op = {{ah, al}, {ph, ph}, QXS, QPG};
                        amx_block(2, &op, nk, yb, D, mt - t, nr, kb == 0);
                    } else {
                        const amx_terms op = {{ah}, {ph}, QXS, QPG};
                        amx_block(1, &op, nk, yb, D, mt - t, nr, kb == 0);
                    }
                }
            }
        }
    }
    _tile_release();
    free(mem);
    return true;
}
