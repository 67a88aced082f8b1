/* Whole-checkpoint quantization, nmlx_convert and quantize-on-load (see
 * quantize_model.h and docs/quantization.md). */
#define _GNU_SOURCE
#include "quantize_model.h"

#include "compute/quant.h"
#include "compute/quant_affine.h"
#include "compute/threadpool.h"
#include "io/file_util.h"
#include "io/file_write.h"
#include "io/safetensors_write.h"
#include "shared/llama4_model.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { RELEASE_BYTES = 8 << 20 };

static bool is_float(nmlx_dtype dt) {
    return dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static void store_row(nmlx_dtype dt, const float *src, void *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (dt == NMLX_DT_F32) ((float *)dst)[i] = src[i];
        else if (dt == NMLX_DT_F16) ((uint16_t *)dst)[i] = nmlx_f32_to_f16(src[i]);
        else ((uint16_t *)dst)[i] = nmlx_f32_to_bf16(src[i]);
    }
}

/* One tensor after mlx-lm's sanitize: a view of the checkpoint or a
 * rebuilt (stacked / transposed) buffer in the source dtype. */
typedef struct qm_tensor {
    char *name; /* owned */
    nmlx_dtype dtype;
    int ndim;
    int64_t shape[NMLX_MAX_DIMS];
    const void *data;
    void *buf; /* owned rebuilt data, or NULL */
} qm_tensor;

typedef struct qm_state {
    qm_tensor *t;
    size_t n, cap;
    const char *label;
} qm_state;

static nmlx_status qm_push(qm_state *s, const char *name, size_t name_len, nmlx_dtype dt, int ndim,
                           const int64_t *shape, const void *data, void *buf) {
    qm_tensor *t = &s->t[s->n];
    t->name = nmlx_malloc(name_len + 1);
    if (!t->name) {
        nmlx_free(buf);
        return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", s->label);
    }
    memcpy(t->name, name, name_len);
    t->name[name_len] = 0;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    t->data = buf ? buf : data;
    t->buf = buf;
    s->n++;
    return NMLX_OK;
}

/* dst[e][c][r] = src[e][r][c * step + off] (elements of es bytes): the
 * transposes of mlx-lm's gpt-oss sanitize, one expert at a time. */
static void transpose_experts(char *dst, const char *src, int64_t E, int64_t R, int64_t C,
                              int64_t ld, int64_t step, int64_t off, size_t es) {
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++)
                memcpy(dst + (size_t)((e * C + c) * R + r) * es,
                       src + (size_t)((e * R + r) * ld + c * step + off) * es, es);
}

/* Per-expert `<p>.experts.<e>.<rest>` (Qwen3-MoE ...): at expert 0, stacks
 * every expert into `<p>.switch_mlp.<rest>` [E, ...] as mlx-lm's sanitize
 * does; the other experts are then skipped. */
static nmlx_status stack_experts(qm_state *s, const nmlx_weights *ws, const nmlx_tensor *t,
                                 const char *at, bool *done) {
    const char *num = at + strlen(".experts."), *rest = num;
    while (*rest >= '0' && *rest <= '9')
        rest++;
    *done = rest > num && *rest == '.';
    if (!*done) return NMLX_OK;
    size_t plen = (size_t)(at - t->name);
    char key[1024];
    if (rest - num != 1 || *num != '0') {
        snprintf(key, sizeof key, "%.*s.experts.0%s", (int)plen, t->name, rest);
        if (!nmlx_weights_find(ws, key))
            return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': expert 0's '%s' is missing", t->name,
                             key);
        return NMLX_OK; /* stacked with expert 0 */
    }
    if (t->ndim >= NMLX_MAX_DIMS)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED, "tensor '%s': rank %d is too large to stack",
                         t->name, t->ndim);
    int64_t E = 0;
    for (;; E++) {
        snprintf(key, sizeof key, "%.*s.experts.%lld%s", (int)plen, t->name, (long long)E, rest);
        const nmlx_tensor *x = nmlx_weights_find(ws, key);
        if (!x) break;
        bool same = x->dtype == t->dtype && x->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = x->shape[d] == t->shape[d];
        if (!same)
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "tensor '%s': dtype or shape differs from '%s' (experts are stacked)",
                             key, t->name);
    }
    size_t per = nmlx_tensor_nbytes(t);
    char *buf = nmlx_malloc(per * (size_t)E + 1);
    if (!buf)
        return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory stacking '%s'", s->label, t->name);
    for (int64_t e = 0; e < E; e++) {
        snprintf(key, sizeof key, "%.*s.experts.%lld%s", (int)plen, t->name, (long long)e, rest);
        memcpy(buf + per * (size_t)e, nmlx_weights_find(ws, key)->data, per);
    }
    int64_t shape[NMLX_MAX_DIMS] = {E};
    memcpy(shape + 1, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    snprintf(key, sizeof key, "%.*s.switch_mlp%s", (int)plen, t->name, rest);
    return qm_push(s, key, strlen(key), t->dtype, t->ndim + 1, shape, NULL, buf);
}

/* gpt-oss HF float experts (`<p>.experts.gate_up_proj` [E, D, 2I] with
 * gate/up columns interleaved, `down_proj` [E, I, D], their biases) ->
 * mlx-lm's `<p>.experts.{gate,up,down}_proj.{weight,bias}` ([E, I, D],
 * [E, D, I], [E, I], [E, D]). Returns *done = false for other names. */
static nmlx_status split_gpt_oss(qm_state *s, const nmlx_tensor *t, bool halves, bool *done) {
    static const char *const names[4] = {".experts.gate_up_proj", ".experts.down_proj",
                                         ".experts.gate_up_proj_bias", ".experts.down_proj_bias"};
    int kind = -1;
    for (int k = 0; k < 4; k++)
        if (ends_with(t->name, names[k])) kind = k;
    *done = kind >= 0;
    if (!*done) return NMLX_OK;
    int want = kind < 2 ? 3 : 2;
    if (!is_float(t->dtype) || t->ndim != want || (kind % 2 == 0 && t->shape[want - 1] % 2))
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "tensor '%s': expected a float tensor of rank %d%s (got %s, rank %d)",
                         t->name, want, kind % 2 == 0 ? " with an even last dimension" : "",
                         nmlx_dtype_name(t->dtype), t->ndim);
    size_t plen = strlen(t->name) - strlen(names[kind]), es = nmlx_dtype_size(t->dtype);
    size_t bytes = nmlx_tensor_nbytes(t);
    char key[1024];
    int64_t E = t->shape[0];
    if (kind == 3) {
        snprintf(key, sizeof key, "%.*s.experts.down_proj.bias", (int)plen, t->name);
        return qm_push(s, key, strlen(key), t->dtype, 2, t->shape, t->data, NULL);
    }
    if (kind == 1) { /* [E, I, D] -> [E, D, I] */
        char *buf = nmlx_malloc(bytes + 1);
        if (!buf) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory for '%s'", s->label, t->name);
        int64_t I = t->shape[1], D = t->shape[2], shape[3] = {E, D, I};
        transpose_experts(buf, t->data, E, I, D, D, 1, 0, es);
        snprintf(key, sizeof key, "%.*s.experts.down_proj.weight", (int)plen, t->name);
        return qm_push(s, key, strlen(key), t->dtype, 3, shape, NULL, buf);
    }
    static const char *const half_names[2][2] = {{"gate_proj.weight", "up_proj.weight"},
                                                 {"gate_proj.bias", "up_proj.bias"}};
    for (int h = 0; h < 2; h++) {
        char *buf = nmlx_malloc(bytes / 2 + 1);
        if (!buf) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory for '%s'", s->label, t->name);
        nmlx_status st;
        snprintf(key, sizeof key, "%.*s.experts.%s", (int)plen, t->name, half_names[kind / 2][h]);
        if (kind == 0) { /* [E, D, 2I] -> gate/up [E, I, D] */
            int64_t D = t->shape[1], I = t->shape[2] / 2, shape[3] = {E, I, D};
            if (halves) /* Llama 4: gate columns [0, I), up [I, 2I) */
                transpose_experts(buf, t->data, E, D, I, 2 * I, 1, h * I, es);
            else
                transpose_experts(buf, t->data, E, D, I, 2 * I, 2, h, es);
            st = qm_push(s, key, strlen(key), t->dtype, 3, shape, NULL, buf);
        } else if (halves) { /* [E, 2I] -> [E, I]: a half */
            int64_t E2 = t->shape[0], I = t->shape[1] / 2, shape[2] = {E2, I};
            for (int64_t e = 0; e < E2; e++)
                memcpy(buf + (size_t)(e * I) * es,
                       (const char *)t->data + (size_t)(e * 2 * I + h * I) * es, (size_t)I * es);
            st = qm_push(s, key, strlen(key), t->dtype, 2, shape, NULL, buf);
        } else { /* [E, 2I] -> [E, I] */
            int64_t n = t->shape[0] * t->shape[1] / 2, shape[2] = {E, t->shape[1] / 2};
            for (int64_t i = 0; i < n; i++)
                memcpy(buf + (size_t)i * es, (const char *)t->data + (size_t)(2 * i + h) * es, es);
            st = qm_push(s, key, strlen(key), t->dtype, 2, shape, NULL, buf);
        }
        if (st) return st;
    }
    return NMLX_OK;
}

/* mlx-lm's MoE families (qwen3_moe, gpt_oss) override their router's
 * quantization with {"group_size": 64, "bits": 8} (their quant_predicate). */
static bool is_moe_router(const char *module, bool moe) {
    return moe && (ends_with(module, "mlp.gate") || ends_with(module, "router"));
}

nmlx_status nmlx_quantize_weights_fd(const nmlx_weights *ws, int bits, int gs, nmlx_dtype sdtype,
                                     int fd, const char *label, struct json_t *overrides) {
    return nmlx_quantize_weights_fd_progress(ws, bits, gs, sdtype, fd, label, overrides, false, 0,
                                             NULL, NULL);
}

nmlx_status nmlx_quantize_weights_fd_progress(
    const nmlx_weights *ws, int bits, int gs, nmlx_dtype sdtype, int fd, const char *label,
    struct json_t *overrides, bool gate_up_halves, int n_threads,
    void (*progress)(void *, size_t, size_t, const char *), void *user) {
    nmlx_status st = NMLX_OK;
    size_t n = nmlx_weights_count(ws), n_items = 0, n_owned = 0;
    qm_state s = {.cap = 2 * n + 2, .label = label};
    s.t = nmlx_calloc(s.cap, sizeof *s.t);
    nmlx_st_item *items = nmlx_calloc(3 * s.cap, sizeof *items);
    void **owned = nmlx_calloc(3 * s.cap, sizeof *owned);
    char **names = nmlx_calloc(2 * s.cap, sizeof *names);
    size_t n_names = 0;
    nmlx_pool *pool = NULL;
    bool moe = false;
    CHECK(s.t && items && owned && names, NMLX_ERR_NOMEM, "%s: out of memory", label);
    CHECK(nmlx_quant_bits_ok(NMLX_QUANT_AFFINE, bits), NMLX_ERR_INVALID_ARG,
          "quantize: %d bits is not supported (2, 3, 4, 5, 6, 8)", bits);
    CHECK(nmlx_quant_group_ok(NMLX_QUANT_AFFINE, gs), NMLX_ERR_INVALID_ARG,
          "quantize: group size %d is not supported (32, 64, 128)", gs);
    if (n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = nc > 0 ? (int)(nc < 256 ? nc : 256) : 1;
    }
    if (n_threads > 1) {
        pool = nmlx_pool_create(n_threads);
        CHECK(pool, NMLX_ERR_NOMEM, "%s: could not start %d threads", label, n_threads);
    }
    /* 1. mlx-lm's sanitize of MoE experts into stacked SwitchLinear weights */
    for (size_t i = 0; i < n; i++) {
        const nmlx_tensor *t = nmlx_weights_at(ws, i);
        CHECK(!ends_with(t->name, ".scales") && !ends_with(t->name, "_blocks"),
              NMLX_ERR_INVALID_ARG, "quantize: tensor '%s': the checkpoint is already quantized",
              t->name);
        const char *at = strstr(t->name, ".experts.");
        bool done = false;
        if (at) TRY(split_gpt_oss(&s, t, gate_up_halves, &done));
        if (at && !done) TRY(stack_experts(&s, ws, t, at, &done));
        moe = moe || at || strstr(t->name, ".switch_mlp.");
        if (!done)
            TRY(qm_push(&s, t->name, strlen(t->name), t->dtype, t->ndim, t->shape, t->data, NULL));
    }
    /* 2. quantize every Linear / Embedding (2-D) and SwitchLinear (3-D
     * `switch_mlp` / `experts`) weight whose input width divides into groups */
    for (size_t i = 0; i < s.n; i++) {
        qm_tensor *t = &s.t[i];
        nmlx_dtype odt = sdtype != NMLX_DT_COUNT && is_float(t->dtype) ? sdtype : t->dtype;
        bool stacked = strstr(t->name, ".switch_mlp.") || strstr(t->name, ".experts.");
        int tb = bits, tgs = gs;
        size_t base = strlen(t->name) - (ends_with(t->name, ".weight") ? strlen(".weight") : 0);
        char module[1024];
        snprintf(module, sizeof module, "%.*s", (int)base, t->name);
        bool router = is_moe_router(module, moe);
        if (router) tb = 8, tgs = 64;
        bool quant = is_float(t->dtype) && ends_with(t->name, ".weight") &&
                     (t->ndim == 2 || (t->ndim == 3 && stacked)) && t->shape[0] > 0 &&
                     t->shape[t->ndim - 1] > 0 && t->shape[t->ndim - 1] % gs == 0 &&
                     t->shape[t->ndim - 1] % tgs == 0; /* mlx-lm would fail on the latter */
        if (!quant) {
            nmlx_st_item it = {.name = t->name, .dtype = odt, .ndim = t->ndim, .data = t->data};
            memcpy(it.shape, t->shape, sizeof it.shape);
            if (odt != t->dtype) { /* float tensor in another dtype */
                size_t cnt = 1;
                for (int d = 0; d < t->ndim; d++)
                    cnt *= (size_t)t->shape[d];
                float *f = nmlx_malloc(cnt * sizeof(float) + 1);
                void *o = nmlx_malloc(cnt * nmlx_dtype_size(odt) + 1);
                owned[n_owned++] = o;
                if (!f || !o) nmlx_free(f);
                CHECK(f && o, NMLX_ERR_NOMEM, "%s: out of memory converting '%s'", label, t->name);
                nmlx_to_f32(t->dtype, t->data, f, cnt);
                store_row(odt, f, o, (int64_t)cnt);
                nmlx_free(f);
                it.data = o;
            }
            items[n_items++] = it;
            if (progress) progress(user, i + 1, s.n, t->name);
            continue;
        }
        int64_t C = t->shape[t->ndim - 1], R = 1, W = nmlx_quant_row_words(C, tb), G = C / tgs;
        for (int d = 0; d < t->ndim - 1; d++)
            R *= t->shape[d];
        size_t ses = nmlx_dtype_size(odt);
        uint32_t *q = nmlx_malloc((size_t)(R * W) * 4);
        char *sc = nmlx_malloc((size_t)(R * G) * ses), *bi = nmlx_malloc((size_t)(R * G) * ses);
        owned[n_owned++] = q, owned[n_owned++] = sc, owned[n_owned++] = bi;
        CHECK(q && sc && bi, NMLX_ERR_NOMEM, "%s: out of memory quantizing '%s'", label, t->name);
        size_t es = nmlx_dtype_size(t->dtype), done = 0, row_bytes = (size_t)C * es;
        const char *src = t->data;
        /* a stacked expert's rows follow the previous one's. The source rows
         * are read once: drop them from RSS as we go (every RELEASE_BYTES),
         * so the float checkpoint and its quantized copy are never both
         * resident; each such chunk of rows is split over the threads */
        int64_t chunk = (int64_t)((RELEASE_BYTES + row_bytes - 1) / row_bytes);
        for (int64_t r0 = 0; r0 < R; r0 += chunk) {
            int64_t r1 = R - r0 < chunk ? R : r0 + chunk;
            nmlx_qaffine_rows(pool, NULL, tb, tgs, t->dtype, src + (size_t)r0 * row_bytes, r1 - r0,
                              C, q + r0 * W, sc + (size_t)(r0 * G) * ses,
                              bi + (size_t)(r0 * G) * ses, odt);
            size_t upto = (size_t)r1 * row_bytes;
            if (!t->buf) {
                nmlx_weights_release(ws, src + done, upto - done);
                done = upto;
            }
        }
        nmlx_free(t->buf); /* a rebuilt float stack is not written */
        t->buf = NULL;
        if (router && overrides) {
            json_t *o = json_pack("{s:i, s:i}", "group_size", tgs, "bits", tb);
            CHECK(o && json_object_set_new(overrides, module, o) == 0, NMLX_ERR_NOMEM,
                  "%s: out of memory", label);
        }
        const char *suffix[2] = {".scales", ".biases"};
        for (int k = 0; k < 2; k++) {
            char *nm = nmlx_malloc(base + 8);
            CHECK(nm, NMLX_ERR_NOMEM, "%s: out of memory", label);
            memcpy(nm, t->name, base);
            memcpy(nm + base, suffix[k], 8);
            names[n_names++] = nm;
        }
        nmlx_st_item it = {t->name, NMLX_DT_U32, t->ndim, {0}, q};
        memcpy(it.shape, t->shape, sizeof it.shape);
        it.shape[t->ndim - 1] = W;
        items[n_items++] = it;
        it.dtype = odt, it.shape[t->ndim - 1] = G;
        it.name = names[n_names - 2], it.data = sc;
        items[n_items++] = it;
        it.name = names[n_names - 1], it.data = bi;
        items[n_items++] = it;
        if (progress) progress(user, i + 1, s.n, t->name);
    }
    TRY(nmlx_st_write_fd(fd, label, items, n_items));
cleanup:
    for (size_t i = 0; s.t && i < s.n; i++)
        nmlx_free(s.t[i].name), nmlx_free(s.t[i].buf);
    for (size_t i = 0; owned && i < n_owned; i++) nmlx_free(owned[i]);
    for (size_t i = 0; names && i < n_names; i++) nmlx_free(names[i]);
    nmlx_free(s.t);
    nmlx_free(owned);
    nmlx_free(names);
    nmlx_free(items);
    nmlx_pool_free(pool);
    return st;
}

bool nmlx_fused_experts_halves(const char *model_type) {
    for (size_t i = 0; model_type && nmlx_families[i]; i++)
        for (const char *const *t = nmlx_families[i]->model_types; *t; t++)
            if (!strcmp(*t, model_type)) return nmlx_families[i]->build == nmlx_l4_build;
    return false;
}

nmlx_status nmlx_quantize_weights_mem(const nmlx_weights *ws, int bits, int gs,
                                      bool gate_up_halves, int n_threads, nmlx_weights **out) {
    nmlx_status st = NMLX_OK;
    char path[64];
    int fd = memfd_create("nmlx-quantized", 0);
    CHECK(fd >= 0, NMLX_ERR_IO, "quantize-on-load: memfd_create failed: %s", strerror(errno));
    TRY(nmlx_quantize_weights_fd_progress(ws, bits, gs, NMLX_DT_COUNT, fd, "quantize-on-load",
                                          NULL, gate_up_halves, n_threads, NULL, NULL));
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    TRY(nmlx_weights_open_file(path, out));
cleanup:
    if (fd >= 0) close(fd); /* the mapping keeps the memory */
    return st;
}

/* ---- nmlx_convert ---- */

nmlx_convert_params nmlx_convert_default_params(void) {
    return (nmlx_convert_params){.bits = 4, .group_size = 64, .dtype = NULL, .on_progress = NULL};
}

static const char *const copied[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "vocab.json",     "merges.txt",            "tokenizer.model",         "added_tokens.json",
    "chat_template.jinja", "chat_template.json", NULL};

static void remove_tree(const char *dir) {
    char p[4400];
    const char *files[] = {"model.safetensors", "config.json"};
    for (size_t i = 0; i < 2; i++) snprintf(p, sizeof p, "%s/%s", dir, files[i]), unlink(p);
    for (size_t i = 0; copied[i]; i++) snprintf(p, sizeof p, "%s/%s", dir, copied[i]), unlink(p);
    rmdir(dir);
}

/* Every file of the output is written into `<out_dir>.tmp-<pid>` (same
 * parent folder, so the final rename stays on one file system) through
 * io/file_write.h: each file created, written, fsynced and closed, the
 * folder fsynced, then renamed to out_dir and the parent fsynced. Any
 * failure removes the temporary folder (or, past the rename, out_dir):
 * out_dir exists only complete. */
nmlx_status nmlx_convert(const char *src_dir, const char *out_dir, const nmlx_convert_params *pp) {
    nmlx_status st = NMLX_OK;
    nmlx_convert_params p = pp ? *pp : nmlx_convert_default_params();
    nmlx_weights *ws = NULL;
    json_t *cfg = NULL, *q = NULL;
    char tmp[4160], path[4300], src[4300], out[4096], parent[4096];
    char *text = NULL;
    int fd = -1;
    bool made_tmp = false, renamed = false;
    CHECK(src_dir && out_dir && out_dir[0], NMLX_ERR_INVALID_ARG,
          "convert: source and output folders needed");
    /* "out/" names the folder out: strip trailing slashes before adding a suffix */
    size_t olen = strlen(out_dir);
    while (olen > 1 && out_dir[olen - 1] == '/')
        olen--;
    CHECK(olen < sizeof out - 32, NMLX_ERR_INVALID_ARG, "convert: output path is too long");
    snprintf(out, sizeof out, "%.*s", (int)olen, out_dir);
    const char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == out)
        snprintf(parent, sizeof parent, "/");
    else
        snprintf(parent, sizeof parent, "%.*s", (int)(slash - out), out);
    nmlx_dtype sdt = NMLX_DT_COUNT;
    if (p.dtype) {
        if (!strcmp(p.dtype, "float32"))
            sdt = NMLX_DT_F32;
        else if (!strcmp(p.dtype, "float16"))
            sdt = NMLX_DT_F16;
        else if (!strcmp(p.dtype, "bfloat16"))
            sdt = NMLX_DT_BF16;
        else
            CHECK(0, NMLX_ERR_INVALID_ARG, "convert: dtype '%s' (float32, float16, bfloat16)",
                  p.dtype);
    }
    struct stat sb;
    CHECK(stat(out, &sb) != 0, NMLX_ERR_INVALID_ARG, "convert: '%s' already exists", out);
    snprintf(path, sizeof path, "%s/config.json", src_dir);
    /* read as the loader reads it: a FIFO or a folder in its place fails at
     * once (json_load_file's fopen would block forever on a FIFO) */
    size_t text_len = 0;
    TRY(nmlx_io_read_file(path, 64 * 1000 * 1000, &text, &text_len));
    json_error_t jerr;
    cfg = json_loadb(text, text_len, 0, &jerr);
    nmlx_free(text);
    text = NULL;
    CHECK(cfg && json_is_object(cfg), NMLX_ERR_FORMAT, "%s: %s", path,
          cfg ? "not an object" : jerr.text);
    CHECK(!json_object_get(cfg, "quantization") && !json_object_get(cfg, "quantization_config"),
          NMLX_ERR_INVALID_ARG, "%s: the checkpoint is already quantized", path);
    TRY(nmlx_weights_open_dir(src_dir, &ws));

    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out, (long)getpid());
    TRY(nmlx_io_mkdir(tmp, 0755));
    made_tmp = true;
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    TRY(nmlx_io_create(path, 0644, &fd));
    q = json_pack("{s:i, s:i, s:s}", "group_size", p.group_size, "bits", p.bits, "mode", "affine");
    CHECK(q, NMLX_ERR_NOMEM, "convert: out of memory");
    /* per-module overrides (MoE routers) follow the globals, as mlx-lm writes them */
    const json_t *tc = json_object_get(cfg, "text_config");
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    if (!mt && json_is_object(tc)) mt = json_string_value(json_object_get(tc, "model_type"));
    TRY(nmlx_quantize_weights_fd_progress(ws, p.bits, p.group_size, sdt, fd, path, q,
                                          nmlx_fused_experts_halves(mt), 0, p.on_progress,
                                          p.user));
    TRY(nmlx_io_fsync(fd, path));
    TRY(nmlx_io_close(&fd, path));
    /* a source rewritten in place while it was read would give a mixed output */
    TRY(nmlx_weights_verify(ws));

    json_object_set(cfg, "quantization", q);
    json_object_set(cfg, "quantization_config", q);
    if (p.dtype) json_object_set_new(cfg, "torch_dtype", json_string(p.dtype));
    snprintf(path, sizeof path, "%s/config.json", tmp);
    text = json_dumps(cfg, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
    CHECK(text, NMLX_ERR_NOMEM, "%s: out of memory", path);
    TRY(nmlx_io_create(path, 0644, &fd));
    TRY(nmlx_io_write_all(fd, path, text, strlen(text)));
    TRY(nmlx_io_fsync(fd, path));
    TRY(nmlx_io_close(&fd, path));
    for (size_t i = 0; copied[i]; i++) {
        snprintf(src, sizeof src, "%s/%s", src_dir, copied[i]);
        if (stat(src, &sb) != 0) continue;
        snprintf(path, sizeof path, "%s/%s", tmp, copied[i]);
        TRY(nmlx_io_copy_file(src, path));
    }
    TRY(nmlx_io_fsync_dir(tmp));
    TRY(nmlx_io_rename(tmp, out));
    made_tmp = false;
    renamed = true;
    st = nmlx_io_fsync_dir(parent);
    if (st != NMLX_OK)
        nmlx_error_prefix("convert: %s: flushing its folder failed", out);
    else
        renamed = false;
cleanup:
    if (fd >= 0) close(fd);
    if (made_tmp) remove_tree(tmp);
    if (renamed) remove_tree(out); /* complete but not durable: report, leave nothing */
    free(text);
    json_decref(q);
    json_decref(cfg);
    nmlx_weights_close(ws);
    return st;
}
