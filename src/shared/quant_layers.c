/* Quantized weight loading (see quant_layers.h). */
#include "quant_layers.h"

#include "compute/quant.h"

#include <stdio.h>

nmlx_status nmlx_quant_weight_load(nmlx_weight *wt, const nmlx_weights *ws, const char *name,
                                   int64_t out, int64_t in) {
    char wk[512], sk[512], bk[512];
    snprintf(wk, sizeof wk, "%s.weight", name);
    snprintf(sk, sizeof sk, "%s.scales", name);
    snprintf(bk, sizeof bk, "%s.biases", name);
    const nmlx_tensor *w = nmlx_weights_find(ws, wk), *s = nmlx_weights_find(ws, sk);
    const nmlx_tensor *b = nmlx_weights_find(ws, bk);
    if (!w) return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s' is missing (its '%s' exists)", wk, sk);
    if (w->dtype != NMLX_DT_U32 || w->ndim != 2 || w->shape[0] != out)
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "tensor '%s': a quantized weight must be U32 [%lld, in*bits/32] (got %s, "
                         "rank %d, %lld rows)",
                         wk, (long long)out, nmlx_dtype_name(w->dtype), w->ndim,
                         (long long)w->shape[0]);
    if (s->ndim != 2 || s->shape[0] != out || s->shape[1] <= 0 || in % s->shape[1] != 0)
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "tensor '%s': shape must be [%lld, %lld / group_size] (got rank %d, "
                         "[%lld, %lld])",
                         sk, (long long)out, (long long)in, s->ndim, (long long)s->shape[0],
                         (long long)(s->ndim > 1 ? s->shape[1] : 0));
    nmlx_quant_mode mode = s->dtype == NMLX_DT_U8 ? NMLX_QUANT_MXFP4 : NMLX_QUANT_AFFINE;
    int64_t gs = in / s->shape[1], words = w->shape[1];
    int bits = (words * 32) % in == 0 ? (int)((words * 32) / in) : -1;
    if (!nmlx_quant_bits_ok(mode, bits) || !nmlx_quant_group_ok(mode, (int)gs))
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "tensor '%s': %lld words per row for %lld inputs and group size %lld is "
                         "not a supported %s quantization (affine bits 2,3,4,5,6,8 with group "
                         "32/64/128; mxfp4 4-bit group 32)",
                         wk, (long long)words, (long long)in, (long long)gs,
                         nmlx_quant_mode_name(mode));
    if (mode == NMLX_QUANT_AFFINE) {
        if (s->dtype != NMLX_DT_F32 && s->dtype != NMLX_DT_F16 && s->dtype != NMLX_DT_BF16)
            return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': scales must be F32, F16 or BF16 (got %s)",
                             sk, nmlx_dtype_name(s->dtype));
        if (!b)
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "tensor '%s' is missing (affine quantization needs scales and biases)",
                             bk);
        if (b->dtype != s->dtype || b->ndim != 2 || b->shape[0] != s->shape[0] ||
            b->shape[1] != s->shape[1])
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "tensor '%s': must have the dtype and shape of '%s' (%s [%lld, %lld])",
                             bk, sk, nmlx_dtype_name(s->dtype), (long long)s->shape[0],
                             (long long)s->shape[1]);
    }
    *wt = (nmlx_weight){.w = *w, .scales = *s, .mode = mode, .bits = bits, .group_size = (int)gs,
                        .rows = out, .cols = in};
    if (b) wt->biases = *b;
    return NMLX_OK;
}
