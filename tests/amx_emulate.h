/* The AMX tile operations matmul_amx.c uses, in plain C (one thread's 8
 * tiles of 16 rows x 64 bytes), so tests/test_amx_emulated.c can check the
 * kernel's blocking, packing and tails on CPUs without AMX. Semantics as
 * Intel's TDPBF16PS: C[m][n] += A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1]
 * over the 16 k-pairs (f32 sums; the hardware's rounding of the pair sum
 * may differ in the last bit). */
#ifndef NMLX_AMX_EMULATE_H
#define NMLX_AMX_EMULATE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local unsigned char emu_tile[8][16][64];
static _Thread_local int emu_configured;

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
    for (int r = 0; r < 16; r++)
        memcpy(emu_tile[t][r], (const char *)base + r * stride, 64);
}
static inline void emu_stored(int t, void *base, long stride) {
    if (!emu_configured) abort();
    for (int r = 0; r < 16; r++)
        memcpy((char *)base + r * stride, emu_tile[t][r], 64);
}
static inline void emu_zero(int t) {
    if (!emu_configured) abort();
    memset(emu_tile[t], 0, sizeof emu_tile[t]);
}
static inline void emu_dpbf16ps(int c, int a, int b) {
    if (!emu_configured || c == a || c == b || a == b) abort();
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

#undef _tile_loadconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stored
#undef _tile_dpbf16ps
#undef _tile_zero
#define _tile_loadconfig(cfg) ((void)(cfg), emu_configured = 1)
#define _tile_release() (emu_configured = 0)
#define _tile_loadd(t, base, stride) emu_loadd(t, base, stride)
#define _tile_stored(t, base, stride) emu_stored(t, base, stride)
#define _tile_dpbf16ps(c, a, b) emu_dpbf16ps(c, a, b)
#define _tile_zero(t) emu_zero(t)

#endif
