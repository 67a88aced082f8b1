/* The AMX tile operations matmul_amx.c, quant_amx.c and quant_int8_amx.c
 * use, in plain C (one thread's 8 tiles of up to 16 rows x 64 bytes, shaped
 * by the loaded configuration: rows and bytes per row per tile), so
 * tests/test_amx_emulated.c and its siblings can check the kernels'
 * blocking, packing and tails on CPUs without AMX. Semantics as Intel's
 * TDPBF16PS: C[m][n] += A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1] over the
 * 16 k-pairs (f32 sums; the hardware's rounding of the pair sum may differ
 * in the last bit); TDPBSUD / TDPBUUD: C[m][n] (int32) += sum over the
 * k-quads of A[m][4k + i] B[k][4n + i], i < 4, A's bytes signed (SUD) or
 * unsigned (UUD), B's unsigned (exact; wrapping as the hardware). A
 * product whose shapes do not match (A's bytes per row = 4 x B's rows,
 * B's and C's bytes per row, A's and C's rows) aborts, as the hardware
 * raises #UD. */
#ifndef NMLX_AMX_EMULATE_H
#define NMLX_AMX_EMULATE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local unsigned char emu_tile[8][16][64];
static _Thread_local int emu_configured;
static _Thread_local int emu_rows[8], emu_colsb[8];

/* palette-1 configuration: 64 bytes, colsb (uint16) at 16, rows at 48 */
static inline void emu_loadconfig(const void *cfg) {
    const unsigned char *c = (const unsigned char *)cfg;
    if (c[0] != 1) abort();
    for (int t = 0; t < 8; t++) {
        uint16_t cb;
        memcpy(&cb, c + 16 + 2 * t, 2);
        emu_colsb[t] = cb, emu_rows[t] = c[48 + t];
        if (emu_colsb[t] > 64 || emu_rows[t] > 16 || emu_colsb[t] % 4) abort();
    }
    emu_configured = 1;
}

static inline float emu_bf16(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void emu_loadd(int t, const void *base, long stride) {
    if (!emu_configured) abort(); /* the hardware raises #UD */
    memset(emu_tile[t], 0, sizeof emu_tile[t]);
    for (int r = 0; r < emu_rows[t]; r++)
        memcpy(emu_tile[t][r], (const char *)base + r * stride, (size_t)emu_colsb[t]);
}
static inline void emu_stored(int t, void *base, long stride) {
    if (!emu_configured) abort();
    for (int r = 0; r < emu_rows[t]; r++)
        memcpy((char *)base + r * stride, emu_tile[t][r], (size_t)emu_colsb[t]);
}
static inline void emu_zero(int t) {
    if (!emu_configured) abort();
    memset(emu_tile[t], 0, sizeof emu_tile[t]);
}
static inline void emu_dpbf16ps(int c, int a, int b) {
    if (!emu_configured || c == a || c == b || a == b) abort();
    if (emu_colsb[a] != 64 || emu_rows[b] != 16 || emu_colsb[b] != 64 || emu_colsb[c] != 64 ||
        emu_rows[a] != 16 || emu_rows[c] != 16)
        abort(); /* the bf16 kernels use whole tiles only */
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            float acc;
            memcpy(&acc, &emu_tile[c][m][4 * n], 4);
            for (int k = 0; k < 16; k++)
                acc += emu_bf16(&emu_tile[a][m][4 * k]) * emu_bf16(&emu_tile[b][k][4 * n]) +
                       emu_bf16(&emu_tile[a][m][4 * k + 2]) * emu_bf16(&emu_tile[b][k][4 * n + 2]);
            memcpy(&emu_tile[c][m][4 * n], &acc, 4);
        }
}

/* TDPBSUD (a_signed) / TDPBUUD: int32 C += byte quads of A x B */
static inline void emu_dpb_ud(int c, int a, int b, int a_signed) {
    if (!emu_configured || c == a || c == b || a == b) abort();
    const int kq = emu_colsb[a] / 4, nn = emu_colsb[c] / 4, mm = emu_rows[c];
    if (emu_rows[b] != kq || emu_colsb[b] != emu_colsb[c] || emu_rows[a] != mm) abort();
    for (int m = 0; m < mm; m++)
        for (int n = 0; n < nn; n++) {
            int32_t acc;
            memcpy(&acc, &emu_tile[c][m][4 * n], 4);
            uint32_t u = (uint32_t)acc; /* wrapping sums */
            for (int k = 0; k < kq; k++)
                for (int i = 0; i < 4; i++) {
                    const int av = a_signed ? (int)(int8_t)emu_tile[a][m][4 * k + i]
                                            : (int)emu_tile[a][m][4 * k + i];
                    u += (uint32_t)(av * (int)emu_tile[b][k][4 * n + i]);
                }
            acc = (int32_t)u;
            memcpy(&emu_tile[c][m][4 * n], &acc, 4);
        }
}

#undef _tile_loadconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stored
#undef _tile_dpbf16ps
#undef _tile_zero
#undef _tile_dpbsud
#undef _tile_dpbuud
#define _tile_loadconfig(cfg) emu_loadconfig(cfg)
#define _tile_release() (emu_configured = 0)
#define _tile_loadd(t, base, stride) emu_loadd(t, base, stride)
#define _tile_stored(t, base, stride) emu_stored(t, base, stride)
#define _tile_dpbf16ps(c, a, b) emu_dpbf16ps(c, a, b)
#define _tile_zero(t) emu_zero(t)
#define _tile_dpbsud(c, a, b) emu_dpb_ud(c, a, b, 1)
#define _tile_dpbuud(c, a, b) emu_dpb_ud(c, a, b, 0)

#endif
