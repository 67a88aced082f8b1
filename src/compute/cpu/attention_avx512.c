/* AVX-512 prefill attention, flash style (cpu_kernels.attn_flash, called by
 * cpu_attention.c for T >= 4 on the avx512 sets): one call is one work item,
 * a block of up to NMLX_ATTN_FLASH_ROWS (32) query rows = nq queries x the g
 * query heads of one KV head (row r = query r / g, head r % g), against the
 * keys that any of them sees, KB keys at a time:
 *
 *   S^T = K_blk Q^T   keys x rows: the rows lie along the vector lanes (Q
 *                     transposed once per item), each key's element a
 *                     broadcast, 8 keys x 32 rows (16 zmm accumulators) or
 *                     16 keys x 16 rows a register tile, scale applied at
 *                     the store (as the row kernels: scale * (q . k));
 *   online softmax    per row lane: the mask (lo_r <= j <= hi_r: causal,
 *                     window, n_kv) as compares on the key index, running
 *                     max m and sum l, e^x vectorised (exp16, cephes expf's
 *                     polynomial, 2^n by vscalefps; <= 2 ulp), a sink starts
 *                     a row at m = sink, l = 1; softcap, where on, with
 *                     libm tanhf on the block's scores (as the row path);
 *   O = alpha O + P V rows x HD in 4-row x 64-lane register tiles, O kept
 *                     in the item's buffer, each key's probability a
 *                     broadcast.
 *
 * So no masked upper-triangle block is computed (only the item's own
 * diagonal), no horizontal sums, no scores array over n_kv; half caches
 * (f16 / bf16) are widened into f32 once per KV head and thread where that
 * fits (nmlx_attn_wide: 13% of the time at T = 512 when done per key block
 * and item), else per key block; f32 caches are read in place. All f32. Rows with nothing visible
 * give zeros (the row path's contract). HD % 16 == 0, HD <= NMLX_ATTN_FLASH_HD_MAX, g <= 32. */
#include "compute/cpu/cpu_internal.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { FR = NMLX_ATTN_FLASH_ROWS, KB = NMLX_ATTN_FLASH_KEYS };
#ifndef QK_KEYS2
#define QK_KEYS2 8 /* 12 (24 accumulators) measured 2% slower */
#endif

#define AI static inline __attribute__((always_inline))

/* e^x (cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-7 polynomial, 2^n by
 * vscalefps). x is clamped at -104 (e^-104 rounds to 0, and -inf / NaN lanes
 * of masked keys become 0 rather than NaN). */
AI __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

void nmlx_avx512_exp(float *x, int64_t n) { /* tests: exp16's accuracy */
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, exp16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* st[c * FR + 16 v + lane] = scale * q_(16 v + lane) . k_c for c < KC, v <
 * NV (qt = Q^T, FR floats a dimension); keys past nk repeat the last one (the
 * caller ignores their scores) so a tail reads no row outside the block */
AI void qk_tile(int NV, int KC, const float *qt, const float *k, int64_t HD, int64_t nk,
                float scale, float *st) {
    const float *kr[16];
#pragma GCC unroll 16
    for (int c = 0; c < KC; c++)
        kr[c] = k + (c < nk ? c : nk - 1) * HD;
    __m512 acc[16][2];
#pragma GCC unroll 16
    for (int c = 0; c < KC; c++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            acc[c][v] = _mm512_setzero_ps();
    for (int64_t d = 0; d < HD; d++) {
        __m512 q[2];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            q[v] = _mm512_loadu_ps(qt + d * FR + 16 * v);
#pragma GCC unroll 16
        for (int c = 0; c < KC; c++) {
            const __m512 kb = _mm512_set1_ps(kr[c][d]);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                acc[c][v] = _mm512_fmadd_ps(q[v], kb, acc[c][v]);
        }
    }
    const __m512 sv = _mm512_set1_ps(scale);
#pragma GCC unroll 16
    for (int c = 0; c < KC; c++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(st + c * FR + 16 * v, _mm512_mul_ps(acc[c][v], sv));
}

/* o[rr * HD + 16 w ..] = alpha[rr] o[..] + sum_c p[c * FR + rr] v[c * HD + 16 w ..]
 * for rr < NR, w < NW, c < kb */
AI void pv_tile(int NR, int NW, const float *p, const float *v, int64_t HD, int64_t kb,
                const float *alpha, float *o) {
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) {
        const __m512 al = _mm512_set1_ps(alpha[r]);
#pragma GCC unroll 4
        for (int w = 0; w < NW; w++)
            acc[r][w] = _mm512_mul_ps(_mm512_loadu_ps(o + r * HD + 16 * w), al);
    }
    for (int64_t c = 0; c < kb; c++) {
        __m512 x[4];
#pragma GCC unroll 4
        for (int w = 0; w < NW; w++)
            x[w] = _mm512_loadu_ps(v + c * HD + 16 * w);
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++) {
            const __m512 pb = _mm512_set1_ps(p[c * FR + r]);
#pragma GCC unroll 4
            for (int w = 0; w < NW; w++)
                acc[r][w] = _mm512_fmadd_ps(pb, x[w], acc[r][w]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int w = 0; w < NW; w++)
            _mm512_storeu_ps(o + r * HD + 16 * w, acc[r][w]);
}

static void qk_2(const float *qt, const float *k, int64_t HD, int64_t nk, float s, float *st) {
    qk_tile(2, QK_KEYS2, qt, k, HD, nk, s, st);
}
static void qk_1_16(const float *qt, const float *k, int64_t HD, int64_t nk, float s, float *st) {
    qk_tile(1, 16, qt, k, HD, nk, s, st);
}
typedef void (*pv_fn)(const float *, const float *, int64_t, int64_t, const float *, float *);
#define PV_FN(R, W)                                                                                \
    static void pv_##R##_##W(const float *p, const float *v, int64_t HD, int64_t kb,               \
                             const float *al, float *o) {                                          \
        pv_tile(R, W, p, v, HD, kb, al, o);                                                        \
    }
PV_FN(6, 1)
PV_FN(6, 2)
PV_FN(6, 3)
PV_FN(6, 4)
PV_FN(4, 1)
PV_FN(4, 2)
PV_FN(4, 3)
PV_FN(4, 4)
PV_FN(2, 1)
PV_FN(2, 2)
PV_FN(2, 3)
PV_FN(2, 4)
#undef PV_FN
static const pv_fn pv6_fns[4] = {pv_6_1, pv_6_2, pv_6_3, pv_6_4};
static const pv_fn pv4_fns[4] = {pv_4_1, pv_4_2, pv_4_3, pv_4_4};
static const pv_fn pv2_fns[4] = {pv_2_1, pv_2_2, pv_2_3, pv_2_4};

/* rows [0, kb) of the cache block from row j0, widened to f32 */
static void widen(nmlx_dtype dt, const uint16_t *src, int64_t kb, int64_t HD, float *dst) {
    const int64_t n = kb * HD; /* HD % 16 == 0 */
    if (dt == NMLX_DT_F16)
        for (int64_t i = 0; i < n; i += 16)
            _mm512_storeu_ps(dst + i,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    else
        for (int64_t i = 0; i < n; i += 16)
            _mm512_storeu_ps(
                dst + i,
                _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i))), 16)));
}

bool nmlx_avx512_attn_flash_ok(int64_t HD, int64_t g) {
    return HD % 16 == 0 && HD > 0 && HD <= NMLX_ATTN_FLASH_HD_MAX && g >= 1 && g <= FR;
}

void nmlx_avx512_attn_flash(const nmlx_attn_args *a, int64_t t0, int64_t kvh, int64_t g, float *buf,
                            nmlx_attn_wide *wide) {
    const int64_t HD = a->HD, nq_max = FR / g, h0 = kvh * g;
    const int64_t nq = a->T - t0 < nq_max ? a->T - t0 : nq_max, R = nq * g;
    const int NV = R > 16 ? 2 : 1;
    const int64_t RT = (R + 1) & ~(int64_t)1; /* rows of the P V tiles */
    float *qt = buf;                          /* [HD][FR]: Q^T */
    float *ob = qt + HD * FR;                 /* [FR][HD]: unnormalised O */
    float *st = ob + FR * HD; /* [KB + 16][FR]: scores, then probabilities (+ a tile's tail) */
    float *kf = st + (KB + 16) * FR; /* [KB][HD] x 2: a half cache's block widened */
    float *vf = kf + KB * HD;
    float alpha[FR] __attribute__((aligned(64))), lsum[FR] __attribute__((aligned(64)));
    int32_t lo[FR] __attribute__((aligned(64))), hi[FR] __attribute__((aligned(64)));
    int64_t jlo = INT64_MAX, jhi = -1;
    for (int64_t r = 0; r < FR; r++) {
        lo[r] = 1, hi[r] = 0; /* padding rows see nothing */
        if (r >= R) continue;
        const int64_t qi = a->q_pos + t0 + r / g;
        const int64_t h = qi < a->n_kv - 1 ? qi : a->n_kv - 1;
        const int64_t l = a->window > 0 && qi - a->window + 1 > 0 ? qi - a->window + 1 : 0;
        if (l > h) continue;
        lo[r] = (int32_t)l, hi[r] = (int32_t)h;
        jlo = l < jlo ? l : jlo;
        jhi = h > jhi ? h : jhi;
    }
    if (jhi < 0) { /* nothing visible to any row */
        for (int64_t r = 0; r < R; r++)
            memset(a->out + ((t0 + r / g) * a->H + h0 + r % g) * HD, 0, (size_t)HD * sizeof(float));
        return;
    }
    { /* Q^T: a gather of 16 rows' element d per vector */
        int32_t off[FR] __attribute__((aligned(64)));
        for (int64_t r = 0; r < FR; r++)
            off[r] = r < R ? (int32_t)(((r / g) * a->H + r % g) * HD) : 0;
        const float *q0 = a->q + (t0 * a->H + h0) * HD;
        for (int v = 0; v < 2; v++) {
            const __m512i ix = _mm512_load_si512(off + 16 * v);
            const __mmask16 mv = (__mmask16)(R >= 16 * (v + 1) ? 0xFFFF
                                             : R <= 16 * v     ? 0
                                                               : (1u << (R - 16 * v)) - 1);
            for (int64_t d = 0; d < HD; d++)
                _mm512_storeu_ps(qt + d * FR + 16 * v,
                                 _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mv, ix, q0 + d, 4));
        }
    }
    memset(ob, 0, (size_t)(FR * HD) * sizeof(float));
    __m512 m[2], l[2];
    for (int v = 0; v < 2; v++) {
        m[v] = _mm512_set1_ps(-INFINITY), l[v] = _mm512_setzero_ps();
        if (a->sinks) {
            float sk[16];
            for (int i = 0; i < 16; i++)
                sk[i] = a->sinks[h0 + (16 * v + i) % g];
            m[v] = _mm512_loadu_ps(sk), l[v] = _mm512_set1_ps(1.0f);
        }
    }
    const bool half = a->kv_dtype != NMLX_DT_F32;
    const int64_t base = kvh * a->cap * HD;
    const __m512 ninf = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
    for (int64_t j0 = jlo; j0 <= jhi; j0 += KB) {
        const int64_t kb = jhi - j0 + 1 < KB ? jhi - j0 + 1 : KB;
        const float *K, *V;
        if (half && wide) { /* the KV head widened once for the thread's items on it */
            if (wide->kvh != kvh) {
                widen(a->kv_dtype, a->k16 + base + wide->j0 * HD, wide->n, HD, wide->k);
                widen(a->kv_dtype, a->v16 + base + wide->j0 * HD, wide->n, HD, wide->v);
                wide->kvh = kvh;
            }
            K = wide->k + (j0 - wide->j0) * HD, V = wide->v + (j0 - wide->j0) * HD;
        } else if (half) {
            widen(a->kv_dtype, a->k16 + base + j0 * HD, kb, HD, kf);
            widen(a->kv_dtype, a->v16 + base + j0 * HD, kb, HD, vf);
            K = kf, V = vf;
        } else {
            K = a->k + base + j0 * HD, V = a->v + base + j0 * HD;
        }
        if (NV == 2)
            for (int64_t c = 0; c < kb; c += QK_KEYS2)
                qk_2(qt, K + c * HD, HD, kb - c < QK_KEYS2 ? kb - c : QK_KEYS2, a->scale,
                     st + c * FR);
        else
            for (int64_t c = 0; c < kb; c += 16)
                qk_1_16(qt, K + c * HD, HD, kb - c < 16 ? kb - c : 16, a->scale, st + c * FR);
        if (a->softcap > 0) {
            const float cap = a->softcap, inv = 1.0f / cap;
            for (int64_t c = 0; c < kb; c++)
                for (int64_t r = 0; r < R; r++)
                    st[c * FR + r] = tanhf(st[c * FR + r] * inv) * cap;
        }
        for (int v = 0; v < NV; v++) { /* online softmax, 16 rows a vector */
            const __m512i lov = _mm512_load_si512(lo + 16 * v),
                          hiv = _mm512_load_si512(hi + 16 * v);
            /* every lane sees every key of the block: no masks */
            const bool full = _mm512_cmp_epi32_mask(lov, _mm512_set1_epi32((int32_t)j0),
                                                    _MM_CMPINT_LE) == 0xFFFF &&
                              _mm512_cmp_epi32_mask(hiv, _mm512_set1_epi32((int32_t)(j0 + kb - 1)),
                                                    _MM_CMPINT_NLT) == 0xFFFF;
            __mmask16 mk[KB];
            __m512 mn = m[v];
            if (full)
                for (int64_t c = 0; c < kb; c++)
                    mn = _mm512_max_ps(mn, _mm512_loadu_ps(st + c * FR + 16 * v));
            else
                for (int64_t c = 0; c < kb; c++) {
                    const __m512i jv = _mm512_set1_epi32((int32_t)(j0 + c));
                    mk[c] = _mm512_cmp_epi32_mask(jv, lov, _MM_CMPINT_NLT) &
                            _mm512_cmp_epi32_mask(jv, hiv, _MM_CMPINT_LE);
                    mn = _mm512_mask_max_ps(mn, mk[c], mn, _mm512_loadu_ps(st + c * FR + 16 * v));
                }
            /* alpha = e^(m - mn), 0 where m was -inf (O and l are 0 there) */
            const __mmask16 fin = _mm512_cmp_ps_mask(m[v], ninf, _CMP_NEQ_OQ);
            const __m512 al = _mm512_maskz_mov_ps(fin, exp16(_mm512_sub_ps(m[v], mn)));
            const __m512 mr =
                _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mn, ninf, _CMP_NEQ_OQ), zero, mn);
            __m512 ls = zero;
            if (full)
                for (int64_t c = 0; c < kb; c++) {
                    float *s = st + c * FR + 16 * v;
                    const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(s), mr));
                    _mm512_storeu_ps(s, p);
                    ls = _mm512_add_ps(ls, p);
                }
            else
                for (int64_t c = 0; c < kb; c++) {
                    float *s = st + c * FR + 16 * v;
                    const __m512 p =
                        _mm512_maskz_mov_ps(mk[c], exp16(_mm512_sub_ps(_mm512_loadu_ps(s), mr)));
                    _mm512_storeu_ps(s, p);
                    ls = _mm512_add_ps(ls, p);
                }
            l[v] = _mm512_fmadd_ps(l[v], al, ls);
            m[v] = mn;
            _mm512_store_ps(alpha + 16 * v, al);
        }
        for (int64_t r0 = 0, nr; r0 < RT; r0 += nr) { /* 6-row tiles; 4, 2 at the end */
            const int64_t left = RT - r0;
            nr = left >= 6 && left != 8 ? 6 : left >= 4 ? 4 : 2;
            const pv_fn *fns = nr == 6 ? pv6_fns : nr == 4 ? pv4_fns : pv2_fns;
            for (int64_t d0 = 0; d0 < HD; d0 += 64) {
                const int nw = HD - d0 >= 64 ? 4 : (int)((HD - d0) / 16);
                fns[nw - 1](st + r0, V + d0, HD, kb, alpha + r0, ob + r0 * HD + d0);
            }
        }
    }
    for (int v = 0; v < NV; v++)
        _mm512_store_ps(lsum + 16 * v, l[v]);
    for (int64_t r = 0; r < R; r++) {
        float *out = a->out + ((t0 + r / g) * a->H + h0 + r % g) * HD;
        const float inv = lsum[r] > 0 ? 1.0f / lsum[r] : 0.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        for (int64_t d = 0; d < HD; d += 16)
            _mm512_storeu_ps(out + d, _mm512_mul_ps(_mm512_loadu_ps(ob + r * HD + d), iv));
    }
}
