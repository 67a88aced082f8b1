/* cuda_internal.h's device helpers as host C++, for the CPU emulations that
 * compile kernel headers on warp_emu.h (qgemv16_emu.cpp, gemv_norm_emu.cpp):
 * the same arithmetic, each product rounded on its own (the emulations are
 * built without FMA contraction). Include after warp_emu.h. */
#ifndef NMLX_TESTS_CUDA_EMU_HELPERS_H
#define NMLX_TESTS_CUDA_EMU_HELPERS_H

#include <cmath>
#include <cstdint>

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }

static inline float cuda_act1(nmlx_act act, float x) {
    switch (act) {
    case NMLX_ACT_SILU: return x / (1.0f + expf(-x));
    case NMLX_ACT_GELU_TANH: {
        const float c = 0.7978845608028654f;
        float u = c * (x + 0.044715f * x * x * x);
        return x / (1.0f + expf(-2.0f * u));
    }
    case NMLX_ACT_GELU_ERF: return 0.5f * x * erfcf(x * -0.7071067811865476f);
    }
    return x;
}
static inline float cuda_load_f32(nmlx_dtype dt, const void *p, int64_t i) {
    if (dt == NMLX_DT_BF16) return __uint_as_float((unsigned)((const unsigned short *)p)[i] << 16);
    if (dt == NMLX_DT_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}
static inline void cuda_rope_pair(float x0, float x1, double pos, float freq, float mscale,
                                  float *o0, float *o1) {
    const double t = pos * (double)freq;
    const float cf = (float)cos(t), sf = (float)sin(t);
    *o0 = __fmul_rn(__fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)), mscale);
    *o1 = __fmul_rn(__fadd_rn(__fmul_rn(x1, cf), __fmul_rn(x0, sf)), mscale);
}

#endif
