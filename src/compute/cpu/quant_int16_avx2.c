/* AVX2 quantized prefill on int16 activations: the default precision's
 * quantized prefill on x86-64 CPUs without AVX512_VNNI (the avx2 kernel set;
 * quant_int8_avx512.c has the VNNI form and the contract, docs/quantization.md).
 *
 * W (D, N) affine 2-6/8-bit (group 32/64/128) or MXFP4 @ x (T, N) -> y (T, D),
 * rows [d0, d1): x is rounded per token and weight group to int16 (step
 * max|x| / 32767, round half to even), the codes are widened to int16 in
 * k-pair-major panels (panel[kp][r] = codes of row r at columns 2kp, 2kp+1),
 * `vpmaddwd` multiplies a broadcast x pair by 8 rows' pairs and adds each
 * pair (16 multiply-adds, exact in int32), `vpaddd` accumulates a group,
 * and per group the f32 flush adds s dx (q . x16) + b dx sum(x16). Tiles of
 * 2 tokens x 32 rows: 8 integer accumulators, 4 panel vectors, 2
 * broadcasts. Compiled with -mavx2 -mfma -mf16c; called after cpuid. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/pick_cache.h"
#include "compute/cpu/quant_codes.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/cpu/simd_avx2.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum { PR = 32, PK = 256, TT = 2 }; /* panel rows, panel columns, tokens per tile */

bool nmlx_avx2_quant_int16_ok(const nmlx_weight *w) {
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && w->group_size == 32;
    return w->mode == NMLX_QUANT_AFFINE && w->bits >= 2 && w->bits <= 8 && w->bits != 7 &&
           (w->group_size == 32 || w->group_size == 64 || w->group_size == 128) &&
           w->cols % 32 == 0;
}

/* x[0..n) -> q int16 per xb block: dx = max|x| / 32767 and xs = dx sum(q);
 * the same f32 operations as nmlx_qint16_quantize_row */
void nmlx_avx2_qint16_quantize_row(const float *x, int64_t n, int xb, int16_t *q, float *dx,
                                   float *xs) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / xb; b++) {
        const float *xv = x + b * xb;
        __m256 mx = _mm256_setzero_ps();
        for (int j = 0; j < xb; j += 8)
            mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(xv + j), absmask));
        const float amax = hmax8(mx);
        const float id = amax > 0.0f ? 32767.0f / amax : 0.0f;
        const __m256 idv = _mm256_set1_ps(id);
        __m256i sum = _mm256_setzero_si256();
        for (int j = 0; j < xb; j += 16) {
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xv + j), idv));
            __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xv + j + 8), idv));
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(a, c));
            /* packs works per 128-bit lane: put the lanes back in order */
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, c), 0xD8);
            _mm256_storeu_si256((__m256i *)(q + b * xb + j), p);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        dx[b] = amax / 32767.0f;
        xs[b] = dx[b] * (float)_mm_cvtsi128_si32(s4);
    }
}

/* out rows (8 of them, stride os) = the 8 x 8 transpose of in rows (stride is) */
static inline void transpose8(const int32_t *in, int64_t is, int32_t *out, int64_t os) {
    __m256 r[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)(in + i * is)));
    transpose8_ps(r);
    for (int i = 0; i < 8; i++)
        _mm256_storeu_si256((__m256i *)(out + i * os), _mm256_castps_si256(r[i]));
}

/* panel[kp][r] = int16 code pairs of row r0 + r from column k0 (0 past nr);
 * ps/pb[g][r]: the group's scale / bias (MXFP4: s / 2 and -12 s / 2, its
 * codes being 12 + 2 value). nk % 32 == 0. */
static void fill_panel(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk,
                       int32_t *panel, float *ps, float *pb) {
    uint8_t codes[PK];
    int32_t rb[8 * PK / 2]; /* 8 rows of code pairs */
    const int gs = w->group_size;
    const int64_t G = w->cols / gs, ng = nk / gs, nkp = nk / 2;
    const bool mx = w->mode == NMLX_QUANT_MXFP4;
    for (int h = 0; h < PR; h += 8) {
        for (int r = 0; r < 8; r++) {
            int16_t *dst = (int16_t *)(void *)(rb + r * PK / 2);
            const int64_t row = r0 + h + r;
            if (h + r >= nr) {
                memset(dst, 0, (size_t)nk * sizeof *dst);
                for (int64_t g = 0; g < ng; g++)
                    ps[g * PR + h + r] = pb[g * PR + h + r] = 0.0f;
                continue;
            }
            unpack_codes(w, row, k0, nk, codes);
            for (int64_t k = 0; k < nk; k += 16)
                _mm256_storeu_si256((__m256i *)(dst + k), _mm256_cvtepu8_epi16(_mm_loadu_si128(
                                                              (const __m128i *)(codes + k))));
            for (int64_t g = 0; g < ng; g++) {
                const size_t gi = (size_t)(row * G + k0 / gs + g);
                if (mx) {
                    const float s = 0.5f * nmlx_e8m0_value(((const uint8_t *)w->scales.data)[gi]);
                    ps[g * PR + h + r] = s, pb[g * PR + h + r] = -12.0f * s;
                } else {
                    ps[g * PR + h + r] = nmlx_load_f32(w->scales.dtype, w->scales.data, gi);
                    pb[g * PR + h + r] = nmlx_load_f32(w->biases.dtype, w->biases.data, gi);
                }
            }
        }
        for (int64_t kp = 0; kp < nkp; kp += 8)
            transpose8(rb + kp, PK / 2, panel + kp * PR + h, PR);
    }
}

/* f[t][0..32) += the stripe's rows . x_t over nb groups of gp code pairs,
 * t < TT (x1 may repeat x0 for a lone token); dt / st: [group][TT] steps
 * and sums of x. */
static void tile2(const int32_t *p, int64_t nb, int64_t gp, const int16_t *x0, const int16_t *x1,
                  const float *ps, const float *pb, const float *dt, const float *st, float *f) {
    for (int64_t b = 0; b < nb; b++) {
        /* named accumulators: with arrays GCC copied them around each step */
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
        __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
        const int32_t *pp = p + b * gp * PR;
        const int16_t *xa = x0 + 2 * b * gp, *xb = x1 + 2 * b * gp;
        for (int64_t kp = 0; kp < gp; kp++, pp += PR) {
            int32_t u0, u1;
            memcpy(&u0, xa + 2 * kp, 4);
            memcpy(&u1, xb + 2 * kp, 4);
            const __m256i b0 = _mm256_set1_epi32(u0), b1 = _mm256_set1_epi32(u1);
            __m256i w = _mm256_loadu_si256((const __m256i *)pp);
            a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(w, b0));
            a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(w, b1));
            w = _mm256_loadu_si256((const __m256i *)(pp + 8));
            a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(w, b0));
            a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(w, b1));
            w = _mm256_loadu_si256((const __m256i *)(pp + 16));
            a02 = _mm256_add_epi32(a02, _mm256_madd_epi16(w, b0));
            a12 = _mm256_add_epi32(a12, _mm256_madd_epi16(w, b1));
            w = _mm256_loadu_si256((const __m256i *)(pp + 24));
            a03 = _mm256_add_epi32(a03, _mm256_madd_epi16(w, b0));
            a13 = _mm256_add_epi32(a13, _mm256_madd_epi16(w, b1));
        }
        const __m256i a[TT][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            const __m256 d = _mm256_set1_ps(dt[b * TT + t]), sx = _mm256_set1_ps(st[b * TT + t]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                __m256 acc = _mm256_loadu_ps(f + t * PR + 8 * v);
                const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(ps + b * PR + 8 * v), d);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[t][v]), s, acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(pb + b * PR + 8 * v), sx, acc);
                _mm256_storeu_ps(f + t * PR + 8 * v, acc);
            }
        }
    }
}

bool nmlx_avx2_quant_matmat16(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                              int64_t d1) {
    const int64_t N = w->cols, D = w->rows, G = N / w->group_size, gp = w->group_size / 2;
    const int64_t tiles = (T + TT - 1) / TT;
    /* the stripe's codes (N / 2 pairs x 32 rows) and scales / biases
     * (G x 32 each), x16 (T x N), the steps and sums of x per tile
     * ([tile][G][TT] each) */
    const size_t n_st = (size_t)(N / 2 * PR), n_sc = (size_t)(G * PR), n_xq = (size_t)(T * N),
                 n_dt = (size_t)(tiles * G * TT);
    char *buf = malloc(n_st * 4 + 2 * n_sc * 4 + 2 * n_dt * 4 + n_xq * 2 + (size_t)G * 8);
    if (!buf) return false;
    int32_t *stripe = (int32_t *)(void *)buf;
    float *ps = (float *)(void *)(stripe + n_st), *pb = ps + n_sc, *dt = pb + n_sc, *st = dt + n_dt;
    float *dxr = st + n_dt, *sxr = dxr + G;
    int16_t *xq = (int16_t *)(void *)(sxr + G);
    memset(dt, 0, n_dt * 4 * 2);
    for (int64_t t = 0; t < T; t++) {
        nmlx_avx2_qint16_quantize_row(x + t * N, N, w->group_size, xq + t * N, dxr, sxr);
        for (int64_t g = 0; g < G; g++) {
            dt[((t / TT) * G + g) * TT + t % TT] = dxr[g];
            st[((t / TT) * G + g) * TT + t % TT] = sxr[g];
        }
    }
    float f[TT * PR];
    for (int64_t r0 = d0; r0 < d1; r0 += PR) {
        const int nr = d1 - r0 < PR ? (int)(d1 - r0) : PR;
        for (int64_t k0 = 0; k0 < N; k0 += PK) {
            const int64_t nk = N - k0 < PK ? N - k0 : PK;
            fill_panel(w, r0, nr, k0, nk, stripe + k0 / 2 * PR, ps + k0 / w->group_size * PR,
                       pb + k0 / w->group_size * PR);
        }
        for (int64_t t = 0, i = 0; t < T; t += TT, i++) {
            const int M = T - t < TT ? (int)(T - t) : TT;
            memset(f, 0, sizeof f);
            tile2(stripe, G, gp, xq + t * N, xq + (t + M - 1) * N, ps, pb, dt + i * G * TT,
                  st + i * G * TT, f);
            for (int m = 0; m < M; m++)
                memcpy(y + (t + m) * D + r0, f + m * PR, (size_t)nr * sizeof(float));
        }
    }
    free(buf);
    return true;
}

/* ------------------------------------------------------------ the pick */

/* Whether the avx2 set takes this kernel by default: measured once per
 * process against its f32 prefill (CPU time of this thread, best of 5, a
 * cache-resident 128 x 1024 affine 4-bit weight over 48 tokens); taken
 * unless clearly slower (1.25x), being as accurate. NMLX_QUANT_INT16=0 / 1
 * forces it; NMLX_QUANT_PICK_LOG=1 prints the timings. */
static bool g_on;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void measure(void) {
    const char *e = getenv("NMLX_QUANT_INT16");
    if (e && *e) {
        g_on = strcmp(e, "0") != 0;
        return;
    }
    g_on = true;
    /* this machine's earlier measurement (pick_cache.h): every run takes
     * the same kernel; NMLX_QUANT_PICK_LOG measures again */
    const bool log = getenv("NMLX_QUANT_PICK_LOG") != NULL;
    int cached;
    if (!log && nmlx_pick_cache_load("avx2", "", &cached, 1) && (cached == 0 || cached == 1)) {
        g_on = cached;
        return;
    }
    enum { PD = 128, PN = 1024, PT = 48 };
    uint32_t *q = malloc((size_t)PD * PN / 8 * 4);
    uint16_t *s = malloc((size_t)PD * PN / 64 * 2);
    float *x = malloc((size_t)PT * PN * 4), *y = malloc((size_t)PT * PD * 4);
    if (q && s && x && y) {
        uint32_t st = 2463534242u;
        for (int64_t i = 0; i < PD * PN / 8; i++)
            st ^= st << 13, st ^= st >> 17, st ^= st << 5, q[i] = st;
        for (int64_t i = 0; i < PD * PN / 64; i++)
            s[i] = nmlx_f32_to_bf16(0.01f);
        for (int64_t i = 0; i < PT * PN; i++)
            x[i] = (float)(i % 17) * 0.01f - 0.08f;
        const nmlx_weight w = {
            .w = {.dtype = NMLX_DT_U32, .ndim = 2, .shape = {PD, PN / 8}, .data = q},
            .scales = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {PD, PN / 64}, .data = s},
            .biases = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {PD, PN / 64}, .data = s},
            .mode = NMLX_QUANT_AFFINE,
            .bits = 4,
            .group_size = 64,
            .rows = PD,
            .cols = PN};
        double best[2] = {1e30, 1e30};
        for (int rep = 0; rep < 5; rep++)
            for (int k = 0; k < 2; k++) {
                double t0 = nmlx_thread_cpu_seconds();
                if (k)
                    nmlx_avx2_quant_matmat16(&w, x, y, PT, 0, PD);
                else
                    nmlx_avx2_matmul_rows(&w, x, y, PT, 0, PD);
                double t = nmlx_thread_cpu_seconds() - t0;
                best[k] = t < best[k] ? t : best[k];
            }
        g_on = best[1] <= 1.25 * best[0];
        nmlx_pick_cache_store("avx2", "", &(int){g_on}, 1);
        if (log)
            fprintf(stderr, "nmlx avx2 pick (ms): quantized prefill f32 %.3g int16 %.3g -> %s\n",
                    1e3 * best[0], 1e3 * best[1], g_on ? "int16" : "f32");
    }
    free(q), free(s), free(x), free(y);
}

bool nmlx_avx2_quant_int16_default(void) {
    pthread_once(&g_once, measure);
    return g_on;
}
