/* An emulated device backend for tests (test_device_emu.c): the CPU ops on
 * "device memory" that the host cannot touch outside an op.
 *  - alloc / prepare_tensor hand out memory of one arena (mmap'd, bump
 *    allocated, never reused); it is PROT_NONE except during an op, so a
 *    host-side dereference of a backend buffer faults, as on a GPU;
 *  - every op checks that its buffer and weight pointers lie in the arena
 *    (ids of embed and host sides of upload/download must not) and counts
 *    violations, keeping the first message;
 *  - prepare_tensor copies the host bytes into the arena at the same offset
 *    modulo 64 (the CPU kernels see the same alignment), and a tensor inside
 *    one already prepared shares its copy, as the CUDA backend does;
 *    preparing arena memory is a violation (CUDA would read a device
 *    address as host memory).
 * The backend is not "cpu", so nmlx_backend_is_host is false: the loaders
 * take their device paths. rope_interleaved, rope_rows and attention_rows
 * (NULL on the CPU) are provided as per-row CPU calls, so batched decode
 * takes CUDA's rows path; rope_kv and rope_kv_rows too (the fused norms,
 * RoPE and cache appends of CUDA's decode). */
#ifndef NMLX_TEST_DEVICE_EMU_H
#define NMLX_TEST_DEVICE_EMU_H

#include "compute/backend.h"
#include "shared/llama4_model.h" /* nmlx_rope_interleaved */
#include "shared/sampling.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

enum { EMU_ARENA = 256 << 20, EMU_MAX_REGIONS = 1 << 16 };

typedef struct emu_region {
    const char *host;
    size_t bytes;
    char *dev;
} emu_region;

typedef struct emu_state {
    nmlx_backend *cpu;
    char *base;
    size_t used;
    long violations;
    char first[512];
    emu_region *regions;
    size_t n_regions;
    nmlx_tensor **tensors;
    size_t n_tensors;
    float *scratch; /* attention_rows: the CPU attention's scratch (host) */
    size_t scratch_floats;
    nmlx_sampler sampler;   /* sample: the CPU sampler, run on the arena's row */
    long argmaxes, samples; /* calls of argmax / sample (tests: the device path ran) */
    long long downloaded;   /* bytes through download */
    size_t watch_bytes;     /* downloads of exactly this size (a logits row) */
    long watched;           /* are counted here */
    bool break_sample;      /* must-fail checks: sample ignores the host's draw, */
    bool break_copy;        /* copy does nothing */
} emu_state;

static emu_state *emu_of(nmlx_backend *be) { return (emu_state *)be->impl; }

static void emu_violation(nmlx_backend *be, const char *fmt, ...) {
    emu_state *e = emu_of(be);
    if (e->violations++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->first, sizeof e->first, fmt, ap);
        va_end(ap);
    }
}

static bool emu_in(nmlx_backend *be, const void *p) {
    emu_state *e = emu_of(be);
    return (const char *)p >= e->base && (const char *)p < e->base + e->used;
}

static void emu_need(nmlx_backend *be, const char *op, const void *p, const char *what) {
    if (p && !emu_in(be, p)) emu_violation(be, "%s: %s %p is not device memory", op, what, p);
}

static void emu_need_t(nmlx_backend *be, const char *op, const nmlx_tensor *t) {
    if (t) emu_need(be, op, t->data, t->name ? t->name : "tensor");
}

static void emu_need_w(nmlx_backend *be, const char *op, const nmlx_weight *w) {
    emu_need_t(be, op, &w->w);
    if (w->mode != NMLX_QUANT_NONE) emu_need_t(be, op, &w->scales);
    if (w->mode == NMLX_QUANT_AFFINE) emu_need_t(be, op, &w->biases);
}

static size_t emu_pages(size_t n) { return (n + 4095) & ~(size_t)4095; }
static void emu_open(nmlx_backend *be) {
    emu_state *e = emu_of(be);
    if (e->used) mprotect(e->base, emu_pages(e->used), PROT_READ | PROT_WRITE);
}
static void emu_close(nmlx_backend *be) {
    emu_state *e = emu_of(be);
    if (e->used) mprotect(e->base, emu_pages(e->used), PROT_NONE);
}

/* `bytes` of zeroed arena at offset `mod` modulo 64 */
static void *emu_bump(nmlx_backend *be, size_t bytes, size_t mod) {
    emu_state *e = emu_of(be);
    size_t at = ((e->used + 63) & ~(size_t)63) + mod;
    if (at + bytes + 64 > EMU_ARENA) return NULL;
    e->used = at + (bytes ? bytes : 1);
    return e->base + at;
}

static void *emu_alloc(nmlx_backend *be, size_t bytes) { return emu_bump(be, bytes, 0); }

static void emu_free_buf(nmlx_backend *be, void *p) { emu_need(be, "free", p, "buffer"); }

static void emu_copy(nmlx_backend *be, void *dst, const void *src, size_t bytes) {
    emu_need(be, "copy", dst, "dst");
    emu_need(be, "copy", src, "src");
    if (emu_of(be)->break_copy) return;
    emu_open(be);
    memmove(dst, src, bytes);
    emu_close(be);
}

static void emu_upload(nmlx_backend *be, void *dst, const void *host, size_t bytes) {
    emu_need(be, "upload", dst, "dst");
    if (bytes && emu_in(be, host)) emu_violation(be, "upload: source is device memory");
    emu_open(be);
    memcpy(dst, host, bytes);
    emu_close(be);
}

static void emu_download(nmlx_backend *be, void *host, const void *src, size_t bytes) {
    emu_need(be, "download", src, "src");
    if (bytes && emu_in(be, host)) emu_violation(be, "download: destination is device memory");
    emu_of(be)->downloaded += (long long)bytes;
    emu_of(be)->watched += bytes && bytes == emu_of(be)->watch_bytes;
    emu_open(be);
    memcpy(host, src, bytes);
    emu_close(be);
}

static void emu_sync(nmlx_backend *be) { (void)be; }

static int32_t emu_argmax(nmlx_backend *be, const float *x, int64_t n) {
    emu_need(be, "argmax", x, "x");
    emu_open(be);
    int32_t id = emu_of(be)->cpu->ops->argmax(emu_of(be)->cpu, x, n);
    emu_close(be);
    emu_of(be)->argmaxes++;
    return id;
}

/* The device sampler as the CPU's, on the arena's row with the host's draw
 * u: sessions on emu must sample exactly as on the CPU (test_batch_sample.c). */
static int32_t emu_sample(nmlx_backend *be, const float *x, int64_t n, const nmlx_sampler_params *p,
                          const int32_t *history, size_t n_history, double u) {
    emu_state *e = emu_of(be);
    emu_need(be, "sample", x, "x");
    if (n_history && emu_in(be, history)) emu_violation(be, "sample: history is device memory");
    if (e->sampler.vocab != n) {
        nmlx_sampler_free(&e->sampler);
        if (nmlx_sampler_init(&e->sampler, n) != NMLX_OK) return -1;
    }
    emu_open(be);
    int32_t id =
        nmlx_sampler_sample_u(&e->sampler, p, x, history, n_history, e->break_sample ? 0.5 : u);
    emu_close(be);
    e->samples++;
    return id;
}

static nmlx_status emu_prepare(nmlx_backend *be, const nmlx_tensor *t, const nmlx_tensor **out) {
    emu_state *e = emu_of(be);
    const char *h = (const char *)t->data;
    size_t n = nmlx_tensor_nbytes(t);
    char *dev = NULL;
    if (emu_in(be, h)) emu_violation(be, "prepare_tensor: '%s' is already device memory", t->name);
    for (size_t i = e->n_regions; i-- > 0 && !dev;)
        if (h >= e->regions[i].host && h + n <= e->regions[i].host + e->regions[i].bytes)
            dev = e->regions[i].dev + (h - e->regions[i].host);
    if (!dev) {
        dev = emu_bump(be, n, (uintptr_t)h & 63);
        if (!dev || e->n_regions == EMU_MAX_REGIONS)
            return nmlx_fail(NMLX_ERR_NOMEM, "emu: arena full preparing '%s'", t->name);
        emu_open(be);
        memcpy(dev, h, n);
        emu_close(be);
        e->regions[e->n_regions++] = (emu_region){h, n, dev};
    }
    nmlx_tensor *p = malloc(sizeof *p);
    nmlx_tensor **grown = realloc(e->tensors, (e->n_tensors + 1) * sizeof *grown);
    if (!p || !grown) {
        free(p);
        if (grown) e->tensors = grown;
        return nmlx_fail(NMLX_ERR_NOMEM, "emu: out of memory");
    }
    e->tensors = grown;
    *p = *t;
    p->data = dev;
    e->tensors[e->n_tensors++] = p;
    *out = p;
    return NMLX_OK;
}

/* Runs a CPU op with the arena open, on the wrapped CPU backend. */
#define EMU_RUN(call)                                                                              \
    do {                                                                                           \
        nmlx_backend *cpu = emu_of(be)->cpu;                                                       \
        emu_open(be);                                                                              \
        cpu->ops->call;                                                                            \
        emu_close(be);                                                                             \
    } while (0)

static void emu_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                       const float *x, float *y, int64_t T) {
    emu_need_w(be, "matmul", w);
    emu_need_t(be, "matmul", bias);
    emu_need(be, "matmul", x, "x"), emu_need(be, "matmul", y, "y");
    EMU_RUN(matmul(cpu, w, bias, x, y, T));
}

static void emu_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                             const nmlx_tensor *const *bs, const float *x, float *const *ys,
                             int64_t T) {
    for (int i = 0; i < n; i++) {
        emu_need_w(be, "matmul_multi", ws[i]);
        emu_need_t(be, "matmul_multi", bs ? bs[i] : NULL);
        emu_need(be, "matmul_multi", ys[i], "y");
    }
    emu_need(be, "matmul_multi", x, "x");
    EMU_RUN(matmul_multi(cpu, n, ws, bs, x, ys, T));
}

static void emu_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                      float scale, float *out) {
    emu_need_w(be, "embed", table);
    emu_need(be, "embed", out, "out");
    if (emu_in(be, ids)) emu_violation(be, "embed: ids must be host memory");
    EMU_RUN(embed(cpu, table, ids, T, scale, out));
}

static void emu_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float off,
                        float eps, float *y, int64_t R, int64_t D) {
    emu_need_t(be, "rmsnorm", w);
    emu_need(be, "rmsnorm", x, "x"), emu_need(be, "rmsnorm", y, "y");
    EMU_RUN(rmsnorm(cpu, x, w, off, eps, y, R, D));
}

static void emu_rope(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                     int64_t pos0, const float *freqs, float mscale) {
    emu_need(be, "rope", x, "x"), emu_need(be, "rope", freqs, "freqs");
    EMU_RUN(rope(cpu, x, T, H, HD, rot, pos0, freqs, mscale));
}

static void emu_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    const char *op = "attention";
    emu_need(be, op, a->q, "q"), emu_need(be, op, a->out, "out");
    emu_need(be, op, a->sinks, "sinks"), emu_need(be, op, a->scratch, "scratch");
    if (a->kv_dtype == NMLX_DT_F32)
        emu_need(be, op, a->k, "k"), emu_need(be, op, a->v, "v");
    else
        emu_need(be, op, a->k16, "k16"), emu_need(be, op, a->v16, "v16");
    EMU_RUN(attention(cpu, a));
}

/* Batched decode as CUDA has it (the rows path of shared/attention.c):
 * per-row CPU calls, pos and rows host arrays. */
static void emu_rope_rows(nmlx_backend *be, float *x, int64_t R, int64_t H, int64_t HD, int64_t rot,
                          const int64_t *pos, const float *freqs, float mscale) {
    emu_need(be, "rope_rows", x, "x"), emu_need(be, "rope_rows", freqs, "freqs");
    if (emu_in(be, pos)) emu_violation(be, "rope_rows: pos must be host memory");
    for (int64_t r = 0; r < R; r++)
        EMU_RUN(rope(cpu, x + r * H * HD, 1, H, HD, rot, pos[r], freqs, mscale));
}

/* rope_kv (and rope_kv_rows a row at a time) as CUDA has them: the CPU's
 * rope_kv, or its unfused sequence (the op's contract) where NMLX_FUSED=0
 * left the CPU without it. */
static void emu_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a) {
    const char *op = "rope_kv";
    emu_need(be, op, a->q, "q"), emu_need(be, op, a->k, "k"), emu_need(be, op, a->v, "v");
    emu_need(be, op, a->k_cache, "k_cache"), emu_need(be, op, a->v_cache, "v_cache");
    emu_need(be, op, a->freqs, "freqs");
    if (a->qk_norm) emu_need_t(be, op, a->q_norm), emu_need_t(be, op, a->k_norm);
    nmlx_backend *cpu = emu_of(be)->cpu;
    if (cpu->ops->rope_kv) {
        EMU_RUN(rope_kv(cpu, a));
        return;
    }
    emu_open(be);
    if (a->qk_norm) {
        cpu->ops->rmsnorm(cpu, a->q, a->q_norm, a->q_norm_offset, a->q_norm_eps, a->q, a->T * a->H,
                          a->HD);
        cpu->ops->rmsnorm(cpu, a->k, a->k_norm, a->k_norm_offset, a->k_norm_eps, a->k,
                          a->T * a->KVH, a->HD);
    }
    if (a->rot >= 2 && a->freqs) {
        cpu->ops->rope(cpu, a->q, a->T, a->H, a->HD, a->rot, a->pos0, a->freqs, a->mscale);
        cpu->ops->rope(cpu, a->k, a->T, a->KVH, a->HD, a->rot, a->pos0, a->freqs, a->mscale);
    }
    for (int64_t t = 0; t < a->T; t++)
        for (int64_t h = 0; h < a->KVH; h++) {
            const size_t row = (size_t)a->HD * sizeof(float);
            memcpy(a->k_cache + (h * a->cap + a->row0 + t) * a->HD, a->k + (t * a->KVH + h) * a->HD,
                   row);
            memcpy(a->v_cache + (h * a->cap + a->row0 + t) * a->HD, a->v + (t * a->KVH + h) * a->HD,
                   row);
        }
    emu_close(be);
}

static bool emu_rope_kv_rows(nmlx_backend *be, const nmlx_rope_kv_args *a,
                             const nmlx_kv_row_dst *rows, int64_t R) {
    if (emu_in(be, rows)) emu_violation(be, "rope_kv_rows: rows must be host memory");
    for (int64_t r = 0; r < R; r++) {
        nmlx_rope_kv_args one = *a;
        one.q = a->q + r * a->H * a->HD;
        one.k = a->k + r * a->KVH * a->HD;
        one.v = a->v + r * a->KVH * a->HD;
        one.T = 1;
        one.k_cache = rows[r].k_cache, one.v_cache = rows[r].v_cache;
        one.cap = rows[r].cap, one.row0 = rows[r].row0, one.pos0 = rows[r].pos;
        emu_rope_kv(be, &one);
    }
    return true;
}

static void emu_attention_rows(nmlx_backend *be, const nmlx_attn_args *a, const nmlx_attn_row *rows,
                               int64_t R) {
    emu_state *e = emu_of(be);
    const char *op = "attention_rows";
    emu_need(be, op, a->q, "q"), emu_need(be, op, a->out, "out");
    emu_need(be, op, a->sinks, "sinks");
    if (emu_in(be, rows)) emu_violation(be, "attention_rows: rows must be host memory");
    for (int64_t r = 0; r < R; r++) {
        emu_need(be, op, rows[r].k, "k"), emu_need(be, op, rows[r].v, "v");
        size_t need = (size_t)e->cpu->n_threads * (size_t)(a->H / a->KVH) * (size_t)rows[r].n_kv;
        if (need > e->scratch_floats) {
            free(e->scratch);
            e->scratch = malloc(need * sizeof(float));
            e->scratch_floats = e->scratch ? need : 0;
        }
        nmlx_attn_args one = *a;
        one.q = a->q + r * a->H * a->HD;
        one.out = a->out + r * a->H * a->HD;
        one.T = 1;
        one.k = rows[r].k, one.v = rows[r].v, one.cap = rows[r].cap;
        one.q_pos = rows[r].q_pos, one.n_kv = rows[r].n_kv, one.window = rows[r].window;
        one.scratch = e->scratch;
        one.kv_dtype = NMLX_DT_F32, one.k16 = one.v16 = NULL;
        EMU_RUN(attention(cpu, &one));
    }
}

static void emu_act_mul(nmlx_backend *be, nmlx_act act, const float *g, const float *u, float *o,
                        int64_t n) {
    emu_need(be, "act_mul", g, "gate"), emu_need(be, "act_mul", u, "up");
    emu_need(be, "act_mul", o, "out");
    EMU_RUN(act_mul(cpu, act, g, u, o, n));
}

static void emu_swiglu(nmlx_backend *be, const float *g, const float *u, float *o, int64_t n,
                       float alpha, float limit) {
    emu_need(be, "swiglu_clipped", g, "gate"), emu_need(be, "swiglu_clipped", u, "up");
    emu_need(be, "swiglu_clipped", o, "out");
    EMU_RUN(swiglu_clipped(cpu, g, u, o, n, alpha, limit));
}

static void emu_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n) {
    emu_need(be, "act", x, "x");
    EMU_RUN(act(cpu, act, x, n));
}

static void emu_add(nmlx_backend *be, const float *a, const float *b, float *o, int64_t n) {
    emu_need(be, "add", a, "a"), emu_need(be, "add", b, "b"), emu_need(be, "add", o, "out");
    EMU_RUN(add(cpu, a, b, o, n));
}

static void emu_scale(nmlx_backend *be, float *x, float s, int64_t n) {
    emu_need(be, "scale", x, "x");
    EMU_RUN(scale(cpu, x, s, n));
}

static void emu_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n) {
    emu_need(be, "softmax", x, "x");
    EMU_RUN(softmax(cpu, x, R, n));
}

static void emu_topk(nmlx_backend *be, float *x, int64_t R, int64_t n, float mult) {
    emu_need(be, "gaussian_topk", x, "x");
    EMU_RUN(gaussian_topk(cpu, x, R, n, mult));
}

static void emu_rms_match(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                          float eps) {
    emu_need(be, "rms_match", ref, "ref"), emu_need(be, "rms_match", x, "x");
    EMU_RUN(rms_match(cpu, ref, x, T, D, eps));
}

static void emu_mul_rows(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D) {
    emu_need(be, "mul_rows", x, "x"), emu_need_t(be, "mul_rows", w);
    EMU_RUN(mul_rows(cpu, x, w, R, D));
}

static void emu_predict(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                        const nmlx_tensor *coefs, float *out, int64_t K, int64_t T, int64_t D) {
    emu_need(be, "altup_predict", x, "x"), emu_need(be, "altup_predict", router, "router");
    emu_need_t(be, "altup_predict", coefs), emu_need(be, "altup_predict", out, "out");
    EMU_RUN(altup_predict(cpu, x, stride, router, coefs, out, K, T, D));
}

static void emu_correct(nmlx_backend *be, float *p, int64_t stride, const float *act,
                        const float *router, const nmlx_tensor *coefs, float clip, int64_t active,
                        int64_t K, int64_t T, int64_t D) {
    emu_need(be, "altup_correct", p, "p"), emu_need(be, "altup_correct", act, "act");
    emu_need(be, "altup_correct", router, "router"), emu_need_t(be, "altup_correct", coefs);
    EMU_RUN(altup_correct(cpu, p, stride, act, router, coefs, clip, active, K, T, D));
}

static void emu_rope_il(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t pos0,
                        const float *freqs) {
    emu_need(be, "rope_interleaved", x, "x"), emu_need(be, "rope_interleaved", freqs, "freqs");
    emu_open(be);
    nmlx_rope_interleaved(x, T, H, HD, pos0, freqs);
    emu_close(be);
}

static const nmlx_backend_ops emu_ops = {
    .name = "emu",
    .alloc = emu_alloc,
    .free = emu_free_buf,
    .copy = emu_copy,
    .upload = emu_upload,
    .download = emu_download,
    .sync = emu_sync,
    .argmax = emu_argmax,
    .sample = emu_sample,
    .prepare_tensor = emu_prepare,
    .matmul = emu_matmul,
    .matmul_multi = emu_matmul_multi,
    .embed = emu_embed,
    .rmsnorm = emu_rmsnorm,
    .rope = emu_rope,
    .attention = emu_attention,
    .rope_rows = emu_rope_rows,
    .attention_rows = emu_attention_rows,
    .rope_kv = emu_rope_kv,
    .rope_kv_rows = emu_rope_kv_rows,
    .act_mul = emu_act_mul,
    .swiglu_clipped = emu_swiglu,
    .act = emu_act,
    .add = emu_add,
    .scale = emu_scale,
    .softmax = emu_softmax,
    .gaussian_topk = emu_topk,
    .rms_match = emu_rms_match,
    .mul_rows = emu_mul_rows,
    .altup_predict = emu_predict,
    .altup_correct = emu_correct,
    .rope_interleaved = emu_rope_il,
};

static void emu_free(nmlx_backend *be) {
    if (!be) return;
    emu_state *e = emu_of(be);
    for (size_t i = 0; i < e->n_tensors; i++)
        free(e->tensors[i]);
    free(e->tensors);
    free(e->regions);
    free(e->scratch);
    nmlx_sampler_free(&e->sampler);
    if (e->base) munmap(e->base, EMU_ARENA);
    free(e);
    nmlx_backend_drop_serial(be);
    free(be);
}

/* An emu backend over `cpu` (which must outlive it). */
static nmlx_status emu_create(nmlx_backend *cpu, nmlx_backend **out) {
    nmlx_backend *be = calloc(1, sizeof *be);
    emu_state *e = calloc(1, sizeof *e);
    *out = NULL;
    if (!be || !e) {
        free(be), free(e);
        return NMLX_ERR_NOMEM;
    }
    be->ops = &emu_ops;
    be->impl = e;
    be->n_threads = cpu->n_threads;
    be->pool = cpu->pool;
    e->cpu = cpu;
    e->regions = calloc(EMU_MAX_REGIONS, sizeof *e->regions);
    e->base = mmap(NULL, EMU_ARENA, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (e->base == MAP_FAILED) e->base = NULL;
    /* one caller at a time, as a GPU backend (backend.h call_lock) */
    if (!e->regions || !e->base || nmlx_backend_make_serial(be) != NMLX_OK) {
        emu_free(be);
        return NMLX_ERR_NOMEM;
    }
    *out = be;
    return NMLX_OK;
}

static long emu_violations(nmlx_backend *be) { return emu_of(be)->violations; }
static const char *emu_first_violation(nmlx_backend *be) { return emu_of(be)->first; }

#endif
