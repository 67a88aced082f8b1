/* AMX-BF16 prefill for dense bf16 weights (Intel Sapphire/Emerald Rapids
 * and later): y[T, D] = x[T, N] W[D, N]^T over rows [d0, d1), x rounded to
 * bf16 (round to nearest even, the precision contract of bf16 checkpoints,
 * as nmlx_avx512bf16_quant_matmat), W exact, f32 accumulation
 * (TDPBF16PS). Runs where the CPU has AMX-TILE + AMX-BF16 + AVX512_BF16,
 * Linux grants the tile state (arch_prctl ARCH_REQ_XCOMP_PERM) and the
 * one-time pick in quant_bf16_avx512.c finds it fastest (NMLX_AMX_DEFAULT;
 * NMLX_AMX=0 turns it off, =1 forces it).
 *
 * Tiles: amx_tile.h (2 x 2 C tiles of 16 tokens x 16 rows, B in the
 * k-pair layout of the vdpbf16ps panels). Blocking: x is rounded per
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
#include "compute/cpu/amx_tile.h"

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

static bool g_amx_int8;
static pthread_once_t g_amx_int8_once = PTHREAD_ONCE_INIT;

static void amx_int8_probe(void) {
    unsigned a, b, c, d;
    g_amx_int8 = nmlx_amx_ok() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 25) & 1);
}

/* once: cpuid traps to the hypervisor in a VM (tens of microseconds) */
bool nmlx_amx_int8_ok(void) {
    pthread_once(&g_amx_int8_once, amx_int8_probe);
    return g_amx_int8;
}

int nmlx_amx_int8_env(void) {
    const char *e = getenv("NMLX_AMX_INT8");
    if (!e || !*e) return -1;
    return strcmp(e, "0") != 0;
}

int nmlx_amx_env(void) {
    const char *e = getenv("NMLX_AMX");
    if (!e || !*e) return -1;
    return strcmp(e, "0") != 0;
}

int nmlx_amx_quant_env(void) {
    const char *e = getenv("NMLX_AMX_QUANT");
    if (!e || !*e) return -1;
    return !strcmp(e, "0") ? 0 : !strcmp(e, "bf16") ? 1 : !strcmp(e, "2") ? 2 : 3;
}

bool nmlx_amx_wanted(void) {
    int e = nmlx_amx_env();
    return e == 1 || (e < 0 && NMLX_AMX_DEFAULT);
}

/* ------------------------------------------------------------ kernel */

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
            __m512 l = _mm512_maskz_loadu_ps(amx_mask_n(nk - k), src + k);
            __m512 h = _mm512_maskz_loadu_ps(amx_mask_n(nk - k - 16), src + k + 16);
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

    amx_tiles_config();

    for (int64_t tb = 0; tb < T; tb += ATB) {
        const int64_t mt = T - tb < ATB ? T - tb : ATB, mtp = (mt + 31) / 32 * 32;
        for (int64_t kb = 0; kb < N; kb += AK) {
            const int64_t nk = N - kb < AK ? N - kb : AK, nkp = (nk + 31) / 32 * 32;
            fill_x(x + tb * N, N, mt, mtp, kb, nk, nkp, xb);
            for (int64_t db = d0; db < d1; db += AR) {
                const int nr = d1 - db < AR ? (int)(d1 - db) : AR;
                fill_w(W, N, db, nr, kb, nk, nkp, panel);
                const amx_terms op = {.a = {xb}, .b = {panel}, .as = XS, .half = PG};
                for (int64_t t = 0; t < mtp; t += 32) {
                    amx_terms o = op;
                    o.a[0] = xb + t * XS;
                    amx_block(1, &o, nkp, y + (tb + t) * D + db, D, mt - t, nr, kb == 0);
                }
            }
        }
    }
    _tile_release();
    free(mem);
    return true;
}
