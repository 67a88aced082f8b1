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

/* The backend's copy of a checkpoint view (backend.h prepare_tensor; the
 * CPU: t itself). Parts already in backend memory (the repacked layouts)
 * must not come here. */
static nmlx_status prepare_view(nmlx_backend *be, nmlx_tensor *t) {
    const nmlx_tensor *p = NULL;
    if (!t->data) return NMLX_OK;
    nmlx_status st = be->ops->prepare_tensor(be, t, &p);
    if (st == NMLX_OK) *t = *p;
    return st;
}

/* Every expert's weight (if weights) and bias (if bias and present) of l
 * handed to the backend. */
static nmlx_status prepare_experts(nmlx_switch_linear *l, nmlx_backend *be, bool weights,
                                   bool bias) {
    nmlx_status st = NMLX_OK;
    for (int64_t e = 0; st == NMLX_OK && e < l->n_experts; e++) {
        if (weights) st = nmlx_weight_prepare(be, &l->w[e]);
        if (st == NMLX_OK && bias && l->bias) st = prepare_view(be, &l->bias[e]);
    }
    return st;
}

/* A whole stacked tensor handed to the backend first, so the experts'
 * slices share its one copy (a device backend keys copies by host range). */
static nmlx_status prepare_whole(nmlx_backend *be, const nmlx_tensor *t) {
    const nmlx_tensor *p = NULL;
    return t ? be->ops->prepare_tensor(be, t, &p) : NMLX_OK;
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
static nmlx_status load_stacked(nmlx_switch_linear *l, const nmlx_weights *ws, nmlx_backend *be,
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
    const nmlx_tensor *whole[4] = {w, sc, qb, b};
    for (int i = 0; i < 4; i++) {
        nmlx_status st = prepare_whole(be, whole[i]);
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

/* Layout 3 (gpt-oss / Llama 4 HF): transpose + de-interleave (Llama 4: split
 * the halves) into one backend buffer: gate [E, H, D], up [E, H, D],
 * down [E, D, H], gate/up biases [E, H] each (down's bias [E, D] is used in
 * place). H = hidden, D = in. */
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
        if ((st = prepare_whole(be, dnb))) return st; /* used in place */
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
        if (s->gate_up_halves) {
            /* gate[e][h][d] = gate_up[e][d][h], up[e][h][d] = gate_up[e][d][H + h] */
            transpose(gate + o, src + o * 2, D, H, 2 * H, 1, es);
            transpose(up + o, src + o * 2 + (size_t)H * es, D, H, 2 * H, 1, es);
        } else {
            /* gate[e][h][d] = gate_up[e][d][2h], up[e][h][d] = gate_up[e][d][2h + 1] */
            transpose(gate + o, src + o * 2, D, H, 2 * H, 2, es);
            transpose(up + o, src + o * 2 + es, D, H, 2 * H, 2, es);
        }
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

/* A U8 tensor of the given shape; errors name it. */
static nmlx_status get_u8(const nmlx_weights *ws, const char *name, int ndim, const int64_t *shape,
                          const nmlx_tensor **out) {
    nmlx_status st = nmlx_weights_get(ws, name, ndim, shape, out);
    if (st) return st;
    if ((*out)->dtype != NMLX_DT_U8)
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "tensor '%s': MXFP4 blocks and scales must be U8 (got %s)", name,
                         nmlx_dtype_name((*out)->dtype));
    return NMLX_OK;
}

static nmlx_weight mxfp4_weight(void *q, void *scales, int64_t rows, int64_t cols,
                                const char *name) {
    nmlx_weight w = {
        .mode = NMLX_QUANT_MXFP4, .bits = 4, .group_size = 32, .rows = rows, .cols = cols};
    w.w = (nmlx_tensor){
        .dtype = NMLX_DT_U32, .ndim = 2, .shape = {rows, cols / 8}, .data = q, .name = name};
    w.scales = (nmlx_tensor){
        .dtype = NMLX_DT_U8, .ndim = 2, .shape = {rows, cols / 32}, .data = scales, .name = name};
    return w;
}

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Layout 4 (gpt-oss HF MXFP4): `_blocks` U8 [E, rows, in/32, 16] hold each
 * row's E2M1 codes two a byte, low nibble first: byte for byte the MLX
 * mxfp4 row (U32 [rows, in/8]); `_scales` U8 [E, rows, in/32] are the
 * E8M0 exponents. down_proj is used in place; gate_up_proj's rows
 * alternate gate (even) / up (odd), so they are split once into one
 * backend buffer with the de-interleaved biases. */
static nmlx_status load_gpt_oss_mxfp4(nmlx_switch_glu *g, void **owned, const nmlx_weights *ws,
                                      nmlx_backend *be, const nmlx_moe_experts_spec *s) {
    char gk[512], gsk[512], dk[512], dsk[512], gbk[512], dbk[512];
    int64_t E = s->n_experts, D = s->in, H = s->hidden;
    snprintf(gk, sizeof gk, "%s.experts.gate_up_proj_blocks", s->prefix);
    snprintf(gsk, sizeof gsk, "%s.experts.gate_up_proj_scales", s->prefix);
    snprintf(dk, sizeof dk, "%s.experts.down_proj_blocks", s->prefix);
    snprintf(dsk, sizeof dsk, "%s.experts.down_proj_scales", s->prefix);
    snprintf(gbk, sizeof gbk, "%s.experts.gate_up_proj_bias", s->prefix);
    snprintf(dbk, sizeof dbk, "%s.experts.down_proj_bias", s->prefix);
    if (D % 32 != 0 || H % 32 != 0)
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "tensor '%s': MXFP4 experts need hidden size (%lld) and intermediate "
                         "size (%lld) to be multiples of 32",
                         gk, (long long)D, (long long)H);
    const nmlx_tensor *gu = NULL, *gus = NULL, *dn = NULL, *dns = NULL, *gub = NULL, *dnb = NULL;
    int64_t gu_shape[4] = {E, 2 * H, D / 32, 16}, dn_shape[4] = {E, D, H / 32, 16};
    int64_t gub_shape[2] = {E, 2 * H}, dnb_shape[2] = {E, D};
    nmlx_status st;
    if ((st = get_u8(ws, gk, 4, gu_shape, &gu))) return st;
    if ((st = get_u8(ws, gsk, 3, gu_shape, &gus))) return st;
    if ((st = get_u8(ws, dk, 4, dn_shape, &dn))) return st;
    if ((st = get_u8(ws, dsk, 3, dn_shape, &dns))) return st;
    if (s->bias) {
        if ((st = nmlx_get_float_tensor(ws, gbk, 2, gub_shape, &gub))) return st;
        if ((st = nmlx_get_float_tensor(ws, dbk, 2, dnb_shape, &dnb))) return st;
    }
    const nmlx_tensor *in_place[3] = {dn, dns, dnb}; /* down_proj is used in place */
    for (int i = 0; i < 3; i++)
        if ((st = prepare_whole(be, in_place[i]))) return st;
    size_t qrow = (size_t)D / 2, srow = (size_t)D / 32, rows = (size_t)(E * H);
    size_t es = gub ? nmlx_dtype_size(gub->dtype) : 0;
    size_t q_bytes = round64(rows * qrow), s_bytes = round64(rows * srow);
    size_t b_bytes = round64(rows * es), bytes = 2 * (q_bytes + s_bytes + b_bytes);
    char *host = nmlx_malloc(bytes), *dev = be->ops->alloc(be, bytes);
    if (!host || !dev) {
        nmlx_free(host);
        if (dev) be->ops->free(be, dev);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory repacking '%s' (%zu bytes)", gk, bytes);
    }
    memset(host, 0, bytes);
    /* [gate q | up q | gate scales | up scales | gate bias | up bias] */
    size_t off_q[2] = {0, q_bytes}, off_s[2] = {2 * q_bytes, 2 * q_bytes + s_bytes};
    size_t off_b[2] = {2 * (q_bytes + s_bytes), 2 * (q_bytes + s_bytes) + b_bytes};
    const uint8_t *bq = gu->data, *bs = gus->data;
    for (size_t r = 0; r < rows; r++) /* row r = (e, h): source rows 2r (gate), 2r + 1 (up) */
        for (size_t half = 0; half < 2; half++) {
            memcpy(host + off_q[half] + r * qrow, bq + (2 * r + half) * qrow, qrow);
            memcpy(host + off_s[half] + r * srow, bs + (2 * r + half) * srow, srow);
            if (gub)
                memcpy(host + off_b[half] + r * es, (const char *)gub->data + (2 * r + half) * es,
                       es);
        }
    be->ops->upload(be, dev, host, bytes);
    nmlx_free(host);
    nmlx_switch_linear *gl[2] = {&g->gate, &g->up};
    for (int64_t e = 0; e < E; e++) {
        size_t r0 = (size_t)(e * H);
        for (int half = 0; half < 2; half++) {
            gl[half]->w[e] = mxfp4_weight(dev + off_q[half] + r0 * qrow,
                                          dev + off_s[half] + r0 * srow, H, D, gk);
            if (gub)
                gl[half]->bias[e] = (nmlx_tensor){.dtype = gub->dtype,
                                                  .ndim = 1,
                                                  .shape = {H},
                                                  .data = dev + off_b[half] + r0 * es,
                                                  .name = gbk};
        }
        g->down.w[e] =
            mxfp4_weight((uint8_t *)dn->data + (size_t)(e * D) * (size_t)(H / 2),
                         (uint8_t *)dns->data + (size_t)(e * D) * (size_t)(H / 32), D, H, dk);
        if (dnb) g->down.bias[e] = expert_slice(dnb, e);
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
    bool blocks = nmlx_weights_find(ws, key) != NULL;
    if (stacked) {
        TRY(load_stacked(&g->gate, ws, be, s, "gate_proj"));
        TRY(load_stacked(&g->up, ws, be, s, "up_proj"));
        TRY(load_stacked(&g->down, ws, be, s, "down_proj"));
    } else if (blocks) {
        TRY(load_gpt_oss_mxfp4(g, owned, ws, be, s));
    } else if (fused) {
        TRY(load_gpt_oss(g, owned, ws, be, s));
    } else {
        TRY(load_per_expert(&g->gate, ws, s, "gate_proj"));
        TRY(load_per_expert(&g->up, ws, s, "up_proj"));
        TRY(load_per_expert(&g->down, ws, s, "down_proj"));
    }
    /* the checkpoint views to the backend (on the CPU nothing changes):
     * everything of layouts 1 and 2; of the repacked layouts only the parts
     * used in place (down's bias; layout 4's down weights), the rest was
     * uploaded by the repack */
    bool all = stacked || (!blocks && !fused);
    TRY(prepare_experts(&g->gate, be, all, all));
    TRY(prepare_experts(&g->up, be, all, all));
    TRY(prepare_experts(&g->down, be, all || blocks, true));
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
