/* NMLX_PROFILE=1: time every op of a backend (see backend.h). The backend's
 * op table is replaced by one whose entries time the real op and forward to
 * it; a device backend is synchronised after each op so the time is the
 * op's own (launch + run), and its decode-step graphs are left off. Ops that
 * call other ops are timed once, as the outer op. The table is printed to
 * stderr, largest total first, when the backend is freed. */
#include "common.h"
#include "compute/backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { PROF_MAX_ROWS = 512, PROF_KEY = 128, PROF_PRINT = 48 };

typedef struct {
    char key[PROF_KEY];
    int64_t calls;
    double seconds;
} prof_row;

/* ops first: be->ops points at this struct while profiling */
typedef struct {
    nmlx_backend_ops ops;
    const nmlx_backend_ops *inner;
    bool device;
    pthread_mutex_t mu;
    prof_row rows[PROF_MAX_ROWS];
    int n_rows;
    int64_t dropped; /* calls whose key found no free row */
} prof_state;

static _Thread_local int prof_depth; /* > 0 inside a timed op */

static prof_state *state_of(nmlx_backend *be) { return (prof_state *)(void *)be->ops; }

static void record(prof_state *p, const char *key, double s) {
    pthread_mutex_lock(&p->mu);
    int i = 0;
    while (i < p->n_rows && strcmp(p->rows[i].key, key))
        i++;
    if (i == p->n_rows && p->n_rows < PROF_MAX_ROWS)
        snprintf(p->rows[p->n_rows++].key, PROF_KEY, "%s", key);
    if (i < p->n_rows) {
        p->rows[i].calls++;
        p->rows[i].seconds += s;
    } else {
        p->dropped++;
    }
    pthread_mutex_unlock(&p->mu);
}

/* T as a bucket: the exact count up to 8 (decode, batched decode), then ranges */
static const char *t_bucket(int64_t T, char *buf, size_t n) {
    if (T <= 8)
        snprintf(buf, n, "T=%d", (int)T);
    else if (T <= 64)
        snprintf(buf, n, "T=9-64");
    else
        snprintf(buf, n, "T>64");
    return buf;
}

static void weight_key(const nmlx_weight *w, char *buf, size_t n) {
    if (w->mode == NMLX_QUANT_NONE)
        snprintf(buf, n, "%s %lldx%lld", nmlx_dtype_name(w->w.dtype), (long long)w->rows,
                 (long long)w->cols);
    else
        snprintf(buf, n, "%s%dg%d %lldx%lld", w->mode == NMLX_QUANT_AFFINE ? "q" : "mxfp", w->bits,
                 w->group_size, (long long)w->rows, (long long)w->cols);
}

#define PROF_BEGIN(be)                                                                             \
    prof_state *P = state_of(be);                                                                  \
    const bool outer = prof_depth++ == 0;                                                          \
    const double t0 = outer ? nmlx_time_seconds() : 0.0

#define PROF_END(be, ...)                                                                          \
    do {                                                                                           \
        prof_depth--;                                                                              \
        if (outer) {                                                                               \
            if (P->device) P->inner->sync(be);                                                     \
            char key_[PROF_KEY];                                                                   \
            snprintf(key_, sizeof key_, __VA_ARGS__);                                              \
            record(P, key_, nmlx_time_seconds() - t0);                                             \
        }                                                                                          \
    } while (0)

/* ---- wrappers: forward, timed ---- */

static void p_copy(nmlx_backend *be, void *dst, const void *src, size_t bytes) {
    PROF_BEGIN(be);
    P->inner->copy(be, dst, src, bytes);
    PROF_END(be, "copy");
}
static void p_upload(nmlx_backend *be, void *dst, const void *host, size_t bytes) {
    PROF_BEGIN(be);
    P->inner->upload(be, dst, host, bytes);
    PROF_END(be, "upload");
}
static void p_download(nmlx_backend *be, void *host, const void *src, size_t bytes) {
    PROF_BEGIN(be);
    P->inner->download(be, host, src, bytes);
    PROF_END(be, "download %s", bytes >= 65536 ? ">=64K" : "<64K");
}
static int32_t p_argmax(nmlx_backend *be, const float *x, int64_t n) {
    PROF_BEGIN(be);
    int32_t id = P->inner->argmax(be, x, n);
    PROF_END(be, "argmax");
    return id;
}
static int32_t p_sample(nmlx_backend *be, const float *x, int64_t n, const nmlx_sampler_params *sp,
                        const int32_t *history, size_t n_history, double u) {
    PROF_BEGIN(be);
    int32_t id = P->inner->sample(be, x, n, sp, history, n_history, u);
    PROF_END(be, "sample");
    return id;
}
static void p_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                     const float *x, float *y, int64_t T) {
    PROF_BEGIN(be);
    P->inner->matmul(be, w, bias, x, y, T);
    char wk[64], tb[16];
    weight_key(w, wk, sizeof wk);
    PROF_END(be, "matmul %s %s", wk, t_bucket(T, tb, sizeof tb));
}
static void p_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                           const nmlx_tensor *const *biases, const float *x, float *const *ys,
                           int64_t T) {
    PROF_BEGIN(be);
    P->inner->matmul_multi(be, n, ws, biases, x, ys, T);
    char wk[64], tb[16];
    weight_key(ws[0], wk, sizeof wk);
    PROF_END(be, "matmul_multi x%d %s.. %s", n, wk, t_bucket(T, tb, sizeof tb));
}
static void p_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                    float scale, float *out) {
    PROF_BEGIN(be);
    P->inner->embed(be, table, ids, T, scale, out);
    PROF_END(be, "embed");
}
static void p_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                      float eps, float *y, int64_t R, int64_t D) {
    PROF_BEGIN(be);
    P->inner->rmsnorm(be, x, w, w_offset, eps, y, R, D);
    PROF_END(be, "rmsnorm D=%lld", (long long)D);
}
static void p_rope(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                   int64_t pos0, const float *freqs, float mscale) {
    PROF_BEGIN(be);
    P->inner->rope(be, x, T, H, HD, rot, pos0, freqs, mscale);
    char tb[16];
    PROF_END(be, "rope %s", t_bucket(T, tb, sizeof tb));
}
static void p_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    PROF_BEGIN(be);
    P->inner->attention(be, a);
    char tb[16];
    PROF_END(be, "attention %s", t_bucket(a->T, tb, sizeof tb));
}
static void p_rope_rows(nmlx_backend *be, float *x, int64_t R, int64_t H, int64_t HD, int64_t rot,
                        const int64_t *pos, const float *freqs, float mscale) {
    PROF_BEGIN(be);
    P->inner->rope_rows(be, x, R, H, HD, rot, pos, freqs, mscale);
    char tb[16];
    PROF_END(be, "rope_rows %s", t_bucket(R, tb, sizeof tb));
}
static void p_attention_rows(nmlx_backend *be, const nmlx_attn_args *a, const nmlx_attn_row *rows,
                             int64_t R) {
    PROF_BEGIN(be);
    P->inner->attention_rows(be, a, rows, R);
    char tb[16];
    PROF_END(be, "attention_rows %s", t_bucket(R, tb, sizeof tb));
}
static void p_add_rmsnorm(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                          float w_offset, float eps, float *y, int64_t R, int64_t D) {
    PROF_BEGIN(be);
    P->inner->add_rmsnorm(be, x, d, w, w_offset, eps, y, R, D);
    PROF_END(be, "add_rmsnorm D=%lld", (long long)D);
}
static void p_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a) {
    PROF_BEGIN(be);
    P->inner->rope_kv(be, a);
    PROF_END(be, "rope_kv");
}
static bool p_rope_kv_rows(nmlx_backend *be, const nmlx_rope_kv_args *a,
                           const nmlx_kv_row_dst *rows, int64_t R) {
    char tb[32];
    PROF_BEGIN(be);
    bool ok = P->inner->rope_kv_rows(be, a, rows, R);
    PROF_END(be, "rope_kv_rows %s", t_bucket(R, tb, sizeof tb));
    return ok;
}
static void p_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                          const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                          const float *x, float *gate, float *up, int64_t T) {
    PROF_BEGIN(be);
    P->inner->gate_up_act(be, act, g, u, bg, bu, x, gate, up, T);
    char wk[64], tb[16];
    weight_key(g, wk, sizeof wk);
    PROF_END(be, "gate_up_act %s %s", wk, t_bucket(T, tb, sizeof tb));
}
static bool p_add_rmsnorm_matmul(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *nw,
                                 float w_offset, float eps, float *y, int64_t D, int act, int n,
                                 const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                                 float *const *ys, const nmlx_rope_kv_args *rope) {
    PROF_BEGIN(be);
    bool done = P->inner->add_rmsnorm_matmul(be, x, d, nw, w_offset, eps, y, D, act, n, ws, biases,
                                             ys, rope);
    char wk[64];
    weight_key(ws[0], wk, sizeof wk);
    PROF_END(be, "add_rmsnorm_%s x%d %s%s%s", act < 0 ? "matmul" : "gate_up_act", n, wk,
             rope ? " +rope_kv" : "", done ? "" : " (declined)");
    return done;
}
static bool p_moe_experts(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                          const int32_t *idx, const float *scores, int64_t T, int64_t k,
                          struct nmlx_switch_buffers *b, float *out) {
    PROF_BEGIN(be);
    bool done = P->inner->moe_experts(be, g, x, idx, scores, T, k, b, out);
    char tb[16];
    PROF_END(be, "moe_experts k=%lld %s", (long long)k, t_bucket(T, tb, sizeof tb));
    return done;
}
static bool p_moe_routed(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                         const float *logits, int routing, bool norm, int64_t T, int64_t k,
                         struct nmlx_switch_buffers *b, float *out) {
    PROF_BEGIN(be);
    bool done = P->inner->moe_routed(be, g, x, logits, routing, norm, T, k, b, out);
    char tb[16];
    PROF_END(be, "moe_routed k=%lld %s%s", (long long)k, t_bucket(T, tb, sizeof tb),
             done ? "" : " (declined)");
    return done;
}
static void p_act_mul(nmlx_backend *be, nmlx_act act, const float *gate, const float *up,
                      float *out, int64_t n) {
    PROF_BEGIN(be);
    P->inner->act_mul(be, act, gate, up, out, n);
    PROF_END(be, "act_mul");
}
static void p_swiglu_clipped(nmlx_backend *be, const float *gate, const float *up, float *out,
                             int64_t n, float alpha, float limit) {
    PROF_BEGIN(be);
    P->inner->swiglu_clipped(be, gate, up, out, n, alpha, limit);
    PROF_END(be, "swiglu_clipped");
}
static void p_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n) {
    PROF_BEGIN(be);
    P->inner->act(be, act, x, n);
    PROF_END(be, "act");
}
static void p_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n) {
    PROF_BEGIN(be);
    P->inner->add(be, a, b, out, n);
    PROF_END(be, "add");
}
static void p_scale(nmlx_backend *be, float *x, float s, int64_t n) {
    PROF_BEGIN(be);
    P->inner->scale(be, x, s, n);
    PROF_END(be, "scale");
}
static void p_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n) {
    PROF_BEGIN(be);
    P->inner->softmax(be, x, R, n);
    PROF_END(be, "softmax");
}
static void p_gaussian_topk(nmlx_backend *be, float *x, int64_t R, int64_t n, float std_mult) {
    PROF_BEGIN(be);
    P->inner->gaussian_topk(be, x, R, n, std_mult);
    PROF_END(be, "gaussian_topk");
}
static void p_rms_match(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                        float eps) {
    PROF_BEGIN(be);
    P->inner->rms_match(be, ref, x, T, D, eps);
    PROF_END(be, "rms_match");
}
static void p_mul_rows(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D) {
    PROF_BEGIN(be);
    P->inner->mul_rows(be, x, w, R, D);
    PROF_END(be, "mul_rows");
}
static void p_altup_predict(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                            const nmlx_tensor *coefs, float *out, int64_t K, int64_t T, int64_t D) {
    PROF_BEGIN(be);
    P->inner->altup_predict(be, x, stride, router, coefs, out, K, T, D);
    PROF_END(be, "altup_predict");
}
static void p_altup_correct(nmlx_backend *be, float *p, int64_t stride, const float *act,
                            const float *router, const nmlx_tensor *coefs, float clip,
                            int64_t active, int64_t K, int64_t T, int64_t D) {
    PROF_BEGIN(be);
    P->inner->altup_correct(be, p, stride, act, router, coefs, clip, active, K, T, D);
    PROF_END(be, "altup_correct");
}

static void p_rope_interleaved(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD,
                               int64_t pos0, const float *freqs) {
    PROF_BEGIN(be);
    P->inner->rope_interleaved(be, x, T, H, HD, pos0, freqs);
    char tb[16];
    PROF_END(be, "rope_interleaved %s", t_bucket(T, tb, sizeof tb));
}

/* ---- attach, report ---- */

bool nmlx_backend_profile_wanted(void) {
    const char *e = getenv("NMLX_PROFILE");
    return e && *e && strcmp(e, "0");
}

nmlx_status nmlx_backend_profile_attach(nmlx_backend *be) {
    prof_state *p = nmlx_calloc(1, sizeof *p);
    if (!p) return nmlx_fail(NMLX_ERR_NOMEM, "NMLX_PROFILE: out of memory");
    const nmlx_backend_ops *in = be->ops;
    p->inner = in;
    p->device = !nmlx_backend_is_host(be);
    pthread_mutex_init(&p->mu, NULL);
    nmlx_backend_ops o = *in; /* untimed: alloc, free, sync, prepare, release, mem_info */
    o.decode_step = NULL;     /* each op syncs: no graph capture or replay */
    o.step_graph = NULL;
#define WRAP(op) o.op = in->op ? p_##op : NULL
    WRAP(copy);
    WRAP(upload);
    WRAP(download);
    WRAP(argmax);
    WRAP(sample);
    WRAP(matmul);
    WRAP(matmul_multi);
    WRAP(embed);
    WRAP(rmsnorm);
    WRAP(rope);
    WRAP(attention);
    WRAP(rope_rows);
    WRAP(attention_rows);
    WRAP(add_rmsnorm);
    WRAP(rope_kv);
    WRAP(rope_kv_rows);
    WRAP(gate_up_act);
    WRAP(add_rmsnorm_matmul);
    WRAP(moe_experts);
    WRAP(moe_routed);
    WRAP(act_mul);
    WRAP(swiglu_clipped);
    WRAP(act);
    WRAP(add);
    WRAP(scale);
    WRAP(softmax);
    WRAP(gaussian_topk);
    WRAP(rms_match);
    WRAP(mul_rows);
    WRAP(altup_predict);
    WRAP(altup_correct);
    WRAP(rope_interleaved);
#undef WRAP
    p->ops = o;
    be->ops = &p->ops;
    return NMLX_OK;
}

static int by_seconds_desc(const void *a, const void *b) {
    const prof_row *x = a, *y = b;
    return (x->seconds < y->seconds) - (x->seconds > y->seconds);
}

void nmlx_backend_profile_detach(nmlx_backend *be, FILE *out) {
    if (!be || !be->ops) return;
    if (be->ops->copy != p_copy) return; /* not profiled */
    prof_state *p = state_of(be);
    double total = 0;
    int64_t calls = 0;
    for (int i = 0; i < p->n_rows; i++)
        total += p->rows[i].seconds, calls += p->rows[i].calls;
    qsort(p->rows, (size_t)p->n_rows, sizeof p->rows[0], by_seconds_desc);
    if (out && calls) {
        fprintf(out,
                "nmlx profile (NMLX_PROFILE, backend %s%s): %lld op calls, %.1f ms in ops\n"
                "  %-52s %9s %10s %9s %6s\n",
                p->inner->name, p->device ? ", each op synchronised, graphs off" : "",
                (long long)calls, total * 1e3, "op", "calls", "total ms", "avg us", "share");
        for (int i = 0; i < p->n_rows && i < PROF_PRINT; i++) {
            const prof_row *r = &p->rows[i];
            fprintf(out, "  %-52s %9lld %10.2f %9.1f %5.1f%%\n", r->key, (long long)r->calls,
                    r->seconds * 1e3, r->seconds * 1e6 / (double)r->calls,
                    total > 0 ? 100.0 * r->seconds / total : 0.0);
        }
        if (p->n_rows > PROF_PRINT) fprintf(out, "  (%d more rows)\n", p->n_rows - PROF_PRINT);
        if (p->dropped)
            fprintf(out, "  (%lld calls past %d distinct ops not counted)\n", (long long)p->dropped,
                    PROF_MAX_ROWS);
    }
    be->ops = p->inner;
    pthread_mutex_destroy(&p->mu);
    nmlx_free(p);
}
