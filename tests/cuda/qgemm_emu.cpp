/* cuda_qgemm.cu's element kernels run on the CPU (warp_emu.h: each CUDA
 * thread a fiber): the row-chunk dequantization (qg_dequant_kernel, with
 * and without its lo half) and the joins of the GEMM outputs
 * (qg_join_kernel, qg_join_act_kernel), launched on the grids the host code
 * gives them (qg_grid2), here also on grids smaller than the work so the
 * kernels' loops over rows and tokens run. What the cuBLAS GEMMs between them
 * do is checked on a GPU (test_cuda_qgemm, test_cuda_fused); this checks the
 * index math, the f16 pair layout and the expressions against a plain loop:
 *  - dequantization: wh[r, k] = f16((s q + b) rs[r]) (MXFP4: s (q 2^14) rs[r]),
 *    wl[r, k] = f16(that - wh) with LO, bit for bit, the nonzero-lo flag set
 *    exactly when some lo is nonzero; 2-8 bit affine codes, MXFP4; group
 *    32/64/128; f32/f16/bf16 scales; rows from d0 > 0;
 *  - joins: y[t, d0 + r] = v ir[r] ix[t] + bias[d0 + r] bit for bit (v the
 *    sum of the GEMM outputs the form has), rows outside [d0, d0 + n) left
 *    alone; the act join equals act(join(gate)) * join(up) bit for bit.
 * Built and run by tests/qgemm_emu.cmake in every build (no GPU or CUDA
 * toolkit needed). Planted bugs it caught (by hand, session 19): the f16
 * pair's halves swapped (11 of 21 cases fail), the row loop's stride
 * doubled (3: the grids smaller than the work), act applied to up instead
 * of gate (10). */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "warp_emu.h"

/* the f16 pair built-ins the dequantization uses, on warp_emu.h's __half
 * (round to nearest even, as the GPU's cvt.rn.f16x2.f32) */
struct alignas(4) __half2 {
    __half x, y;
};
inline __half2 __floats2half2_rn(float a, float b) {
    return {__float2half_rn(a), __float2half_rn(b)};
}
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }

#include "compute/backend.h" /* nmlx_act */
#include "compute/tensor.h"  /* nmlx_dtype */

/* cuda_internal.h's device helpers the kernels use, as it defines them */
inline float cuda_load_f32(nmlx_dtype dt, const void *p, int64_t i) {
    if (dt == NMLX_DT_BF16) return bf2f(((const uint16_t *)p)[i]);
    if (dt == NMLX_DT_F16) return (float)h2d(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}
inline float cuda_act1(nmlx_act act, float x) {
    return act == NMLX_ACT_SILU ? x / (1.0f + expf(-x))
                                : 0.5f * x * erfcf(x * -0.7071067811865476f);
}
inline int atomicOr(int *p, int v) {
    const int old = *p;
    *p = old | v;
    return old;
}

using std::isfinite;
#include "compute/cuda/cuda_qgemm.cu"

static int failures, cases;

static void put(nmlx_dtype dt, void *p, int64_t i, float v) {
    if (dt == NMLX_DT_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = dt == NMLX_DT_F16 ? d2h(v) : f2bf(v);
}

static uint16_t half_bits(float f) {
    const __half h = __float2half_rn(f);
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

/* the value of code q as qg_dequant_kernel forms it (the MXFP4 E2M1 table) */
static float code_value(bool mx, uint32_t q) {
    static const float e2m1[16] = {0,     0.5f,  1,  1.5f,  2,  3,  4,  6,
                                   -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    return mx ? e2m1[q & 15] * 0x1p-14f : (float)q;
}

template <int BITS, bool MX, bool LO>
static void dequant_case(nmlx_dtype sdt, int gs, int64_t D, int64_t N, int64_t d0, int64_t n,
                         dim3 grid) {
    cases++;
    const int64_t G = N / gs, RB = N * BITS / 8;
    std::vector<uint32_t> w((size_t)(D * RB / 4) + 2);
    for (auto &v : w)
        v = emu_next32();
    std::vector<unsigned char> sc((size_t)(D * G) * 4), bi((size_t)(D * G) * 4);
    for (int64_t i = 0; i < D * G; i++) {
        if (MX)
            sc[(size_t)i] = (unsigned char)(127 + (int)emu_urand(-6, 6));
        else
            put(sdt, sc.data(), i, emu_urand(0.001f, 0.05f)),
                put(sdt, bi.data(), i, emu_urand(-0.4f, 0.1f));
    }
    std::vector<float> rs((size_t)n);
    for (auto &v : rs)
        v = ldexpf(1.0f, (int)emu_urand(-3, 4));
    std::vector<__half> wh((size_t)(n * N)), wl((size_t)(n * N));
    int nz = 0;
    int gshift = 0;
    while ((8 << gshift) < gs)
        gshift++;
    emu_launch(grid, QG_THREADS, 0, [&] {
        qg_dequant_kernel<BITS, MX, LO>(w.data(), sc.data(), bi.data(), sdt, gshift, N, d0, n,
                                        rs.data(), wh.data(), LO ? wl.data() : NULL,
                                        LO ? &nz : NULL);
    });
    int bad = 0, any_lo = 0;
    for (int64_t r = 0; r < n && bad < 3; r++)
        for (int64_t k = 0; k < N && bad < 3; k++) {
            const int64_t d = d0 + r, g = d * G + k / gs;
            const uint8_t *row = (const uint8_t *)w.data() + d * RB;
            uint64_t bitsv = 0; /* the code of input k: bits k BITS of the row, little-endian */
            for (int b = 0; b < BITS; b++) {
                const int64_t at = k * BITS + b;
                bitsv |= (uint64_t)((row[at / 8] >> (at % 8)) & 1) << b;
            }
            float s, b;
            if (MX)
                s = e8m0_f32(sc[(size_t)g]), b = 0.0f;
            else
                s = cuda_load_f32(sdt, sc.data(), g), b = cuda_load_f32(sdt, bi.data(), g);
            const float q = code_value(MX, (uint32_t)bitsv);
            const float f = (MX ? s * (q * 16384.0f) : s * q + b) * rs[(size_t)r];
            const uint16_t hw = half_bits(f);
            const float lo = f - (float)h2d(hw);
            const uint16_t lw = half_bits(lo);
            any_lo |= h2d(lw) != 0.0;
            uint16_t got_h, got_l;
            memcpy(&got_h, &wh[(size_t)(r * N + k)], 2);
            memcpy(&got_l, &wl[(size_t)(r * N + k)], 2);
            if (got_h != hw || (LO && got_l != lw)) {
                fprintf(stderr,
                        "dequant %d-bit%s lo=%d g%d D=%lld N=%lld d0=%lld row %lld input %lld: hi "
                        "%04x want %04x, lo %04x want %04x\n",
                        BITS, MX ? " mxfp4" : "", (int)LO, gs, (long long)D, (long long)N,
                        (long long)d0, (long long)r, (long long)k, got_h, hw, got_l, lw);
                bad++;
            }
        }
    if (LO && (nz != 0) != (any_lo != 0)) {
        fprintf(stderr, "dequant %d-bit lo flag %d, a nonzero lo %d\n", BITS, nz, any_lo);
        bad++;
    }
    failures += bad != 0;
}

static void join_case(int64_t n, int64_t T, int64_t D, int64_t d0, bool xlo, bool cl_on, bool bias,
                      dim3 grid) {
    cases++;
    std::vector<float> c((size_t)(n * 2 * T)), cl((size_t)(n * T)), ix((size_t)T), ir((size_t)n),
        lb((size_t)D), cu((size_t)(n * T)), iru((size_t)n), ub((size_t)D);
    for (auto *v : {&c, &cl, &lb, &cu, &ub})
        for (auto &e : *v)
            e = emu_urand(-3, 3);
    for (auto *v : {&ix, &ir, &iru})
        for (auto &e : *v)
            e = ldexpf(1.0f, (int)emu_urand(-4, 5));
    const float sentinel = 1234.5f;
    std::vector<float> y((size_t)(T * D), sentinel), ya((size_t)(T * D), sentinel);
    emu_launch(grid, QG_THREADS, 0, [&] {
        qg_join_kernel(c.data(), cl_on ? cl.data() : NULL, xlo, n, T, ix.data(), ir.data(),
                       y.data(), D, d0, bias ? lb.data() : NULL, NMLX_DT_F32);
    });
    emu_launch(grid, QG_THREADS, 0, [&] {
        qg_join_act_kernel(NMLX_ACT_SILU, c.data(), cu.data(), n, T, ix.data(), ir.data(),
                           iru.data(), ya.data(), D, d0, bias ? lb.data() : NULL, NMLX_DT_F32,
                           bias ? ub.data() : NULL, NMLX_DT_F32);
    });
    int bad = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            const float got = y[(size_t)(t * D + d)], gota = ya[(size_t)(t * D + d)];
            float want = sentinel, wanta = sentinel;
            if (d >= d0 && d < d0 + n) {
                const int64_t r = d - d0, i = t * n + r;
                float v = xlo ? c[(size_t)i] + c[(size_t)(T * n + i)] : c[(size_t)i];
                if (cl_on) v += cl[(size_t)i];
                want = v * ir[(size_t)r] * ix[(size_t)t] + (bias ? lb[(size_t)d] : 0.0f);
                const float g =
                    c[(size_t)i] * ir[(size_t)r] * ix[(size_t)t] + (bias ? lb[(size_t)d] : 0.0f);
                const float u =
                    cu[(size_t)i] * iru[(size_t)r] * ix[(size_t)t] + (bias ? ub[(size_t)d] : 0.0f);
                wanta = cuda_act1(NMLX_ACT_SILU, g) * u;
            }
            if ((f2u(got) != f2u(want) || f2u(gota) != f2u(wanta)) && bad++ < 3)
                fprintf(stderr,
                        "join n=%lld T=%lld D=%lld d0=%lld xlo=%d cl=%d bias=%d at (%lld, %lld): "
                        "%g / %g, want %g / %g\n",
                        (long long)n, (long long)T, (long long)D, (long long)d0, xlo, cl_on, bias,
                        (long long)t, (long long)d, got, gota, want, wanta);
        }
    failures += bad != 0;
}

int main() {
    /* the host's grids, then grids smaller than the work (loops over rows / tokens) */
    dequant_case<4, false, false>(NMLX_DT_BF16, 64, 40, 512, 3, 37, qg_grid2(37, 512 / 8));
    dequant_case<4, false, true>(NMLX_DT_BF16, 64, 40, 512, 0, 40, qg_grid2(40, 512 / 8));
    dequant_case<8, false, false>(NMLX_DT_F16, 32, 21, 768, 5, 16, qg_grid2(16, 768 / 8));
    dequant_case<8, false, true>(NMLX_DT_F32, 128, 9, 2304, 1, 8, dim3(2, 3));
    dequant_case<3, false, false>(NMLX_DT_BF16, 32, 17, 256, 2, 15, dim3(1, 4));
    dequant_case<3, false, true>(NMLX_DT_F16, 64, 12, 384, 0, 12, qg_grid2(12, 384 / 8));
    dequant_case<2, false, false>(NMLX_DT_BF16, 128, 10, 512, 4, 6, qg_grid2(6, 512 / 8));
    dequant_case<5, false, true>(NMLX_DT_BF16, 32, 11, 256, 1, 10, qg_grid2(10, 256 / 8));
    dequant_case<6, false, false>(NMLX_DT_F32, 64, 13, 640, 0, 13, dim3(1, 5));
    dequant_case<4, true, false>(NMLX_DT_F32, 32, 14, 2112, 6, 8, qg_grid2(8, 2112 / 8));
    dequant_case<4, true, true>(NMLX_DT_F32, 32, 9, 256, 0, 9, qg_grid2(9, 256 / 8));
    for (int xlo = 0; xlo < 2; xlo++)
        for (int cl = 0; cl < 2; cl++)
            for (int bias = 0; bias < 2; bias++)
                join_case(300, 5, 700, 123, xlo, cl, bias, qg_grid2(5, 300));
    join_case(77, 33, 77, 0, false, false, true, qg_grid2(33, 77));
    join_case(600, 9, 1000, 400, false, false, true, dim3(1, 2));
    printf("qgemm_emu: %d cases, %d failed\n", cases, failures);
    return failures != 0;
}
