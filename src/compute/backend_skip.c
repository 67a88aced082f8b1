/* NMLX_SKIP_OPS=op[,op...] (timing only): the named ops of the backend's
 * table do nothing. A decode step with, say, `attention` skipped runs every
 * other kernel as before, so the drop in its time is what attention costs
 * inside the real step: overlap with its neighbours (programmatic dependent
 * launch, graph replay) included, which a kernel profiler's one-kernel-at-
 * a-time durations leave out. Outputs are wrong while it is set; the
 * library says so on stderr once. Ops: attention, add_rmsnorm, rope_kv,
 * rmsnorm, matmul, matmul_multi, gate_up_act, embed, and for batched steps
 * attention_rows, rope_kv_rows, act_mul, add. */
#include "common.h"
#include "compute/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void skip_attention(nmlx_backend *be, const nmlx_attn_args *a) { (void)be, (void)a; }
static void skip_add_rmsnorm(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                             float w_offset, float eps, float *y, int64_t R, int64_t D) {
    (void)be, (void)x, (void)d, (void)w, (void)w_offset, (void)eps, (void)y, (void)R, (void)D;
}
static void skip_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a) { (void)be, (void)a; }
static void skip_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                         float eps, float *y, int64_t R, int64_t D) {
    (void)be, (void)x, (void)w, (void)w_offset, (void)eps, (void)y, (void)R, (void)D;
}
static void skip_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                        const float *x, float *y, int64_t T) {
    (void)be, (void)w, (void)bias, (void)x, (void)y, (void)T;
}
static void skip_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                              const nmlx_tensor *const *biases, const float *x, float *const *ys,
                              int64_t T) {
    (void)be, (void)n, (void)ws, (void)biases, (void)x, (void)ys, (void)T;
}
static void skip_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                             const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                             const float *x, float *gate, float *up, int64_t T) {
    (void)be, (void)act, (void)g, (void)u, (void)bg, (void)bu, (void)x, (void)gate, (void)up,
        (void)T;
}
static void skip_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                       float scale, float *out) {
    (void)be, (void)table, (void)ids, (void)T, (void)scale, (void)out;
}

static void skip_attention_rows(nmlx_backend *be, const nmlx_attn_args *a,
                                const nmlx_attn_row *rows, int64_t R) {
    (void)be, (void)a, (void)rows, (void)R;
}
static bool skip_rope_kv_rows(nmlx_backend *be, const nmlx_rope_kv_args *a,
                              const nmlx_kv_row_dst *rows, int64_t R) {
    (void)be, (void)a, (void)rows, (void)R;
    return true; /* "done": the caller makes no per-row calls instead */
}
static void skip_act_mul(nmlx_backend *be, nmlx_act act, const float *gate, const float *up,
                         float *out, int64_t n) {
    (void)be, (void)act, (void)gate, (void)up, (void)out, (void)n;
}
static void skip_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n) {
    (void)be, (void)a, (void)b, (void)out, (void)n;
}

/* Whether the comma-separated list names op */
static bool listed(const char *list, const char *op) {
    const size_t n = strlen(op);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, op, n)) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

void nmlx_backend_apply_skip(nmlx_backend *be) {
    const char *env = getenv("NMLX_SKIP_OPS");
    if (!env || !*env) return;
    if (be->ops != &be->own_ops) {
        be->own_ops = *be->ops;
        be->ops = &be->own_ops;
    }
    nmlx_backend_ops *o = &be->own_ops;
    /* only ops the backend has: a NULL op keeps the caller's unfused path */
    if (listed(env, "attention") && o->attention) o->attention = skip_attention;
    if (listed(env, "add_rmsnorm") && o->add_rmsnorm) o->add_rmsnorm = skip_add_rmsnorm;
    if (listed(env, "rope_kv") && o->rope_kv) o->rope_kv = skip_rope_kv;
    if (listed(env, "rmsnorm") && o->rmsnorm) o->rmsnorm = skip_rmsnorm;
    if (listed(env, "matmul") && o->matmul) o->matmul = skip_matmul;
    if (listed(env, "matmul_multi") && o->matmul_multi) o->matmul_multi = skip_matmul_multi;
    if (listed(env, "gate_up_act") && o->gate_up_act) o->gate_up_act = skip_gate_up_act;
    if (listed(env, "embed") && o->embed) o->embed = skip_embed;
    if (listed(env, "attention_rows") && o->attention_rows) o->attention_rows = skip_attention_rows;
    if (listed(env, "rope_kv_rows") && o->rope_kv_rows) o->rope_kv_rows = skip_rope_kv_rows;
    if (listed(env, "act_mul") && o->act_mul) o->act_mul = skip_act_mul;
    if (listed(env, "add") && o->add) o->add = skip_add;
    static bool said;
    if (!said) {
        said = true;
        fprintf(stderr,
                "nmlx: NMLX_SKIP_OPS=%s: those ops do nothing (timing only; outputs are wrong)\n",
                env);
    }
}
