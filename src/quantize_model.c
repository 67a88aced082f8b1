/* Whole-checkpoint quantization, nmlx_convert and quantize-on-load (see
 * quantize_model.h and docs/quantization.md). */
#define _GNU_SOURCE
#include "quantize_model.h"

#include "compute/quant.h"
#include "io/safetensors_write.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static bool is_float(nmlx_dtype dt) {
    return dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* mlx-lm quantizes Linear and Embedding modules whose input width is a
 * multiple of the group size; their weights are the 2-D `*.weight`s. */
static bool quantizable(const nmlx_tensor *t, int gs) {
    return t->ndim == 2 && is_float(t->dtype) && ends_with(t->name, ".weight") &&
           t->shape[0] > 0 && t->shape[1] > 0 && t->shape[1] % gs == 0;
}

static void store_row(nmlx_dtype dt, const float *src, void *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (dt == NMLX_DT_F32) ((float *)dst)[i] = src[i];
        else if (dt == NMLX_DT_F16) ((uint16_t *)dst)[i] = nmlx_f32_to_f16(src[i]);
        else ((uint16_t *)dst)[i] = nmlx_f32_to_bf16(src[i]);
    }
}

nmlx_status nmlx_quantize_weights_fd(const nmlx_weights *ws, int bits, int gs, nmlx_dtype sdtype,
                                     int fd, const char *label) {
    nmlx_status st = NMLX_OK;
    size_t n = nmlx_weights_count(ws), n_items = 0;
    nmlx_st_item *items = nmlx_calloc(3 * n + 1, sizeof *items);
    void **owned = nmlx_calloc(3 * n + 1, sizeof *owned);
    char **names = nmlx_calloc(3 * n + 1, sizeof *names);
    size_t n_owned = 0, n_names = 0;
    float *row = NULL;
    CHECK(items && owned && names, NMLX_ERR_NOMEM, "%s: out of memory", label);
    CHECK(nmlx_quant_bits_ok(NMLX_QUANT_AFFINE, bits), NMLX_ERR_INVALID_ARG,
          "quantize: %d bits is not supported (2, 3, 4, 5, 6, 8)", bits);
    CHECK(nmlx_quant_group_ok(NMLX_QUANT_AFFINE, gs), NMLX_ERR_INVALID_ARG,
          "quantize: group size %d is not supported (32, 64, 128)", gs);
    for (size_t i = 0; i < n; i++) {
        const nmlx_tensor *t = nmlx_weights_at(ws, i);
        CHECK(!ends_with(t->name, ".scales"), NMLX_ERR_INVALID_ARG,
              "quantize: tensor '%s': the checkpoint is already quantized", t->name);
        nmlx_dtype odt = sdtype != NMLX_DT_COUNT && is_float(t->dtype) ? sdtype : t->dtype;
        if (!quantizable(t, gs)) {
            nmlx_st_item it = {.name = t->name, .dtype = odt, .ndim = t->ndim, .data = t->data};
            memcpy(it.shape, t->shape, sizeof it.shape);
            if (odt != t->dtype) { /* float tensor in another dtype */
                size_t cnt = (size_t)nmlx_tensor_numel(t);
                float *f = nmlx_malloc(cnt * sizeof(float) + 1);
                void *o = nmlx_malloc(cnt * nmlx_dtype_size(odt) + 1);
                owned[n_owned++] = f;
                owned[n_owned++] = o;
                CHECK(f && o, NMLX_ERR_NOMEM, "%s: out of memory converting '%s'", label, t->name);
                nmlx_to_f32(t->dtype, t->data, f, cnt);
                store_row(odt, f, o, (int64_t)cnt);
                nmlx_free(f);
                owned[n_owned - 2] = NULL;
                it.data = o;
            }
            items[n_items++] = it;
            continue;
        }
        int64_t R = t->shape[0], C = t->shape[1], W = nmlx_quant_row_words(C, bits), G = C / gs;
        size_t ses = nmlx_dtype_size(odt);
        uint32_t *q = nmlx_malloc((size_t)(R * W) * 4);
        char *sc = nmlx_malloc((size_t)(R * G) * ses), *bi = nmlx_malloc((size_t)(R * G) * ses);
        owned[n_owned++] = q, owned[n_owned++] = sc, owned[n_owned++] = bi;
        nmlx_free(row);
        row = nmlx_malloc((size_t)C * sizeof(float));
        CHECK(q && sc && bi && row, NMLX_ERR_NOMEM, "%s: out of memory quantizing '%s'", label,
              t->name);
        size_t es = nmlx_dtype_size(t->dtype);
        for (int64_t r = 0; r < R; r++) {
            nmlx_to_f32(t->dtype, (const char *)t->data + (size_t)(r * C) * es, row, (size_t)C);
            nmlx_quant_quantize_row(NMLX_QUANT_AFFINE, bits, gs, row, C, q + r * W,
                                    sc + (size_t)(r * G) * ses, bi + (size_t)(r * G) * ses, odt);
        }
        size_t base = strlen(t->name) - strlen(".weight");
        const char *suffix[2] = {".scales", ".biases"};
        for (int s = 0; s < 2; s++) {
            char *nm = nmlx_malloc(base + 8);
            CHECK(nm, NMLX_ERR_NOMEM, "%s: out of memory", label);
            memcpy(nm, t->name, base);
            memcpy(nm + base, suffix[s], 8);
            names[n_names++] = nm;
        }
        items[n_items++] = (nmlx_st_item){t->name, NMLX_DT_U32, 2, {R, W}, q};
        items[n_items++] = (nmlx_st_item){names[n_names - 2], odt, 2, {R, G}, sc};
        items[n_items++] = (nmlx_st_item){names[n_names - 1], odt, 2, {R, G}, bi};
    }
    TRY(nmlx_st_write_fd(fd, label, items, n_items));
cleanup:
    for (size_t i = 0; owned && i < n_owned; i++) nmlx_free(owned[i]);
    for (size_t i = 0; names && i < n_names; i++) nmlx_free(names[i]);
    nmlx_free(owned);
    nmlx_free(names);
    nmlx_free(items);
    nmlx_free(row);
    return st;
}

nmlx_status nmlx_quantize_weights_mem(const nmlx_weights *ws, int bits, int gs,
                                      nmlx_weights **out) {
    nmlx_status st = NMLX_OK;
    char path[64];
    int fd = memfd_create("nmlx-quantized", 0);
    CHECK(fd >= 0, NMLX_ERR_IO, "quantize-on-load: memfd_create failed: %s", strerror(errno));
    TRY(nmlx_quantize_weights_fd(ws, bits, gs, NMLX_DT_COUNT, fd, "quantize-on-load"));
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    TRY(nmlx_weights_open_file(path, out));
cleanup:
    if (fd >= 0) close(fd); /* the mapping keeps the memory */
    return st;
}

/* ---- nmlx_convert ---- */

nmlx_convert_params nmlx_convert_default_params(void) {
    return (nmlx_convert_params){.bits = 4, .group_size = 64, .dtype = NULL};
}

static nmlx_status copy_file(const char *src, const char *dst) {
    nmlx_status st = NMLX_OK;
    FILE *in = fopen(src, "rb"), *out = NULL;
    CHECK(in, NMLX_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    out = fopen(dst, "wb");
    CHECK(out, NMLX_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        CHECK(fwrite(buf, 1, n, out) == n, NMLX_ERR_IO, "%s: write failed", dst);
    CHECK(!ferror(in), NMLX_ERR_IO, "%s: read failed", src);
cleanup:
    if (in) fclose(in);
    if (out && fclose(out) != 0 && st == NMLX_OK) st = nmlx_fail(NMLX_ERR_IO, "%s: close failed", dst);
    return st;
}

static const char *const copied[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "vocab.json",     "merges.txt",            "tokenizer.model",         "added_tokens.json",
    "chat_template.jinja", "chat_template.json", NULL};

static void remove_tree(const char *dir) {
    char p[4200];
    const char *files[] = {"model.safetensors", "config.json"};
    for (size_t i = 0; i < 2; i++) snprintf(p, sizeof p, "%s/%s", dir, files[i]), unlink(p);
    for (size_t i = 0; copied[i]; i++) snprintf(p, sizeof p, "%s/%s", dir, copied[i]), unlink(p);
    rmdir(dir);
}

nmlx_status nmlx_convert(const char *src_dir, const char *out_dir, const nmlx_convert_params *pp) {
    nmlx_status st = NMLX_OK;
    nmlx_convert_params p = pp ? *pp : nmlx_convert_default_params();
    nmlx_weights *ws = NULL;
    json_t *cfg = NULL;
    char tmp[4096], path[4200], src[4200];
    int fd = -1;
    bool made_tmp = false;
    CHECK(src_dir && out_dir, NMLX_ERR_INVALID_ARG, "convert: source and output folders needed");
    nmlx_dtype sdt = NMLX_DT_COUNT;
    if (p.dtype) {
        if (!strcmp(p.dtype, "float32")) sdt = NMLX_DT_F32;
        else if (!strcmp(p.dtype, "float16")) sdt = NMLX_DT_F16;
        else if (!strcmp(p.dtype, "bfloat16")) sdt = NMLX_DT_BF16;
        else CHECK(0, NMLX_ERR_INVALID_ARG, "convert: dtype '%s' (float32, float16, bfloat16)", p.dtype);
    }
    struct stat sb;
    CHECK(stat(out_dir, &sb) != 0, NMLX_ERR_INVALID_ARG, "convert: '%s' already exists", out_dir);
    snprintf(path, sizeof path, "%s/config.json", src_dir);
    json_error_t jerr;
    cfg = json_load_file(path, 0, &jerr);
    CHECK(cfg && json_is_object(cfg), NMLX_ERR_FORMAT, "%s: %s", path, cfg ? "not an object" : jerr.text);
    CHECK(!json_object_get(cfg, "quantization") && !json_object_get(cfg, "quantization_config"),
          NMLX_ERR_INVALID_ARG, "%s: the checkpoint is already quantized", path);
    TRY(nmlx_weights_open_dir(src_dir, &ws));

    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    CHECK(mkdir(tmp, 0755) == 0, NMLX_ERR_IO, "convert: cannot create '%s': %s", tmp, strerror(errno));
    made_tmp = true;
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, NMLX_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    TRY(nmlx_quantize_weights_fd(ws, p.bits, p.group_size, sdt, fd, path));
    CHECK(fsync(fd) == 0 && close(fd) == 0, NMLX_ERR_IO, "%s: cannot flush: %s", path, strerror(errno));
    fd = -1;

    json_t *q = json_pack("{s:i, s:i, s:s}", "group_size", p.group_size, "bits", p.bits, "mode",
                          "affine");
    CHECK(q, NMLX_ERR_NOMEM, "convert: out of memory");
    json_object_set(cfg, "quantization", q);
    json_object_set_new(cfg, "quantization_config", q);
    if (p.dtype) json_object_set_new(cfg, "torch_dtype", json_string(p.dtype));
    snprintf(path, sizeof path, "%s/config.json", tmp);
    CHECK(json_dump_file(cfg, path, JSON_INDENT(4) | JSON_PRESERVE_ORDER) == 0, NMLX_ERR_IO,
          "%s: cannot write", path);
    for (size_t i = 0; copied[i]; i++) {
        snprintf(src, sizeof src, "%s/%s", src_dir, copied[i]);
        if (stat(src, &sb) != 0) continue;
        snprintf(path, sizeof path, "%s/%s", tmp, copied[i]);
        TRY(copy_file(src, path));
    }
    CHECK(rename(tmp, out_dir) == 0, NMLX_ERR_IO, "convert: cannot rename '%s' to '%s': %s", tmp,
          out_dir, strerror(errno));
    made_tmp = false;
cleanup:
    if (fd >= 0) close(fd);
    if (made_tmp) remove_tree(tmp);
    json_decref(cfg);
    nmlx_weights_close(ws);
    return st;
}
