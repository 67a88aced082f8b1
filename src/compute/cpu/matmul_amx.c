/* AMX-BF16 prefill for dense bf16 weights (Intel Sapphire/Emerald Rapids
 * and later): y[T, D] = x[T, N] W[D, N]^T over rows [d0, d1), x rounded to
 * bf16 (round to nearest even, the precision contract of bf16 checkpoints,
 * as nmlx_avx512bf16_quant_matmat), W exact, f32 accumulation
 * (TDPBF16PS). Runs where the CPU has AMX-TILE + AMX-BF16 + AVX512_BF16,
 * Linux grants the tile state (arch_prctl ARCH_REQ_XCOMP_PERM) and the
 * one-time pick in quant_bf16_avx512.c finds it fastest (NMLX_AMX_DEFAULT;
 * NMLX_AMX=0 turns it off, =1 forces it).
 *
 * Tiles (palette 1, all 16 rows x 64 bytes): 0-3 accumulate a 32-token x
 * 32-row block of y (C[t][d], stored straight into y where the block is
 * whole, through a scratch tile at the tails); 4-5 hold 16 tokens x 32
 * columns of x in bf16 (A, rows of a token-major copy); 6-7 hold 16 k-pairs
 * x 16 rows of W (B, "VNNI" pair layout: each 32-bit element the pair
 * W[d, k], W[d, k+1], as the vdpbf16ps panels). Blocking: x is rounded per
 * block of 512 tokens x 512 columns (zero padded to 32 x 32), W packed per
 * 32 rows x 512 columns (zero padded) once per x block and used by every
 * token of it. Each worker loads the tile configuration on entry and
 * releases the tiles on exit. */
#define _GNU_SOURCE
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_avx512.h"

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef NMLX_AMX_EMULATE /* tests/test_amx_emulated.c: tile ops in C, no probe */
#include "amx_emulate.h"
#define AMX_USABLE() true
#else
#define AMX_USABLE() nmlx_amx_ok()
#endif

enum {
    AK = 512,        /* columns per block */
    XS = AK + 32,    /* row stride of the bf16 x block (elements): not 2^n bytes */
    ATB = 512,       /* tokens per x block (a T = 512 prefill packs W once) */
    AR = 32,         /* W rows per panel (two B tiles) */
    PG = AK / 2 * 16 /* 32-bit pairs per 16-row half panel */
};

/* ------------------------------------------------------ availability */

static bool g_amx_ok;
static const char *g_amx_why = "not probed";
static pthread_once_t g_amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void) {
    unsigned a, b, c, d;
    g_amx_why = "cpuid: no OSXSAVE";
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !((c >> 27) & 1)) return;
    g_amx_why = "cpuid: no AMX-TILE / AMX-BF16";
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!((d >> 24) & 1) || !((d >> 22) & 1)) return;
    g_amx_why = "cpuid: no AVX512F/BW/BF16";
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512bf16"))
        return;
    /* palette 1 must offer 8 tiles of 16 rows x 64 bytes */
    g_amx_why = "cpuid leaf 0x1d: no palette 1 of 8 tiles x 16 rows x 64 bytes";
    if (!__get_cpuid_count(0x1d, 0, &a, &b, &c, &d) || a < 1) return;
    __get_cpuid_count(0x1d, 1, &a, &b, &c, &d);
    if ((b & 0xffff) < 64 || (b >> 16) < 8 || (c & 0xffff) < 16) return;
    /* the OS enables the tile state in XCR0 (bits 17, 18) */
    g_amx_why = "XCR0: tile state not enabled by the OS";
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if (((lo >> 17) & 3) != 3) return;
    /* and grants this process the tile data (Linux 5.16+; process-wide) */
    enum { GET_PERM = 0x1022, REQ_PERM = 0x1023, XTILEDATA = 18 };
    g_amx_why = "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused";
    if (syscall(SYS_arch_prctl, REQ_PERM, XTILEDATA) != 0) return;
    unsigned long perm = 0;
    g_amx_why = "arch_prctl(ARCH_GET_XCOMP_PERM): XTILEDATA not granted";
    if (syscall(SYS_arch_prctl, GET_PERM, &perm) != 0 || !((perm >> XTILEDATA) & 1)) return;
    g_amx_why = "usable";
    g_amx_ok = true;
}

bool nmlx_amx_ok(void) {
    pthread_once(&g_amx_once, amx_probe);
    return g_amx_ok;
}

const char *nmlx_amx_status(void) {
    pthread_once(&g_amx_once, amx_probe);
    return g_amx_why;
}

int nmlx_amx_env(void) {
    const char *e = getenv("NMLX_AMX");
    if (!e || !*e) return -1;
    return strcmp(e, "0") != 0;
}

bool nmlx_amx_wanted(void) {
    int e = nmlx_amx_env();
    return e == 1 || (e < 0 && NMLX_AMX_DEFAULT);
}

/* ------------------------------------------------------------ kernel */

static inline __mmask16 mask_n(int64_t n) {
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* xb[t * XS + k] = bf16 x[t, k0 + k] for t < mt, k < nk; zeros up to mtp
 * tokens and nkp columns */
static void fill_x(const float *x, int64_t N, int64_t mt, int64_t mtp, int64_t k0, int64_t nk,
                   int64_t nkp, uint16_t *xb) {
    for (int64_t t = 0; t < mtp; t++) {
        uint16_t *dst = xb + t * XS;
        if (t >= mt) {
            memset(dst, 0, (size_t)nkp * sizeof *dst);
            continue;
        }
        const float *src = x + t * N + k0;
        for (int64_t k = 0; k < nkp; k += 32) {
            __m512 l = _mm512_maskz_loadu_ps(mask_n(nk - k), src + k);
            __m512 h = _mm512_maskz_loadu_ps(mask_n(nk - k - 16), src + k + 16);
            _mm512_storeu_si512(dst + k, (__m512i)_mm512_cvtne2ps_pbh(h, l));
        }
    }
}

/* panel[g * PG + kp * 16 + r] = pair W[r0 + 16 g + r, k0 + 2 kp .. +1],
 * zero for rows >= nr or columns >= nk; kp < nkp / 2 */
static void fill_w(const uint16_t *W, int64_t N, int64_t r0, int nr, int64_t k0, int64_t nk,
                   int64_t nkp, uint32_t *panel) {
    uint16_t rb[16 * AK] __attribute__((aligned(64)));
    for (int g = 0; g < 2; g++) {
        for (int r = 0; r < 16; r++) {
            uint16_t *dst = rb + r * AK;
            const int rr = 16 * g + r;
            if (rr >= nr) {
                memset(dst, 0, (size_t)nkp * sizeof *dst);
                continue;
            }
            memcpy(dst, W + (r0 + rr) * N + k0, (size_t)nk * sizeof *dst);
            if (nkp > nk) memset(dst + nk, 0, (size_t)(nkp - nk) * sizeof *dst);
        }
        for (int64_t kp = 0; kp < nkp / 2; kp += 16)
            transpose16((const float *)(const void *)(rb + 2 * kp), AK / 2,
                        (float *)(void *)(panel + g * PG + kp * 16), 16);
    }
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg;

/* C tile i <- y block (tokens t0.., rows d0..) of nt x nd valid entries */
#define C_LOAD(i)                                                                                  \
    do {                                                                                           \
        if (full[i])                                                                               \
            _tile_loadd(i, yb[i], D * 4);                                                          \
        else {                                                                                     \
            for (int r = 0; r < 16; r++)                                                           \
                _mm512_store_ps(cs[i] + 16 * r,                                                    \
                                _mm512_maskz_loadu_ps(r < nt[i] ? mask_n(nd[i]) : 0,               \
                                                      r < nt[i] ? yb[i] + r * D : yb[i]));         \
            _tile_loadd(i, cs[i], 64);                                                             \
        }                                                                                          \
    } while (0)
#define C_STORE(i)                                                                                 \
    do {                                                                                           \
        if (full[i])                                                                               \
            _tile_stored(i, yb[i], D * 4);                                                         \
        else {                                                                                     \
            _tile_stored(i, cs[i], 64);                                                            \
            for (int r = 0; r < nt[i]; r++)                                                        \
                _mm512_mask_storeu_ps(yb[i] + r * D, mask_n(nd[i]),                                \
                                      _mm512_load_ps(cs[i] + 16 * r));                             \
        }                                                                                          \
    } while (0)

bool nmlx_amx_bf16_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                          int64_t d1) {
    if (!AMX_USABLE() || w->mode != NMLX_QUANT_NONE || w->w.dtype != NMLX_DT_BF16 || T < 1 ||
        d0 < 0 || d1 > w->rows || d0 >= d1 || w->cols < 1)
        return false;
    const int64_t N = w->cols, D = w->rows;
    const uint16_t *W = (const uint16_t *)w->w.data;
    void *mem = NULL;
    const size_t xbytes = (size_t)ATB * XS * 2, pbytes = (size_t)2 * PG * 4;
    if (posix_memalign(&mem, 64, xbytes + pbytes)) return false;
    uint16_t *xb = mem;
    uint32_t *panel = (uint32_t *)(void *)((char *)mem + xbytes);
    float cs[4][256] __attribute__((aligned(64)));

    for (int64_t t = 0; t < T; t++)
        memset(y + t * D + d0, 0, (size_t)(d1 - d0) * sizeof(float));

    tile_cfg cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++)
        cfg.colsb[i] = 64, cfg.rows[i] = 16;
    _tile_loadconfig(&cfg);

    for (int64_t tb = 0; tb < T; tb += ATB) {
        const int64_t mt = T - tb < ATB ? T - tb : ATB, mtp = (mt + 31) / 32 * 32;
        for (int64_t kb = 0; kb < N; kb += AK) {
            const int64_t nk = N - kb < AK ? N - kb : AK, nkp = (nk + 31) / 32 * 32;
            fill_x(x + tb * N, N, mt, mtp, kb, nk, nkp, xb);
            for (int64_t db = d0; db < d1; db += AR) {
                const int nr = d1 - db < AR ? (int)(d1 - db) : AR;
                fill_w(W, N, db, nr, kb, nk, nkp, panel);
                for (int64_t t = 0; t < mtp; t += 32) {
                    /* C tile i: tokens t + 16 (i / 2), rows db + 16 (i % 2) */
                    float *yb[4];
                    int64_t nt[4], nd[4];
                    bool full[4];
                    for (int i = 0; i < 4; i++) {
                        const int64_t t0 = t + 16 * (i / 2), r0 = 16 * (i % 2);
                        nt[i] = mt - t0 < 0 ? 0 : mt - t0 > 16 ? 16 : mt - t0;
                        nd[i] = nr - r0 < 0 ? 0 : nr - r0 > 16 ? 16 : nr - r0;
                        full[i] = nt[i] == 16 && nd[i] == 16;
                        yb[i] = y + (tb + (nt[i] ? t0 : 0)) * D + db + (nd[i] ? r0 : 0);
                    }
                    C_LOAD(0);
                    C_LOAD(1);
                    C_LOAD(2);
                    C_LOAD(3);
                    const uint16_t *a0 = xb + t * XS, *a1 = xb + (t + 16) * XS;
                    for (int64_t kc = 0; kc < nkp; kc += 32) {
                        _tile_loadd(4, a0 + kc, XS * 2);
                        _tile_loadd(6, panel + kc / 2 * 16, 64);
                        _tile_loadd(7, panel + PG + kc / 2 * 16, 64);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_loadd(5, a1 + kc, XS * 2);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                    C_STORE(0);
                    C_STORE(1);
                    C_STORE(2);
                    C_STORE(3);
                }
            }
        }
    }
    _tile_release();
    free(mem);
    return true;
}
