/* The AMX-BF16 tile kernel shared by matmul_amx.c (dense bf16 W) and
 * quant_amx.c (quantized W dequantized into the same panels). Include after
 * <immintrin.h> (or tests/amx_emulate.h) in a file compiled with
 * -mamx-tile -mamx-bf16 -mavx512f/bw.
 *
 * Tiles (palette 1, all 16 rows x 64 bytes): 0-3 accumulate a 32-token x
 * 32-row block of y (C[t][d], loaded from / stored to y where the block is
 * whole, through a scratch tile at the tails); 4-5 hold 16 tokens x 32
 * columns of x in bf16 (A, rows of a token-major copy); 6-7 hold 16 k-pairs
 * x 16 rows of W (B, "VNNI" pair layout: each 32-bit element the pair
 * W[d, k], W[d, k+1]). A product may be a sum of terms, each its own A and
 * B (x and W written as bf16 hi + lo: x_hi W_lo + x_hi W_hi + x_lo W_hi,
 * ordered so that consecutive terms share an operand, whose tiles stay). */
#ifndef NMLX_AMX_TILE_H
#define NMLX_AMX_TILE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tile_cfg;

/* every tile 16 rows x 64 bytes; the caller releases with _tile_release() */
static inline void amx_tiles_config(void) {
    amx_tile_cfg cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++)
        cfg.colsb[i] = 64, cfg.rows[i] = 16;
    _tile_loadconfig(&cfg);
}

static inline __mmask16 amx_mask_n(int64_t n) {
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* The operands of one 32-token x 32-row block: term i multiplies a[i]
 * (token-major bf16 rows, row stride as elements, the block's first token;
 * tokens 16..31 at a[i] + 16 as) by b[i] (k-pair panel: b[i][kp * 16 + r]
 * the pair of row r < 16, rows 16..31 at b[i] + half). */
typedef struct {
    const uint16_t *a[3];
    const uint32_t *b[3];
    int64_t as, half;
} amx_terms;

/* C tile i <- y block (tokens t0.., rows d0..) of nt x nd valid entries */
#define AMX_C_LOAD(i)                                                                              \
    do {                                                                                           \
        if (full[i])                                                                               \
            _tile_loadd(i, yb[i], D * 4);                                                          \
        else {                                                                                     \
            for (int r = 0; r < 16; r++)                                                           \
                _mm512_store_ps(cs[i] + 16 * r,                                                    \
                                _mm512_maskz_loadu_ps(r < nt[i] ? amx_mask_n(nd[i]) : 0,           \
                                                      r < nt[i] ? yb[i] + r * D : yb[i]));         \
            _tile_loadd(i, cs[i], 64);                                                             \
        }                                                                                          \
    } while (0)
#define AMX_C_STORE(i)                                                                             \
    do {                                                                                           \
        if (full[i])                                                                               \
            _tile_stored(i, yb[i], D * 4);                                                         \
        else {                                                                                     \
            _tile_stored(i, cs[i], 64);                                                            \
            for (int r = 0; r < nt[i]; r++)                                                        \
                _mm512_mask_storeu_ps(yb[i] + r * D, amx_mask_n(nd[i]),                            \
                                      _mm512_load_ps(cs[i] + 16 * r));                             \
        }                                                                                          \
    } while (0)

/* y[t, r] += (or, where first, =) the sum over the nterm terms and nkp
 * columns (a multiple of 32, zero padded) for t < mt tokens (mt may exceed
 * 32: only 32 are done), r < nr rows (<= 32); y row stride D. Tiles
 * configured by amx_tiles_config. */
static inline __attribute__((always_inline)) void amx_block(int nterm, const amx_terms *op,
                                                            int64_t nkp, float *y, int64_t D,
                                                            int64_t mt, int nr, bool first) {
    float cs[4][256] __attribute__((aligned(64)));
    float *yb[4];
    int64_t nt[4], nd[4];
    bool full[4];
    for (int i = 0; i < 4; i++) {
        const int64_t t0 = 16 * (i / 2), r0 = 16 * (i % 2);
        nt[i] = mt - t0 < 0 ? 0 : mt - t0 > 16 ? 16 : mt - t0;
        nd[i] = nr - r0 < 0 ? 0 : nr - r0 > 16 ? 16 : nr - r0;
        full[i] = nt[i] == 16 && nd[i] == 16;
        yb[i] = y + (nt[i] ? t0 : 0) * D + (nd[i] ? r0 : 0);
    }
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        AMX_C_LOAD(0);
        AMX_C_LOAD(1);
        AMX_C_LOAD(2);
        AMX_C_LOAD(3);
    }
    const int64_t as = op->as, half = op->half;
    for (int64_t kc = 0; kc < nkp; kc += 32) {
        for (int i = 0; i < nterm; i++) {
            /* a term with the previous term's A (B) keeps tiles 4-5 (6-7) */
            const bool new_a = i == 0 || op->a[i] != op->a[i - 1];
            const bool new_b = i == 0 || op->b[i] != op->b[i - 1];
            const uint16_t *a = op->a[i] + kc;
            const uint32_t *b = op->b[i] + kc / 2 * 16;
            if (new_a) _tile_loadd(4, a, as * 2);
            if (new_b) {
                _tile_loadd(6, b, 64);
                _tile_loadd(7, b + half, 64);
            }
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            if (new_a) _tile_loadd(5, a + 16 * as, as * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    AMX_C_STORE(0);
    AMX_C_STORE(1);
    AMX_C_STORE(2);
    AMX_C_STORE(3);
}

#endif
