/* Basic hand-written layers shared by every architecture: linear
 * (projection with optional bias) and RMSNorm. Loading validates names,
 * shapes and dtypes against the config and names the tensor at fault. */
#ifndef NMLX_LAYERS_H
#define NMLX_LAYERS_H

#include "common.h"
#include "compute/backend.h"
#include "io/safetensors.h"

typedef struct nmlx_linear {
    nmlx_weight w;           /* [out, in] */
    const nmlx_tensor *bias; /* [out] or NULL */
} nmlx_linear;

typedef struct nmlx_rmsnorm {
    const nmlx_tensor *w; /* [dim] */
    float eps;
    float offset; /* 1 for Gemma's (1 + w) */
} nmlx_rmsnorm;

/* Loads `<name>.weight` [out, in] (F32/F16/BF16), or, when `<name>.scales`
 * exists, the MLX-quantized weight/scales/biases (docs/quantization.md);
 * errors name the tensor. Used for linear layers and embedding tables. */
nmlx_status nmlx_weight_load(nmlx_weight *w, const nmlx_weights *ws, const char *name, int64_t out,
                             int64_t in);
/* Loads `<name>.weight` [out, in] (dense or quantized, as nmlx_weight_load)
 * and `<name>.bias` [out] if has_bias. */
nmlx_status nmlx_linear_load(nmlx_linear *l, const nmlx_weights *ws, const char *name, int64_t out,
                             int64_t in, bool has_bias);
/* dst = rows [row0, row0 + n) of src (a fused projection such as qkv_proj
 * or gate_up_proj), without copying: the views share src's memory. */
nmlx_status nmlx_linear_rows(const nmlx_linear *src, int64_t row0, int64_t n, const char *name,
                             nmlx_linear *dst);
/* y[T, out] = x[T, in] @ W^T + b */
void nmlx_linear_forward(nmlx_backend *be, const nmlx_linear *l, const float *x, float *y,
                         int64_t T);
/* resid != NULL: resid[T, out] += x @ W^T + b as one backend call
 * (matmul_residual) where the backend takes it: true, y untouched; false:
 * y = nmlx_linear_forward(l, x), resid untouched (the caller adds). */
bool nmlx_linear_forward_residual(nmlx_backend *be, const nmlx_linear *l, const float *x, float *y,
                                  float *resid, int64_t T);
/* ys[i] = nmlx_linear_forward(ls[i], x) for n linears reading the same x,
 * in one backend pass where the backend has one (the same bits either way). */
void nmlx_linear_forward_multi(nmlx_backend *be, int n, const nmlx_linear *const *ls,
                               const float *x, float *const *ys, int64_t T);

/* Loads `<name>.weight` [dim]. */
nmlx_status nmlx_rmsnorm_load(nmlx_rmsnorm *n, const nmlx_weights *ws, const char *name,
                              int64_t dim, float eps, float offset);
/* y[R, dim] = rmsnorm(x[R, dim]); y may alias x. */
void nmlx_rmsnorm_forward(nmlx_backend *be, const nmlx_rmsnorm *n, const float *x, float *y,
                          int64_t R, int64_t dim);

/* x[T, D] += d, then xn = norm(x) if norm != NULL: one add_rmsnorm where
 * the backend has it (else add, then rmsnorm). d NULL: x already holds the
 * sum (nmlx_linear_forward_residual): the norm only. */
void nmlx_residual_norm(nmlx_backend *be, float *x, const float *d, const nmlx_rmsnorm *norm,
                        float *xn, int64_t T, int64_t D);

/* A residual add and the norm after it, left to the projections that read
 * its output: x[T, D] += d, then xn = norm(x) (nmlx_residual_norm); d NULL:
 * the add is done (matmul_residual), the norm only. */
typedef struct nmlx_pending_norm {
    float *x;
    const float *d;
    const nmlx_rmsnorm *norm;
    float *xn;
    int64_t D;
} nmlx_pending_norm;

/* Runs p (nothing if p is NULL) before the n linears ls that read p->xn:
 * true when the backend also ran them, fused with it (add_rmsnorm_matmul,
 * T == 1): ys[i] = ls[i](xn), or for act >= 0 (n == 2, gate and up)
 * ys[0] = act(gate(xn)) * up(xn), ys[1] scratch; false: the caller runs
 * them on p->xn. */
bool nmlx_pending_norm_run(nmlx_backend *be, const nmlx_pending_norm *p, int act, int n,
                           const nmlx_linear *const *ls, float *const *ys, int64_t T);

/* One decode token: p, the q/k/v linears qkv (ys: q, k, v) and rope_kv(rope)
 * (rope->q, k, v the ys, T == 1, no q/k norm) as one backend call
 * (add_rmsnorm_matmul with rope). true: all of it done; false: nothing done
 * (the caller runs nmlx_pending_norm_run, then rope_kv). */
bool nmlx_pending_norm_rope_kv(nmlx_backend *be, const nmlx_pending_norm *p,
                               const nmlx_linear *const *qkv, float *const *ys,
                               const nmlx_rope_kv_args *rope);

/* Hands a loaded layer's tensors to the backend once (backend.h
 * prepare_tensor): on the CPU nothing changes; on a GPU the layer then points
 * at device copies. Views of one fused tensor share its copy. */
nmlx_status nmlx_weight_prepare(nmlx_backend *be, nmlx_weight *w);
nmlx_status nmlx_linear_prepare(nmlx_backend *be, nmlx_linear *l);
nmlx_status nmlx_rmsnorm_prepare(nmlx_backend *be, nmlx_rmsnorm *n);

/* Fetches a float (F32/F16/BF16) tensor of the given shape; errors name it. */
nmlx_status nmlx_get_float_tensor(const nmlx_weights *ws, const char *name, int ndim,
                                  const int64_t *shape, const nmlx_tensor **out);

/* Rows of the LM head per pass when every row's logits are kept: the
 * backend buffer handed to nmlx_lm_head_rows holds this many rows. */
enum { NMLX_LOGIT_ROWS = 16 };

/* host_out[rows, vocab] = head(xn[rows, hidden]), NMLX_LOGIT_ROWS rows at a
 * time through the backend buffer `dev` ([NMLX_LOGIT_ROWS, vocab]), then
 * soft-capped on the host (cap * tanh(logit / cap)) if softcap > 0. */
void nmlx_lm_head_rows(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                       int64_t hidden, int64_t vocab, float softcap, float *dev, float *host_out);

/* Where the LM head's rows go instead of being downloaded, on the calling
 * thread (a model, so its backend, may be shared by threads: nmlx.h; the
 * LM head runs on the thread that called eval). */
typedef struct nmlx_logits_defer {
    /* Set by the session around a greedy decode step (backends with
     * argmax; session.c): nmlx_lm_head_download records the row left on
     * the backend instead of downloading it. */
    bool on;
    const float *dev; /* the recorded row, NULL if none */
    float *host;      /* where the download would have gone */
    int64_t vocab;
    float softcap;
    /* Set by batched decode around forward_batch (batch.c): row r of
     * nmlx_lm_head_scatter goes by device copy to rows[r] (each session's
     * own backend buffer; a NULL entry: downloaded as usual) instead of
     * being downloaded, so the next step's chunks can reuse the head's
     * buffer; rows_copied says it happened (never for a soft-capped head:
     * the cap is applied on the host copy). */
    float *const *rows;
    bool rows_copied;
} nmlx_logits_defer;

/* This thread's (zero: nothing deferred). */
nmlx_logits_defer *nmlx_logits_defer_here(void);

/* Its two halves, for a decode step the backend records (backend.h
 * step_graph): dev[rows, vocab] = head(xn) for rows <= NMLX_LOGIT_ROWS,
 * then host[vocab] = dev row downloaded (and soft-capped). */
void nmlx_lm_head_device(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                         float *dev);
void nmlx_lm_head_download(nmlx_backend *be, const float *dev, int64_t vocab, float softcap,
                           float *host);

/* The same with row r written to host_rows[r] (batched decode: each
 * session's own logits buffer), or, where nmlx_logits_defer_here()->rows[r] is set
 * and the head is not soft-capped, copied to that backend buffer on the
 * backend (backend.h; batch.c). */
void nmlx_lm_head_scatter(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                          int64_t hidden, int64_t vocab, float softcap, float *dev,
                          float *const *host_rows);

/* num_hidden_layers against the checkpoint, before anything is sized from
 * it: some tensor must be named "<prefix>.layers.<n_layers - 1>.";
 * otherwise NMLX_ERR_INVALID_MODEL giving the layers the tensors have. */
nmlx_status nmlx_check_layer_count(const nmlx_weights *ws, const char *prefix, int64_t n_layers,
                                   const char *config_path);

/* NMLX_ERR_INVALID_ARG naming the first id outside [0, vocab). */
nmlx_status nmlx_check_ids(const int32_t *ids, int64_t T, int64_t vocab);
/* A batched decode step's input: B in [1, max_batch] (else
 * NMLX_ERR_INVALID_ARG), then its B ids as nmlx_check_ids. */
nmlx_status nmlx_check_batch(const int32_t *ids, int64_t B, int64_t max_batch, int64_t vocab);

#endif
