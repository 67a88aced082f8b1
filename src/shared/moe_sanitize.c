/* MoE weight sanitizer (see moe_sanitize.h). */
#include "moe_sanitize.h"

#include "compute/quant.h"
#include "layers.h"

#include <stdio.h>
#include <string.h>

static bool is_float(nmlx_dtype dt) {
    return dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16;
}

/* Expert e of a tensor with a leading expert axis, as a tensor of one less rank. */
static nmlx_tensor expert_slice(const nmlx_tensor *t, int64_t e) {
    nmlx_tensor v = *t;
    size_t per = nmlx_tensor_nbytes(t) / (size_t)t->shape[0];
    v.data = (char *)t->data + (size_t)e * per;
    v.ndim = t->ndim - 1;
    for (int i = 0; i < v.ndim; i++) v.shape[i] = t->shape[i + 1];
    v.shape[v.ndim] = 0;
    return v;
}

/* Layout 1: `<p>.experts.<e>.<proj>` for every expert. */
static nmlx_status load_per_expert(nmlx_switch_linear *l, const nmlx_weights *ws,
                                   const nmlx_moe_experts_spec *s, const char *proj) {
    char name[512];
    for (int64_t e = 0; e < l->n_experts; e++) {
        snprintf(name, sizeof name, "%s.experts.%lld.%s", s->prefix, (long long)e, proj);
        nmlx_linear lin;
        nmlx_status st = nmlx_linear_load(&lin, ws, name, l->out, l->in, s->bias);
        if (st) return st;
        l->w[e] = lin.w;
        if (s->bias) l->bias[e] = *lin.bias;
    }
    return NMLX_OK;
}

/* Layout 2: `<p>.<stacked>.<proj>.{weight,scales,biases,bias}` with a leading E axis. */
static nmlx_status load_stacked(nmlx_switch_linear *l, const nmlx_weights *ws,
                                const nmlx_moe_experts_spec *s, const char *proj) {
    char wk[512], sk[512], bk[512], bias_k[512];
    snprintf(wk, sizeof wk, "%s.%s.%s.weight", s->prefix, s->stacked, proj);
    snprintf(sk, sizeof sk, "%s.%s.%s.scales", s->prefix, s->stacked, proj);
    snprintf(bk, sizeof bk, "%s.%s.%s.biases", s->prefix, s->stacked, proj);
    snprintf(bias_k, sizeof bias_k, "%s.%s.%s.bias", s->prefix, s->stacked, proj);
    const nmlx_tensor *w = nmlx_weights_find(ws, wk), *sc = nmlx_weights_find(ws, sk);
    const nmlx_tensor *qb = nmlx_weights_find(ws, bk), *b = NULL;
    int64_t E = l->n_experts, out = l->out, in = l->in;
    if (!w) return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s' is missing", wk);
    if (w->ndim != 3 || w->shape[0] != E || w->shape[1] != out)
        return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': expected [%lld, %lld, ...] (rank %d)", wk,
                         (long long)E, (long long)out, w->ndim);
    nmlx_weight proto = {.mode = NMLX_QUANT_NONE, .rows = out, .cols = in};
    if (!sc) {
        if (!is_float(w->dtype) || w->shape[2] != in)
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "tensor '%s': expected F32/F16/BF16 [%lld, %lld, %lld] (got %s, "
                             "last dim %lld)",
                             wk, (long long)E, (long long)out, (long long)in,
                             nmlx_dtype_name(w->dtype), (long long)w->shape[2]);
    } else {
        nmlx_quant_mode mode = sc->dtype == NMLX_DT_U8 ? NMLX_QUANT_MXFP4 : NMLX_QUANT_AFFINE;
        bool shapes = w->dtype == NMLX_DT_U32 && sc->ndim == 3 && sc->shape[0] == E &&
                      sc->shape[1] == out && sc->shape[2] > 0 && in % sc->shape[2] == 0;
        if (mode == NMLX_QUANT_AFFINE)
            shapes = shapes && is_float(sc->dtype) && qb && qb->dtype == sc->dtype &&
                     qb->ndim == 3 && qb->shape[0] == E && qb->shape[1] == out &&
                     qb->shape[2] == sc->shape[2];
        int64_t gs = shapes ? in / sc->shape[2] : 0, words = w->shape[2];
        int bits = (words * 32) % in == 0 ? (int)(words * 32 / in) : -1;
        if (!shapes || !nmlx_quant_bits_ok(mode, bits) || !nmlx_quant_group_ok(mode, (int)gs))
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "tensors '%s' / '%s': not a supported quantized expert stack for "
                             "[%lld, %lld, %lld] (U32 weight, scales [E, out, in/group]%s)",
                             wk, sk, (long long)E, (long long)out, (long long)in,
                             mode == NMLX_QUANT_AFFINE ? ", biases like scales" : "");
        proto.mode = mode;
        proto.bits = bits;
        proto.group_size = (int)gs;
    }
    if (s->bias) {
        int64_t shape[2] = {E, out};
        nmlx_status st = nmlx_get_float_tensor(ws, bias_k, 2, shape, &b);
        if (st) return st;
    }
    for (int64_t e = 0; e < E; e++) {
        l->w[e] = proto;
        l->w[e].w = expert_slice(w, e);
        if (sc) l->w[e].scales = expert_slice(sc, e);
        if (sc && qb) l->w[e].biases = expert_slice(qb, e);
        if (b) l->bias[e] = expert_slice(b, e);
    }
    return NMLX_OK;
}

/* dst[c * R + r] = src[r * ld + c * step] for r < R, c < C, in 64 x 64
 * tiles (a cache-friendly transpose of a strided matrix), elements of es
 * bytes (2 or 4; anything else element by element). */
#define TRANSPOSE_TILED(T)                                                                  \
    for (int64_t r0 = 0; r0 < R; r0 += 64)                                                  \
        for (int64_t c0 = 0; c0 < C; c0 += 64)                                              \
            for (int64_t r = r0; r < R && r < r0 + 64; r++)                                 \
                for (int64_t c = c0; c < C && c < c0 + 64; c++)                             \
                    ((T *)dst)[c * R + r] = ((const T *)src)[r * ld + c * step];
static void transpose(void *dst, const void *src, int64_t R, int64_t C, int64_t ld, int64_t step,
                      size_t es) {
    if (es == 2) {
        TRANSPOSE_TILED(uint16_t)
    } else if (es == 4) {
        TRANSPOSE_TILED(uint32_t)
    } else {
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++)
                memcpy((char *)dst + (size_t)(c * R + r) * es,
                       (const char *)src + (size_t)(r * ld + c * step) * es, es);
    }
}

/* Layout 3 (gpt-oss HF): transpose + de-interleave into one backend buffer:
 * gate [E, H, D], up [E, H, D], down [E, D, H], gate/up biases [E, H] each
 * (down's bias [E, D] is used in place). H = hidden, D = in. */
static nmlx_status load_gpt_oss(nmlx_switch_glu *g, void **owned, const nmlx_weights *ws,
                                nmlx_backend *be, const nmlx_moe_experts_spec *s) {
    char gk[512], dk[512], gbk[512], dbk[512];
    int64_t E = s->n_experts, D = s->in, H = s->hidden;
    snprintf(gk, sizeof gk, "%s.experts.gate_up_proj", s->prefix);
    snprintf(dk, sizeof dk, "%s.experts.down_proj", s->prefix);
    snprintf(gbk, sizeof gbk, "%s.experts.gate_up_proj_bias", s->prefix);
    snprintf(dbk, sizeof dbk, "%s.experts.down_proj_bias", s->prefix);
    const nmlx_tensor *gu = NULL, *dn = NULL, *gub = NULL, *dnb = NULL;
    int64_t gu_shape[3] = {E, D, 2 * H}, dn_shape[3] = {E, H, D};
    int64_t gub_shape[2] = {E, 2 * H}, dnb_shape[2] = {E, D};
    nmlx_status st;
    if ((st = nmlx_get_float_tensor(ws, gk, 3, gu_shape, &gu))) return st;
    if ((st = nmlx_get_float_tensor(ws, dk, 3, dn_shape, &dn))) return st;
    if (dn->dtype != gu->dtype)
        return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': dtype %s differs from '%s' (%s)", dk,
                         nmlx_dtype_name(dn->dtype), gk, nmlx_dtype_name(gu->dtype));
    if (s->bias) {
        if ((st = nmlx_get_float_tensor(ws, gbk, 2, gub_shape, &gub))) return st;
        if ((st = nmlx_get_float_tensor(ws, dbk, 2, dnb_shape, &dnb))) return st;
        if (gub->dtype != gu->dtype)
            return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': dtype %s differs from '%s' (%s)", gbk,
                             nmlx_dtype_name(gub->dtype), gk, nmlx_dtype_name(gu->dtype));
    }
    size_t es = nmlx_dtype_size(gu->dtype);
    size_t mat = (size_t)(E * H * D), vec = (size_t)(E * H);
    size_t bytes = es * (3 * mat + (s->bias ? 2 * vec : 0));
    char *host = nmlx_malloc(bytes);
    char *dev = be->ops->alloc(be, bytes);
    if (!host || !dev) {
        nmlx_free(host);
        if (dev) be->ops->free(be, dev);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory repacking '%s' (%zu bytes)", gk, bytes);
    }
    char *gate = host, *up = host + es * mat, *down = host + 2 * es * mat;
    const char *src = gu->data, *dsrc = dn->data;
    for (int64_t e = 0; e < E; e++) {
        size_t o = (size_t)(e * H * D) * es;
        /* gate[e][h][d] = gate_up[e][d][2h], up[e][h][d] = gate_up[e][d][2h + 1] */
        transpose(gate + o, src + o * 2, D, H, 2 * H, 2, es);
        transpose(up + o, src + o * 2 + es, D, H, 2 * H, 2, es);
        /* down[e][d][h] = down_proj[e][h][d] */
        transpose(down + o, dsrc + o, H, D, D, 1, es);
    }
    if (s->bias) {
        char *gb = host + 3 * es * mat, *ub = gb + es * vec;
        for (int64_t i = 0; i < E * H; i++) {
            memcpy(gb + (size_t)i * es, (const char *)gub->data + (size_t)(2 * i) * es, es);
            memcpy(ub + (size_t)i * es, (const char *)gub->data + (size_t)(2 * i + 1) * es, es);
        }
    }
    be->ops->upload(be, dev, host, bytes);
    nmlx_free(host);
    for (int64_t e = 0; e < E; e++) {
        nmlx_tensor t = {.dtype = gu->dtype, .ndim = 2, .shape = {H, D}, .name = gk};
        t.data = dev + (size_t)(e * H * D) * es;
        g->gate.w[e] = (nmlx_weight){.w = t, .mode = NMLX_QUANT_NONE, .rows = H, .cols = D};
        t.data = dev + mat * es + (size_t)(e * H * D) * es;
        g->up.w[e] = (nmlx_weight){.w = t, .mode = NMLX_QUANT_NONE, .rows = H, .cols = D};
        nmlx_tensor td = {.dtype = gu->dtype, .ndim = 2, .shape = {D, H}, .name = dk};
        td.data = dev + 2 * mat * es + (size_t)(e * D * H) * es;
        g->down.w[e] = (nmlx_weight){.w = td, .mode = NMLX_QUANT_NONE, .rows = D, .cols = H};
        if (s->bias) {
            nmlx_tensor b = {.dtype = gu->dtype, .ndim = 1, .shape = {H}, .name = gbk};
            b.data = dev + 3 * mat * es + (size_t)(e * H) * es;
            g->gate.bias[e] = b;
            b.data = dev + (3 * mat + vec) * es + (size_t)(e * H) * es;
            g->up.bias[e] = b;
            g->down.bias[e] = expert_slice(dnb, e);
        }
    }
    *owned = dev;
    return NMLX_OK;
}

nmlx_status nmlx_moe_experts_load(nmlx_switch_glu *g, void **owned, const nmlx_weights *ws,
                                  nmlx_backend *be, const nmlx_moe_experts_spec *s) {
    char key[512];
    nmlx_status st = NMLX_OK;
    int64_t E = s->n_experts, D = s->in, H = s->hidden;
    *owned = NULL;
    memset(&g->gate, 0, sizeof g->gate);
    memset(&g->up, 0, sizeof g->up);
    memset(&g->down, 0, sizeof g->down);
    g->in = D;
    g->hidden = H;
    TRY(nmlx_switch_linear_init(&g->gate, E, D, H, s->bias));
    TRY(nmlx_switch_linear_init(&g->up, E, D, H, s->bias));
    TRY(nmlx_switch_linear_init(&g->down, E, H, D, s->bias));

    snprintf(key, sizeof key, "%s.%s.gate_proj.weight", s->prefix, s->stacked);
    bool stacked = nmlx_weights_find(ws, key) != NULL;
    snprintf(key, sizeof key, "%s.experts.gate_up_proj", s->prefix);
    bool fused = nmlx_weights_find(ws, key) != NULL;
    snprintf(key, sizeof key, "%s.experts.gate_up_proj_blocks", s->prefix);
    CHECK(!nmlx_weights_find(ws, key), NMLX_ERR_UNSUPPORTED,
          "tensor '%s': the HF MXFP4 expert layout is not supported; use a checkpoint in "
          "mlx-lm's layout (e.g. mlx-community) or the dequantized (bf16) HF weights",
          key);
    if (stacked) {
        TRY(load_stacked(&g->gate, ws, s, "gate_proj"));
        TRY(load_stacked(&g->up, ws, s, "up_proj"));
        TRY(load_stacked(&g->down, ws, s, "down_proj"));
    } else if (fused) {
        TRY(load_gpt_oss(g, owned, ws, be, s));
    } else {
        TRY(load_per_expert(&g->gate, ws, s, "gate_proj"));
        TRY(load_per_expert(&g->up, ws, s, "up_proj"));
        TRY(load_per_expert(&g->down, ws, s, "down_proj"));
    }
cleanup:
    if (st != NMLX_OK) {
        nmlx_moe_experts_free(g, *owned, be);
        *owned = NULL;
    }
    return st;
}

void nmlx_moe_experts_free(nmlx_switch_glu *g, void *owned, nmlx_backend *be) {
    nmlx_switch_linear_free(&g->gate);
    nmlx_switch_linear_free(&g->up);
    nmlx_switch_linear_free(&g->down);
    if (owned) be->ops->free(be, owned);
}
