/* AVX512_VNNI quantized prefill with integer activations: int16 (the
 * default precision where the CPU has VNNI) or int8 (opt-in precision
 * "int8"); docs/quantization.md. Reference: the same x quantization
 * followed by the dequantized weights in f64 (tests/test_quant_int8.c).
 * Below, the int8 form; int16 is the same with x16 (dx = max|x| / 32767),
 * codes widened to int16 in k-pair-major panels and `vpdpwssd` (2 products
 * per 32-bit lane) in place of `vpdpbusd` (4).
 *
 * W (D, N) affine 2-6/8-bit (group 32/64/128) or MXFP4 @ x (T, N) -> y (T, D),
 * rows [d0, d1), T >= 1 (the avx512 set reaches it for T >= 24, NMLX_CPU_FEW_CHUNKED):
 *
 *   x is quantized per token and block of XB columns (XB = the group size, or
 *   32 where asked; blocks never straddle a group):
 *     dx = max|x_blk| / 127,  x8 = round_half_even(x * (127 / max|x_blk|))
 *   and, with w = s q + b per group (q unsigned codes),
 *     y[t, d] = sum_blk s[d, g] dx[t, blk] (q . x8)_blk + b[d, g] dx[t, blk] sum(x8)_blk
 *   that is exactly W (dequantized, exact) times x8 dx (x rounded to int8),
 *   up to f32 rounding of the per-block terms. The bias term uses the
 *   quantized sum on purpose: the error is then sum w e, with w centred,
 *   instead of sum (w - b) e with b a group extreme (2-3x larger).
 *   MXFP4 fits the same form: code c -> 12 + 2 value(c) in 0..24 (the E2M1
 *   values doubled are integers), s' = s / 2, b' = -12 s'.
 *
 * q . x8 is `vpdpbusd` (u8 codes x s8 activations, 4 products per 32-bit
 * lane, 64 per instruction: 4x an f32 FMA's multiply-adds). x is quantized
 * once per call (T x N bytes, heap; where that allocation fails the caller
 * runs the f32 kernel). Each 32-row stripe of the thread's rows is unpacked
 * once to bytes in quad-major order, stripe[k/4][r] = q[r, k..k+3], with its
 * scales and biases per block; tiles of 12 tokens x 32 rows then run over all
 * of N in one asm loop (tile12): 24 integer accumulators, flushed once per
 * block into a 12 x 32 f32 tile that is written to y once. Non-finite x
 * gives finite garbage, not NaN (int8 has no NaN). */
#define _POSIX_C_SOURCE 200809L
/* Built with the avx512 set's flags (file name); the VNNI instructions are in
 * the asm, so no VNNI compiler flag is needed (and none would be honoured by
 * `#pragma GCC target` under clang). Only called where cpuid has avx512_vnni. */
#include "compute/cpu/quant_avx512.h"
#include "compute/cpu/quant_codes.h"

#include <pthread.h>
#include <stdlib.h>

enum {
    IR = 32,  /* rows per panel */
    IK = 256, /* columns per panel (a multiple of every group size) */
    IM = 12,  /* tokens per register tile */
};

bool nmlx_avx512vnni_quant_ok(const nmlx_weight *w) {
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && w->group_size == 32;
    return w->mode == NMLX_QUANT_AFFINE && w->bits >= 2 && w->bits <= 8 && w->bits != 7 &&
           (w->group_size == 32 || w->group_size == 64 || w->group_size == 128);
}

/* ------------------------------------------------------------ x -> int8 / int16 */

/* Row x[0..n) (n % xb == 0) -> q[0..n) integers in [-qmax, qmax] (WIDE
 * bytes each), per block: dx = max|x_blk| / qmax (the step) and xs = dx *
 * sum(q) (the block's sum as the kernel sees it). */
static inline __attribute__((always_inline)) void quantize_row(const float *x, int64_t n, int xb,
                                                               float qmax, int WIDE, void *q,
                                                               float *dx, float *xs) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / xb; b++) {
        const float *xv = x + b * xb;
        __m512 mx = _mm512_setzero_ps();
        for (int j = 0; j < xb; j += 16)
            mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_loadu_ps(xv + j), absmask));
        const float amax = _mm512_reduce_max_ps(mx);
        const float id = amax > 0.0f ? qmax / amax : 0.0f;
        const __m512 idv = _mm512_set1_ps(id);
        __m512i sum = _mm512_setzero_si512();
        for (int j = 0; j < xb; j += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xv + j), idv));
            sum = _mm512_add_epi32(sum, v);
            if (WIDE == 1)
                _mm_storeu_si128((__m128i *)((int8_t *)q + b * xb + j), _mm512_cvtsepi32_epi8(v));
            else
                _mm256_storeu_si256((__m256i *)((int16_t *)q + b * xb + j),
                                    _mm512_cvtsepi32_epi16(v));
        }
        dx[b] = amax / qmax;
        xs[b] = dx[b] * (float)_mm512_reduce_add_epi32(sum);
    }
}

void nmlx_qint8_quantize_row(const float *x, int64_t n, int xb, int8_t *q, float *dx, float *xs) {
    quantize_row(x, n, xb, 127.0f, 1, q, dx, xs);
}

void nmlx_qint16_quantize_row(const float *x, int64_t n, int xb, int16_t *q, float *dx, float *xs) {
    quantize_row(x, n, xb, 32767.0f, 2, q, dx, xs);
}

/* The same with qmax = 32639 = 127 * 256 + 127: every value then splits
 * into a signed high byte and a signed low byte (x = 256 hi + lo, both in
 * [-128, 127]), as the VNNI decode mat-vec needs (quant_dec_vnni_avx512.c). */
void nmlx_qint16s_quantize_row(const float *x, int64_t n, int xb, int16_t *q, float *dx,
                               float *xs) {
    quantize_row(x, n, xb, NMLX_QINT16S_MAX, 2, q, dx, xs);
}

/* ------------------------------------------------------------ tiles */

/* One tile, 12 tokens x 32 rows over nb blocks of nq quads (XB = 4 nq
 * columns), in one asm loop so that the 24 integer accumulators stay in
 * zmm0-23 (with intrinsics GCC copied every accumulator each step; "+v"
 * operands would pass asm's 30-operand limit):
 *   per quad: the stripe's 2 x 16 rows of quads (u8 codes) and each token's
 *   x8 quad broadcast, `vpdpbusd` (64 multiply-adds);
 *   per block: f[t][r] += cvt(acc) * s[r] dx[t] + b[r] sx[t], where p, ps /
 *   pb (the block's 32 scales / biases) and dt / st (12 steps / sums of x
 *   per block, the tile's tokens) all advance block by block.
 * x rows are x + t * xs (12 readable rows); f is [12][32] f32.
 *
 * Token t's x quad (at address X) broadcast into zmmT, times the two 16-row
 * code vectors (zmm30, zmm31), into accumulators zmmA0 / zmmA1 */
#define DP(X, T, A0, A1)                                                                           \
    "vpbroadcastd " X ", %%zmm" T "\n\t" DOT " %%zmm" T ", %%zmm30, %%zmm" A0 "\n\t" DOT           \
    " %%zmm" T ", %%zmm31, %%zmm" A1 "\n\t"
/* token t's flush: f[t] += cvt(acc) * (s dx[t]) + b sx[t]; DT: 4t, F0/F1:
 * the byte offsets of f[t][0] / f[t][16]; s in zmm24-25, b in zmm26-27 */
#define FL(DT, A0, A1, F0, F1)                                                                     \
    "vbroadcastss " DT "(%[dt]), %%zmm28\n\t"                                                      \
    "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"                                                         \
    "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"                                                         \
    "vcvtdq2ps %%zmm" A0 ", %%zmm" A0 "\n\t"                                                       \
    "vcvtdq2ps %%zmm" A1 ", %%zmm" A1 "\n\t"                                                       \
    "vfmadd213ps " F0 "(%[f]), %%zmm29, %%zmm" A0 "\n\t"                                           \
    "vfmadd213ps " F1 "(%[f]), %%zmm28, %%zmm" A1 "\n\t"                                           \
    "vbroadcastss " DT "(%[st]), %%zmm28\n\t"                                                      \
    "vfmadd231ps %%zmm28, %%zmm26, %%zmm" A0 "\n\t"                                                \
    "vfmadd231ps %%zmm28, %%zmm27, %%zmm" A1 "\n\t"                                                \
    "vmovaps %%zmm" A0 ", " F0 "(%[f])\n\t"                                                        \
    "vmovaps %%zmm" A1 ", " F1 "(%[f])\n\t"
#define Z(A) "vpxord %%zmm" A ", %%zmm" A ", %%zmm" A "\n\t"

// clang-format off
#define TILE12(NAME)                                                                           \
static void NAME(float *f, const int32_t *p, int64_t nq, int64_t nb, const char *x, int64_t xs,   \
                   const float *ps, const float *pb, const float *dt, const float *st) {            \
    const int32_t *pe = p + nb * nq * IR;                                                           \
    const int64_t xs3 = 3 * xs, nqb = nq * IR * 4;                                                  \
    /* nb, nq >= 1; rows 0-3 at x + {0, 1, 2, 3} xs, 4-7 from r10 = x + 4 xs,                       \
     * 8-11 from r11 = x + 8 xs */                                                                  \
    __asm__ volatile(                                                                               \
        "lea (%[x], %[s], 4), %%r10\n\t"                                                            \
        "lea (%%r10, %[s], 4), %%r11\n\t"                                                           \
        "2:\n\t" /* per block */                                                                    \
        Z("0") Z("1") Z("2") Z("3") Z("4") Z("5") Z("6") Z("7") Z("8") Z("9") Z("10") Z("11")       \
        Z("12") Z("13") Z("14") Z("15") Z("16") Z("17") Z("18") Z("19") Z("20") Z("21") Z("22") Z("23")\
        "lea (%[p], %[nqb], 1), %%r12\n\t"                                                          \
        "1:\n\t" /* per quad */                                                                     \
        "vmovdqa64 (%[p]), %%zmm30\n\t"                                                             \
        "vmovdqa64 64(%[p]), %%zmm31\n\t"                                                           \
        DP("(%[x])", "24", "0", "1")                                                                \
        DP("(%[x], %[s], 1)", "25", "2", "3")                                                       \
        DP("(%[x], %[s], 2)", "26", "4", "5")                                                       \
        DP("(%[x], %[s3], 1)", "27", "6", "7")                                                      \
        DP("(%%r10)", "28", "8", "9")                                                               \
        DP("(%%r10, %[s], 1)", "29", "10", "11")                                                    \
        DP("(%%r10, %[s], 2)", "24", "12", "13")                                                    \
        DP("(%%r10, %[s3], 1)", "25", "14", "15")                                                   \
        DP("(%%r11)", "26", "16", "17")                                                             \
        DP("(%%r11, %[s], 1)", "27", "18", "19")                                                    \
        DP("(%%r11, %[s], 2)", "28", "20", "21")                                                    \
        DP("(%%r11, %[s3], 1)", "29", "22", "23")                                                   \
        "add $128, %[p]\n\t"                                                                        \
        "add $4, %[x]\n\t"                                                                          \
        "add $4, %%r10\n\t"                                                                         \
        "add $4, %%r11\n\t"                                                                         \
        "cmp %%r12, %[p]\n\t"                                                                       \
        "jne 1b\n\t"                                                                                \
        "vmovaps (%[ps]), %%zmm24\n\t"                                                              \
        "vmovaps 64(%[ps]), %%zmm25\n\t"                                                            \
        "vmovaps (%[pb]), %%zmm26\n\t"                                                              \
        "vmovaps 64(%[pb]), %%zmm27\n\t"                                                            \
        FL("0", "0", "1", "0", "64")                                                                \
        FL("4", "2", "3", "128", "192")                                                             \
        FL("8", "4", "5", "256", "320")                                                             \
        FL("12", "6", "7", "384", "448")                                                            \
        FL("16", "8", "9", "512", "576")                                                            \
        FL("20", "10", "11", "640", "704")                                                          \
        FL("24", "12", "13", "768", "832")                                                          \
        FL("28", "14", "15", "896", "960")                                                          \
        FL("32", "16", "17", "1024", "1088")                                                        \
        FL("36", "18", "19", "1152", "1216")                                                        \
        FL("40", "20", "21", "1280", "1344")                                                        \
        FL("44", "22", "23", "1408", "1472")                                                        \
        "add $128, %[ps]\n\t"                                                                       \
        "add $128, %[pb]\n\t"                                                                       \
        "add $48, %[dt]\n\t"                                                                        \
        "add $48, %[st]\n\t"                                                                        \
        "cmp %[pe], %[p]\n\t"                                                                       \
        "jne 2b\n\t"                                                                                \
        "vzeroupper\n\t" /* the upper halves are dirty behind the compiler's back */                \
        : [p] "+r"(p), [x] "+r"(x), [ps] "+r"(ps), [pb] "+r"(pb), [dt] "+r"(dt), [st] "+r"(st)      \
        : [s] "r"(xs), [s3] "r"(xs3), [nqb] "r"(nqb), [pe] "r"(pe), [f] "r"(f)                      \
        : "r10", "r11", "r12", "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10",\
          "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19", "zmm20", \
          "zmm21", "zmm22", "zmm23", "zmm24", "zmm25", "zmm26", "zmm27", "zmm28", "zmm29", "zmm30", \
          "zmm31", "cc", "memory");                                                                 \
}
#define DOT "vpdpbusd"
TILE12(tile12_i8)
#undef DOT
#define DOT "vpdpwssd"
TILE12(tile12_i16)
#undef DOT
// clang-format on
#undef DP
#undef FL
#undef Z

/* y[t, 0..32) = the stripe's rows . x[t] for t < M (m masks the valid rows);
 * dt / st: the tile's steps / sums of x, [block][12]; xq rows of xqs bytes;
 * EPU: codes per 32-bit unit (4 int8, 2 int16). */
static void int_tile(int M, int XB, int EPU, const char *xq, int64_t xqs, const float *dt,
                     const float *st, const int32_t *p, const float *ps, const float *pb,
                     int64_t nb, float *y, int64_t ys, const __mmask16 *m) {
    float f[IM * IR] __attribute__((aligned(64)));
    for (int i = 0; i < IM * IR; i += 16)
        _mm512_store_ps(f + i, _mm512_setzero_ps());
    (EPU == 4 ? tile12_i8 : tile12_i16)(f, p, XB / EPU, nb, xq, xqs, ps, pb, dt, st);
    for (int t = 0; t < M; t++)
        for (int v = 0; v < 2; v++)
            _mm512_mask_storeu_ps(y + t * ys + 16 * v, m[v], _mm512_load_ps(f + t * IR + 16 * v));
}

/* ------------------------------------------------------------ panels */

/* panel[u][r] = unit u of row r0 + r's codes from column k0 (EPU codes per
 * 32-bit unit: 4 bytes, or 2 int16 words; 0 for nr <= r < IR); ps/pb[b][r] =
 * the scale / bias of block b of row r (0 past nr). */
static void fill_panel(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, int xb,
                       int EPU, int32_t *panel, float *ps, float *pb) {
    uint8_t codes[IK] __attribute__((aligned(64)));
    int32_t rb[16 * IK / 2] __attribute__((aligned(64))); /* 16 rows of units */
    const int64_t ru = IK / EPU, nu = nk / EPU;           /* units per row: stride, used */
    const int gs = w->group_size;
    const int64_t G = w->cols / gs, ng = nk / gs, nb = nk / xb;
    const bool mx = w->mode == NMLX_QUANT_MXFP4;
    float s[IK / 32], bi[IK / 32];
    for (int h = 0; h < IR; h += 16) {
        for (int r = 0; r < 16; r++) {
            int32_t *dst = rb + r * ru;
            if (h + r >= nr) {
                memset(dst, 0, (size_t)nu * 4);
                for (int64_t b = 0; b < nb; b++)
                    ps[b * IR + h + r] = pb[b * IR + h + r] = 0.0f;
                continue;
            }
            if (EPU == 4) {
                unpack_codes(w, r0 + h + r, k0, nk, (uint8_t *)dst);
            } else {
                unpack_codes(w, r0 + h + r, k0, nk, codes);
                for (int64_t k = 0; k < nk; k += 32)
                    _mm512_storeu_si512((int16_t *)dst + k, _mm512_cvtepu8_epi16(_mm256_loadu_si256(
                                                                (const __m256i *)(codes + k))));
            }
            const size_t g0 = (size_t)((r0 + h + r) * G + k0 / gs);
            load_f32s(w->scales.dtype, w->scales.data, g0, ng, s);
            if (mx)
                for (int64_t g = 0; g < ng; g++)
                    s[g] *= 0.5f, bi[g] = -12.0f * s[g];
            else
                load_f32s(w->biases.dtype, w->biases.data, g0, ng, bi);
            for (int64_t b = 0; b < nb; b++) {
                ps[b * IR + h + r] = s[b * xb / gs];
                pb[b * IR + h + r] = bi[b * xb / gs];
            }
        }
        /* rows of 32-bit units -> unit-major: 16x16 transposes of 32-bit lanes */
        for (int64_t u = 0; u < nu; u += 16)
            transpose16((const float *)(const void *)(rb + u), ru,
                        (float *)(void *)(panel + u * IR + h), IR);
    }
}

/* the packed rows [r0, r0 + nr), columns [k0, k0 + nk), and their scales /
 * biases: requested while the current panel is multiplied */
static void prefetch_panel(const nmlx_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk) {
    const int64_t row_bytes = nmlx_quant_row_words(w->cols, w->bits) * 4,
                  G = w->cols / w->group_size;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    for (int64_t r = r0; r < r0 + nr; r++) {
        const char *q = (const char *)w->w.data + r * row_bytes + k0 * w->bits / 8;
        for (int64_t o = 0; o < nk * w->bits / 8; o += 64)
            _mm_prefetch(q + o, _MM_HINT_T0);
        size_t gi = (size_t)(r * G + k0 / w->group_size) * ses;
        _mm_prefetch((const char *)w->scales.data + gi, _MM_HINT_T0);
        if (w->mode == NMLX_QUANT_AFFINE)
            _mm_prefetch((const char *)w->biases.data + gi, _MM_HINT_T0);
    }
}

/* ------------------------------------------------------------ the kernel */

int nmlx_qint8_xblock(const nmlx_weight *w, int xb) {
    return xb > 0 && xb < w->group_size ? xb : w->group_size;
}

/* W @ x with x rounded to WIDE-byte integers (1: int8, 2: int16) per
 * xb-column block; false (y untouched) if the buffer cannot be allocated. */
static bool int_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                       int64_t d1, int xb, int WIDE) {
    const int64_t N = w->cols, D = w->rows, xrow = N * WIDE; /* bytes per x row */
    const int EPU = 4 / WIDE;
    const int64_t B = N / xb, tail = T % IM;
    /* one buffer, each part 64-byte aligned: the stripe's scales and biases
     * (B x 32 each), a 32-row stripe of unit-major codes (N / EPU x 32
     * int32, plus 16 units: fill_panel transposes 16 at a time), the steps
     * and sums of x per tile of 12 tokens ([tile][B][12] each, 0 past T),
     * the rounded x (T x N codes), the last tile's 12 padded rows and one
     * token's steps and sums (B each) */
    const int64_t tiles = (T + IM - 1) / IM;
#define A64(n) (((size_t)(n) + 63) / 64 * 64)
    const size_t o_pb = A64(B * IR * 4), o_st = o_pb + A64(B * IR * 4),
                 o_dt = o_st + A64((N / EPU + 16) * IR * 4), o_sx = o_dt + A64(tiles * B * IM * 4),
                 o_xq = o_sx + A64(tiles * B * IM * 4), o_pad = o_xq + A64(T * xrow),
                 o_row = o_pad + (tail ? A64(IM * xrow) : 0), size = o_row + A64(2 * B * 4);
#undef A64
    char *buf = aligned_alloc(64, size);
    if (!buf) return false;
    float *ps = (float *)(void *)buf, *pb = (float *)(void *)(buf + o_pb);
    int32_t *stripe = (int32_t *)(void *)(buf + o_st);
    float *dt = (float *)(void *)(buf + o_dt), *sx = (float *)(void *)(buf + o_sx);
    char *xq = buf + o_xq, *xpad = buf + o_pad;
    float *dxr = (float *)(void *)(buf + o_row), *sxr = dxr + B; /* one token's */
    memset(dt, 0, (size_t)(tiles * B * IM) * 4);
    memset(sx, 0, (size_t)(tiles * B * IM) * 4);
    for (int64_t t = 0; t < T; t++) {
        if (WIDE == 1)
            nmlx_qint8_quantize_row(x + t * N, N, xb, (int8_t *)(xq + t * xrow), dxr, sxr);
        else
            nmlx_qint16_quantize_row(x + t * N, N, xb, (int16_t *)(void *)(xq + t * xrow), dxr,
                                     sxr);
        float *dtt = dt + (t / IM) * B * IM + t % IM, *sxt = sx + (t / IM) * B * IM + t % IM;
        for (int64_t b = 0; b < B; b++)
            dtt[b * IM] = dxr[b], sxt[b * IM] = sxr[b];
    }
    if (tail)
        for (int64_t t = 0; t < IM; t++)
            memcpy(xpad + t * xrow, xq + (T - tail + (t < tail ? t : tail - 1)) * xrow,
                   (size_t)xrow);

    for (int64_t r0 = d0; r0 < d1; r0 += IR) {
        const int nr = d1 - r0 < IR ? (int)(d1 - r0) : IR;
        const __mmask16 m[2] = {first_n(nr), first_n(nr > 16 ? nr - 16 : 0)};
        /* the stripe's codes, once; each tile then runs over all of N and
         * writes its y once */
        for (int64_t k0 = 0; k0 < N; k0 += IK) {
            const int64_t nk = N - k0 < IK ? N - k0 : IK;
            fill_panel(w, r0, nr, k0, nk, xb, EPU, stripe + k0 / EPU * IR, ps + k0 / xb * IR,
                       pb + k0 / xb * IR);
        }
        /* the next stripe's packed rows, a share per tile */
        const int64_t nx_r = r0 + IR, nx_nr = d1 - nx_r < IR ? d1 - nx_r : IR;
        for (int64_t t = 0, i = 0; t < T; t += IM, i++) {
            const int64_t M = T - t < IM ? T - t : IM;
            if (nx_nr > 0)
                prefetch_panel(w, nx_r + nx_nr * i / tiles,
                               nx_nr * (i + 1) / tiles - nx_nr * i / tiles, 0, N);
            int_tile((int)M, xb, EPU, M < IM ? xpad : xq + t * xrow, xrow, dt + i * B * IM,
                     sx + i * B * IM, stripe, ps, pb, B, y + t * D + r0, D, m);
        }
    }
    free(buf);
    return true;
}

bool nmlx_avx512vnni_quant_matmat_xb(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                     int64_t d0, int64_t d1, int xb) {
    return int_matmat(w, x, y, T, d0, d1, nmlx_qint8_xblock(w, xb), 1);
}

bool nmlx_avx512vnni_quant_matmat16(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                    int64_t d0, int64_t d1) {
    return int_matmat(w, x, y, T, d0, d1, w->group_size, 2);
}

/* ------------------------------------------------------------ the switch */

static nmlx_qint8_mode g_mode;
static pthread_once_t g_mode_once = PTHREAD_ONCE_INIT;

/* NMLX_QUANT_INT8: unset / "0": off; "prefill" (or "1"): on for T >= 24
 * where the CPU has AVX512_VNNI; NMLX_QUANT_INT8_BLOCK=32: 32-column x
 * blocks instead of one per group. */
static void read_mode(void) {
    __builtin_cpu_init();
    const char *env = getenv("NMLX_QUANT_INT8");
    g_mode.prefill = env && (!strcmp(env, "prefill") || !strcmp(env, "1")) &&
                     __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    const char *blk = getenv("NMLX_QUANT_INT8_BLOCK");
    g_mode.xblock = blk && !strcmp(blk, "32") ? 32 : 0;
}

bool nmlx_qint8_cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
}

nmlx_qint8_mode nmlx_qint8_get_mode(void) {
    pthread_once(&g_mode_once, read_mode);
    return g_mode;
}

bool nmlx_avx512vnni_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1) {
    return nmlx_avx512vnni_quant_matmat_xb(w, x, y, T, d0, d1, nmlx_qint8_get_mode().xblock);
}
