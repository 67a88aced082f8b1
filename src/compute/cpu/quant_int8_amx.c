/* AMX-INT8 prefill for quantized weights with int16 x: the int16 VNNI
 * prefill (quant_int8_avx512.c, nmlx_avx512vnni_quant_matmat16) on AMX
 * tiles, the same bits. Weights: MLX affine 2/3/4/5/6/8-bit at group
 * 32/64/128 and MXFP4 (group 32; codes as 12 + 2 value, s / 2, bias
 * -6 s, as the int16 prefill).
 *
 * W (D, N) quantized @ x (T, N) -> y (T, D), rows [d0, d1), any T >= 1:
 *
 *   x is rounded per token and group exactly as the int16 prefill
 *   (nmlx_qint16_quantize_row, dx = max|x_g| / 32767, v = round(x / dx)),
 *   and each v split exactly as v = 256 hi + lo, hi = v >> 8 signed in
 *   [-128, 127], lo = v & 255 unsigned. The codes q (0..255) are exact as
 *   unsigned bytes, so per group
 *     q . v = 256 (hi . q) + (lo . q)
 *   is TDPBSUD (s8 x u8) plus TDPBUUD (u8 x u8) into two int32 C tiles,
 *   combined with one shift and add (|q . v| <= 128 x 255 x 32767 < 2^31 at
 *   group 128, and 256 |hi . q| <= 256 x 128 x 128 x 255 < 2^31: exact). Then,
 *   with the int16 prefill's f32 operations in its order (so y is the same
 *   bits):
 *     f[t, d] = fma(cvt(q . v), s[d, g] dx[t, g], f[t, d])
 *     f[t, d] = fma(dx[t, g] sum(v)_g, b[d, g], f[t, d])
 *   group by group from f = 0.
 *
 * Blocking: x rounded and split per block of 512 tokens x 1024 columns
 * into a hi and a lo byte plane in tile order (each 16 tokens x 64 columns
 * one contiguous 1 KiB A tile; tokens zero padded to 16); W per 32 rows x
 * 1024 columns unpacked to one byte per code in the B-tile layout (each
 * 32-bit element 4 consecutive k of one row: panel[k / 4][r]) with its
 * scales and biases per group, once per x block, then used by all its
 * tokens. Units of 16 tokens x 16 rows (q8_unit16): per group A hi and A lo
 * (tiles 0-1, 16 tokens x 64 k), B (tile 2, 16 k-quads x 16 rows) and two
 * int32 C tiles, hi and lo, zeroed per group and summed over its one or two
 * 64-column steps (group 32: half-K tiles, A 32 bytes wide, B of 8
 * k-quads); the C tiles are double buffered (4-5, 6-7: a group's products
 * are issued before the previous group's C tiles are stored), stored to a
 * scratch block and applied with AVX-512 to 16 f32 accumulators kept in
 * registers over the block's groups (the epilogue: 6 vector operations per
 * 16 outputs and group). On the Xeon measured the tile unit and the vector
 * units hardly overlap: a unit's time is about its 2 tile products, 2 C
 * stores, 3 tile loads and epilogue together (bench/cpu_decode.md).
 * Scratch per thread, kept between calls (q8_scratch_get). */
#define _GNU_SOURCE
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_avx512.h"
#include "compute/cpu/quant_codes.h"
#include "compute/cpu/quant_kernels.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef NMLX_AMX_EMULATE /* tests/test_amx_int8_emulated.c: tile ops in C */
#include "amx_emulate.h"
#define Q8_USABLE() true
#else
#define Q8_USABLE() nmlx_amx_int8_ok()
#endif

#if defined(NMLX_AMX8_BREAK) && NMLX_AMX8_BREAK == 2 /* tests only: the previous group's scale */
#define Q8_SG(g) ((g) ? (g)-1 : 0)
#else
#define Q8_SG(g) (g)
#endif

enum {
    BK = 1024,    /* columns per block: a multiple of every group size */
    XT = BK * 16, /* bytes per 16-token tile of an x byte plane */
    BTB = 512,    /* tokens per x block */
    BR = 32,      /* W rows per panel (two B tiles) */
    BG = BK / 32  /* the most groups per block */
};

bool nmlx_amx8_quant_ok(const nmlx_weight *w) {
    const int gs = w->group_size;
    if (w->w.dtype != NMLX_DT_U32 || w->cols < 32 || w->cols % gs || w->rows < 1) return false;
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && gs == 32;
    return w->mode == NMLX_QUANT_AFFINE && w->bits >= 2 && w->bits <= 8 && w->bits != 7 &&
           (gs == 32 || gs == 64 || gs == 128);
}

static inline __mmask16 amx8_mask(int64_t n) {
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} q8_tile_cfg;

/* tiles 0-1: A (16 tokens x kstep bytes), 2-3: B (kstep / 4 quads x 64
 * bytes; 3 unused), 4-7: C (16 x 16 int32); kstep 64, or 32 for group 32 */
static void q8_config(int kstep) {
    q8_tile_cfg cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++)
        cfg.colsb[i] = 64, cfg.rows[i] = 16;
    cfg.colsb[0] = cfg.colsb[1] = (uint16_t)kstep;
    cfg.rows[2] = cfg.rows[3] = (uint8_t)(kstep / 4);
    _tile_loadconfig(&cfg);
}

/* Tokens [0, mt) of x (row stride N) at columns [k0, k0 + nk) rounded per
 * group of gs to int16 (the int16 prefill's rounding) and split into the
 * byte planes xh (signed high bytes) and xl (unsigned low bytes), in tile
 * order (XOFF: each 16 tokens x 64 columns one contiguous A tile, a tile's
 * groups one after another, so its loads stream);
 * dx / xs [g][BTB]: each token's step and step x sum(v) per group; tokens
 * [mt, mtp) zero. */
#define XOFF(t, k) (((t) >> 4) * XT + ((k) >> 6) * 1024 + ((t)&15) * 64 + ((k)&63))

/* token t's columns [0, nk) at x, groups of GS: nmlx_qint16_quantize_row's
 * arithmetic (dx = max|x_g| / 32767, v = cvt(x * (32767 / max|x_g|)),
 * xs = dx * sum(v)), fused with the split (hi saturated as the int16
 * prefill's int16 store saturates: -32768 where x is not finite) and
 * unrolled per group (x of 512 tokens x 1024 columns: 0.15 ms, was 0.25
 * as two passes) */
static inline __attribute__((always_inline)) void quant_split_row(const float *x, int64_t nk,
                                                                  const int GS, int64_t t,
                                                                  int8_t *xh, uint8_t *xl,
                                                                  float *dx, float *xs) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t k = 0, g = 0; k < nk; k += GS, g++) {
        __m512 xv[GS / 16], mx = _mm512_setzero_ps();
        _Pragma("GCC unroll 8") for (int j = 0; j < GS / 16; j++) {
            xv[j] = _mm512_loadu_ps(x + k + 16 * j);
            mx = _mm512_max_ps(mx, _mm512_and_ps(xv[j], absmask));
        }
        const float amax = _mm512_reduce_max_ps(mx);
        const __m512 idv = _mm512_set1_ps(amax > 0.0f ? 32767.0f / amax : 0.0f);
        __m512i sum = _mm512_setzero_si512();
        _Pragma("GCC unroll 8") for (int j = 0; j < GS / 16; j++) {
            const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(xv[j], idv));
            sum = _mm512_add_epi32(sum, v);
            _mm_store_si128((__m128i *)(void *)(xh + XOFF(t, k + 16 * j)),
                            _mm512_cvtsepi32_epi8(_mm512_srai_epi32(v, 8)));
            _mm_store_si128((__m128i *)(void *)(xl + XOFF(t, k + 16 * j)), _mm512_cvtepi32_epi8(v));
        }
        const float d = amax / 32767.0f;
        dx[g * BTB + t] = d;
        xs[g * BTB + t] = d * (float)_mm512_reduce_add_epi32(sum);
    }
}

static void fill_x(const float *x, int64_t N, int64_t mt, int64_t mtp, int64_t k0, int64_t nk,
                   int gs, int8_t *xh, uint8_t *xl, float *dx, float *xs) {
    const int ng = (int)(nk / gs);
    for (int64_t t = 0; t < mtp; t++) {
        if (t >= mt) {
            for (int64_t k = 0; k < nk; k += 32) {
                memset(xh + XOFF(t, k), 0, 32);
                memset(xl + XOFF(t, k), 0, 32);
            }
            for (int g = 0; g < ng; g++)
                dx[g * BTB + t] = xs[g * BTB + t] = 0.0f;
            continue;
        }
        const float *xr = x + t * N + k0;
        if (gs == 32)
            quant_split_row(xr, nk, 32, t, xh, xl, dx, xs);
        else if (gs == 64)
            quant_split_row(xr, nk, 64, t, xh, xl, dx, xs);
        else
            quant_split_row(xr, nk, 128, t, xh, xl, dx, xs);
    }
}

/* panel[u * BR + r] = 4 codes of row r0 + r at columns k0 + 4u .. +3
 * (0 for rows >= nr), u < nk / 4; ps / pb [g * BR + r]: the group's scale
 * and bias as the int16 prefill applies them (0 past nr). */
static void fill_w(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk,
                   uint32_t *panel, float *ps, float *pb) {
    uint32_t rb[16 * BK / 4] __attribute__((aligned(64))); /* 16 rows of quads */
    const int gs = w->group_size;
    const int64_t G = w->cols / gs, ng = nk / gs, nu = nk / 4;
    const bool mx = w->mode == NMLX_QUANT_MXFP4;
    float s[BG], bi[BG];
    for (int h = 0; h < BR; h += 16) {
        for (int r = 0; r < 16; r++) {
            uint32_t *dst = rb + r * (BK / 4);
            if (h + r >= nr) {
                memset(dst, 0, (size_t)nk);
                for (int64_t g = 0; g < ng; g++)
                    ps[g * BR + h + r] = pb[g * BR + h + r] = 0.0f;
                continue;
            }
            unpack_codes(w, r0 + h + r, k0, nk, (uint8_t *)dst);
#if defined(NMLX_AMX8_BREAK) && NMLX_AMX8_BREAK == 3 /* tests only: a code's top bit lost */
            for (int64_t k = 0; k < nk; k++)
                ((uint8_t *)dst)[k] &= 0x7f;
#endif
            const size_t g0 = (size_t)((r0 + h + r) * G + k0 / gs);
            load_f32s(w->scales.dtype, w->scales.data, g0, ng, s);
            if (mx)
                for (int64_t g = 0; g < ng; g++)
                    s[g] *= 0.5f, bi[g] = -12.0f * s[g];
            else
                load_f32s(w->biases.dtype, w->biases.data, g0, ng, bi);
            for (int64_t g = 0; g < ng; g++)
                ps[g * BR + h + r] = s[g], pb[g * BR + h + r] = bi[g];
        }
        for (int64_t u = 0; u < nu; u += 16) /* rows of quads -> quad-major */
            transpose16((const float *)(const void *)(rb + u), BK / 4,
                        (float *)(void *)(panel + u * BR + h), BR);
    }
}

/* 16 tokens x 16 rows (the panel's half at pn + 16 h): group g into C tiles
 * CH (hi) / CL (lo), A in tiles 0-1, B in tile 2 */
#define Q16_TDP(g, CH, CL)                                                                         \
    do {                                                                                           \
        _tile_zero(CH);                                                                            \
        _tile_zero(CL);                                                                            \
        for (int s_ = 0; s_ < nst; s_++) {                                                         \
            const int64_t k_ = (int64_t)(g)*gs + s_ * kst;                                         \
            _tile_loadd(0, xh + XOFF(0, k_), 64);                                                  \
            _tile_loadd(1, xl + XOFF(0, k_), 64);                                                  \
            _tile_loadd(2, pn + k_ / 4 * BR, BR * 4);                                              \
            _tile_dpbsud(CH, 0, 2);                                                                \
            _tile_dpbuud(CL, 1, 2);                                                                \
        }                                                                                          \
    } while (0)
#define Q16_EPI(g, c)                                                                              \
    do {                                                                                           \
        const __m512 s_ = _mm512_loadu_ps(ps + Q8_SG(g) * BR), b_ = _mm512_loadu_ps(pb + (g)*BR);  \
        const float *dx_ = dx + (g)*BTB, *xs_ = xs + (g)*BTB;                                      \
        _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++) {                                    \
            const __m512i a_ =                                                                     \
                _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512((c)[0] + 16 * r), 8),         \
                                 Q16_LO(_mm512_load_si512((c)[1] + 16 * r)));                      \
            const __m512 sdx_ = _mm512_mul_ps(_mm512_set1_ps(dx_[r]), s_);                         \
            f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a_), sdx_, f[r]);                            \
            f[r] = _mm512_fmadd_ps(_mm512_set1_ps(xs_[r]), b_, f[r]);                              \
        }                                                                                          \
    } while (0)
#if defined(NMLX_AMX8_BREAK) && NMLX_AMX8_BREAK == 1 /* tests only: the low bytes dropped */
#define Q16_LO(v) _mm512_setzero_si512()
#else
#define Q16_LO(v) (v)
#endif

/* y[r][0..16) (16 tokens x 16 rows: tokens of row stride D; nt valid
 * tokens, m the valid rows; loaded first unless `first`) += groups [0, ng)
 * of the tokens at xh / xl and the rows at pn (the half panel: quad rows
 * of stride BR); dx / xs [g * BTB + r], ps / pb [g * BR + r]. The 16 f32
 * accumulators stay in registers; C tiles double buffered (group g in
 * tiles 4-5 or 6-7), so a group's products run while the previous group's
 * C tiles are stored and applied. */
static inline __attribute__((always_inline)) void
q8_unit16(const int8_t *xh, const uint8_t *xl, const uint32_t *pn, int gs, int kst, int nst, int ng,
          const float *dx, const float *xs, const float *ps, const float *pb, float *y, int64_t D,
          int64_t nt, __mmask16 m, bool first) {
    int32_t cb[2][2][256] __attribute__((aligned(64)));
    __m512 f[16];
    /* constant trip counts (no address taken): f stays in registers; rows
     * past nt are neither read nor written (mask 0, address kept in y) */
    _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++) f[r] =
        _mm512_maskz_loadu_ps(first || r >= nt ? 0 : m, y + (r < nt ? r : 0) * D);
    Q16_TDP(0, 4, 5);
    for (int g = 0; g < ng; g += 2) {
        if (g + 1 < ng) Q16_TDP(g + 1, 6, 7);
        _tile_stored(4, cb[0][0], 64);
        _tile_stored(5, cb[0][1], 64);
        if (g + 2 < ng) Q16_TDP(g + 2, 4, 5);
        Q16_EPI(g, cb[0]);
        if (g + 1 < ng) {
            _tile_stored(6, cb[1][0], 64);
            _tile_stored(7, cb[1][1], 64);
            Q16_EPI(g + 1, cb[1]);
        }
    }
    _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++)
        _mm512_mask_storeu_ps(y + (r < nt ? r : 0) * D, r < nt ? m : 0, f[r]);
}

/* Each thread's scratch (x planes, panel), kept from call to call: a
 * fresh 1.2 MiB block per call came as new pages from the kernel once other
 * kernels' frees had trimmed the heap (0.2 ms of page clearing per call,
 * as long as a 128 x 1024 x 256 product); freed when the thread exits. */
typedef struct {
    void *p;
    size_t n;
} q8_scratch;
static pthread_key_t g_q8_key;
static bool g_q8_key_ok;
static pthread_once_t g_q8_key_once = PTHREAD_ONCE_INIT;

static void q8_scratch_free(void *v) {
    q8_scratch *s = v;
    free(s->p);
    free(s);
}

static void q8_key_init(void) { g_q8_key_ok = pthread_key_create(&g_q8_key, q8_scratch_free) == 0; }

static void *q8_scratch_get(size_t n) {
    pthread_once(&g_q8_key_once, q8_key_init);
    if (!g_q8_key_ok) return NULL;
    q8_scratch *s = pthread_getspecific(g_q8_key);
    if (s && s->n >= n) return s->p;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return NULL;
        if (pthread_setspecific(g_q8_key, s)) {
            free(s);
            return NULL;
        }
    }
    free(s->p);
    s->p = NULL, s->n = 0;
    if (posix_memalign(&s->p, 64, n)) return s->p = NULL, NULL;
    s->n = n;
    return s->p;
}

bool nmlx_amx8_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                            int64_t d1) {
    if (!Q8_USABLE() || !nmlx_amx8_quant_ok(w) || T < 1 || d0 < 0 || d1 > w->rows || d0 >= d1)
        return false;
    const int64_t N = w->cols, D = w->rows;
    const int gs = w->group_size, kst = gs < 64 ? gs : 64, nst = gs / kst;
    /* one buffer: x planes hi / lo (BTB x BK bytes each), dx / xs (BG x
     * BTB), the panel (BK / 4 x BR dwords), its scales / biases (BG x BR) */
    const size_t o_xl = (size_t)BTB * BK, o_dx = 2 * o_xl, o_xs = o_dx + (size_t)BG * BTB * 4,
                 o_p = o_xs + (size_t)BG * BTB * 4, o_ps = o_p + (size_t)BK / 4 * BR * 4,
                 o_pb = o_ps + (size_t)BG * BR * 4, size = o_pb + (size_t)BG * BR * 4;
    char *mem = q8_scratch_get(size);
    if (!mem) return false;
    int8_t *xh = (int8_t *)mem;
    uint8_t *xl = (uint8_t *)mem + o_xl;
    float *dx = (float *)(void *)(mem + o_dx), *xs = (float *)(void *)(mem + o_xs);
    uint32_t *panel = (uint32_t *)(void *)(mem + o_p);
    float *ps = (float *)(void *)(mem + o_ps), *pb = (float *)(void *)(mem + o_pb);

    q8_config(kst);
    for (int64_t tb = 0; tb < T; tb += BTB) {
        const int64_t mt = T - tb < BTB ? T - tb : BTB, mtp = (mt + 15) / 16 * 16;
        for (int64_t kb = 0; kb < N; kb += BK) {
            const int64_t nk = N - kb < BK ? N - kb : BK;
            const int ng = (int)(nk / gs);
            fill_x(x + tb * N, N, mt, mtp, kb, nk, gs, xh, xl, dx, xs);
            for (int64_t db = d0; db < d1; db += BR) {
                const int nr = d1 - db < BR ? (int)(d1 - db) : BR;
                if (db + BR < d1) /* the next panel, or the next column block's first */
                    quant_prefetch_panel(w, db + BR, db + 2 * BR < d1 ? db + 2 * BR : d1, kb, nk);
                else if (kb + BK < N)
                    quant_prefetch_panel(w, d0, d0 + BR < d1 ? d0 + BR : d1, kb + BK,
                                         N - kb - BK < BK ? N - kb - BK : BK);
                fill_w(w, db, nr, kb, nk, panel, ps, pb);
                const __mmask16 m[2] = {amx8_mask(nr), amx8_mask(nr - 16)};
                for (int64_t t = 0; t < mtp; t += 16) {
                    const int64_t nt = mt - t < 16 ? mt - t : 16;
                    float *yb = y + (tb + t) * D + db;
                    for (int h = 0; h < 2 && 16 * h < nr; h++)
                        q8_unit16(xh + XOFF(t, 0), xl + XOFF(t, 0), panel + 16 * h, gs, kst, nst,
                                  ng, dx + t, xs + t, ps + 16 * h, pb + 16 * h, yb + 16 * h, D, nt,
                                  m[h], kb == 0);
                }
            }
        }
    }
    _tile_release();
    return true;
}
