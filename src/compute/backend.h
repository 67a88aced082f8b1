/* The backend interface: a table of ops per backend (CPU now, CUDA later).
 * Model code calls only these ops on buffers the backend owns, so a new
 * backend plugs in without touching model code.
 *
 * Dimension letters (project-wide): T tokens, D model width / output rows,
 * N input width, H query heads, KVH key/value heads, HD head dim, V vocab.
 * Activations are f32 and contiguous; weights are nmlx_weight/nmlx_tensor in
 * F32/F16/BF16 (quantized modes later). Every op is synchronous from the
 * caller's view on the CPU; a GPU backend orders ops on one stream and
 * `sync` waits for them. */
#ifndef NMLX_BACKEND_H
#define NMLX_BACKEND_H

#include "nmlx.h"
#include "tensor.h"
#include "threadpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>

typedef struct nmlx_backend nmlx_backend;
struct nmlx_switch_glu; /* ported/switch_layers.h (moe_experts) */
struct nmlx_switch_buffers;

typedef enum nmlx_act { NMLX_ACT_SILU = 0, NMLX_ACT_GELU_TANH, NMLX_ACT_GELU_ERF } nmlx_act;

/* Scaled dot-product attention for one sequence, reading K/V from a cache in
 * mlx-lm's layout [KVH, cap, HD] (row j = the key at cache index j).
 * Query t sits at cache index q_pos + t and sees keys j with
 *   j <= q_pos + t            (causal) and
 *   j >  q_pos + t - window   (if window > 0, sliding window).
 * Head h reads KV head h / (H / KVH) (GQA). out[t, h, :] = softmax(scale *
 * q.k (soft-capped if softcap > 0), with an extra sink logit sinks[h] if
 * sinks != NULL) @ v. */
typedef struct nmlx_attn_args {
    const float *q;     /* [T, H, HD] */
    const float *k, *v; /* [KVH, cap, HD] */
    float *out;         /* [T, H, HD] */
    int64_t T, H, KVH, HD, cap;
    int64_t q_pos; /* cache index of q[0] */
    int64_t n_kv;  /* keys valid in the cache: 0..n_kv-1 */
    float scale;
    int64_t window;     /* 0 = full causal */
    float softcap;      /* 0 = off */
    const float *sinks; /* [H] or NULL */
    float *scratch;     /* >= n_threads * (H / KVH) * n_kv floats, backend memory */
    /* F16/BF16: the cache is half precision, read from k16/v16 instead of
     * k/v (same layout; host backends only: the CPU backend) */
    nmlx_dtype kv_dtype;
    const uint16_t *k16, *v16;
} nmlx_attn_args;

enum { NMLX_MATMUL_MULTI_MAX = 4 };

/* One row of a batched decode's attention (attention_rows): that sequence's
 * cache and where its one query sits, as the fields of nmlx_attn_args. */
typedef struct nmlx_attn_row {
    const float *k, *v; /* [KVH, cap, HD], f32 */
    int64_t cap, q_pos, n_kv, window;
} nmlx_attn_row;

/* The arguments of rope_kv (below): per-head RMSNorm of q and k, RoPE, and the KV cache
 * append for T tokens of one sequence, as one op. */
typedef struct nmlx_rope_kv_args {
    float *q;                 /* [T, H, HD], normed and rotated in place */
    float *k;                 /* [T, KVH, HD] projection (left unspecified: scratch) */
    const float *v;           /* [T, KVH, HD] projection */
    float *k_cache, *v_cache; /* [KVH, cap, HD] f32: token t's rows go to row0 + t */
    int64_t T, H, KVH, HD, cap, row0;
    bool qk_norm;                       /* false: no norm (the weights are ignored) */
    const nmlx_tensor *q_norm, *k_norm; /* [HD] any float dtype, or NULL (no weight) */
    float q_norm_offset, q_norm_eps, k_norm_offset, k_norm_eps;
    int64_t rot, pos0;  /* rot < 2 or freqs NULL: no RoPE */
    const float *freqs; /* [rot/2] backend buffer */
    float mscale;
} nmlx_rope_kv_args;

/* One row of rope_kv_rows (below): where that sequence's token goes. */
typedef struct nmlx_kv_row_dst {
    float *k_cache, *v_cache; /* [KVH, cap, HD] f32 */
    int64_t cap, row0, pos;   /* the token's cache row and RoPE position */
} nmlx_kv_row_dst;

enum { NMLX_STEP_BEGIN = 0, NMLX_STEP_END = 1 };                          /* step_graph's `what` */
enum { NMLX_DECODE_END = 0, NMLX_DECODE_ONE = 1, NMLX_DECODE_BATCH = 2 }; /* decode_step's */

typedef struct nmlx_backend_ops {
    const char *name;
    /* Optional: makes the calling thread ready to use be (CUDA: its device,
     * which is per thread); called by nmlx_backend_enter. */
    void (*bind_thread)(nmlx_backend *be);

    /* Activation buffers; zero-initialised. NULL on failure. */
    void *(*alloc)(nmlx_backend *be, size_t bytes);
    void (*free)(nmlx_backend *be, void *ptr);
    /* dst and src are backend buffers. */
    void (*copy)(nmlx_backend *be, void *dst, const void *src, size_t bytes);
    /* Host <-> backend (on the CPU: memcpy). */
    void (*upload)(nmlx_backend *be, void *dst, const void *host, size_t bytes);
    void (*download)(nmlx_backend *be, void *host, const void *src, size_t bytes);
    void (*sync)(nmlx_backend *be);
    /* Called once per weight tensor at load: *out = a tensor with the same
     * dtype and shape whose data the backend can read (the CPU: t itself;
     * CUDA: a device copy, owned by the backend and freed with it; tensors
     * that lie inside an already prepared one share its copy). Fails with
     * NMLX_ERR_UNSUPPORTED for a dtype the backend cannot compute with.
     * t's host memory must stay mapped while the backend lives (CUDA keys
     * its copies by host address). */
    nmlx_status (*prepare_tensor)(nmlx_backend *be, const nmlx_tensor *t, const nmlx_tensor **out);
    /* Optional (NULL on the CPU): frees the backend's own state before
     * nmlx_backend_free frees the rest. */
    void (*release)(nmlx_backend *be);
    /* Optional: brackets one decode step (what = NMLX_DECODE_ONE before
     * the family's forward of one token, NMLX_DECODE_BATCH before a batched
     * step of several sessions, NMLX_DECODE_END after either, also on
     * failure). CUDA records the step's kernels as a graph and replays it:
     * one launch a token (batched steps: NMLX_CUDA_BATCH_GRAPH). */
    void (*decode_step)(nmlx_backend *be, int what);
    /* Optional (NULL on the CPU): the device memory free and in total, for
     * out-of-memory messages (nmlx_backend_fail_alloc). */
    void (*mem_info)(nmlx_backend *be, size_t *free_bytes, size_t *total_bytes);
    /* Optional (CUDA unless NMLX_CUDA_GRAPH=0; NULL elsewhere): one-token
     * decode steps recorded once and replayed, positions and the token id
     * read from device memory. Inside decode_step's brackets, model code
     * calls step_graph(be, NMLX_STEP_BEGIN, key, pos, id) before the step's
     * first op: true = the step recorded for `key` has run again at
     * position pos with token id (the model issues none of the step's ops
     * up to its logits, only its host bookkeeping); false = the model runs
     * the step, and the backend records it. Then step_graph(be,
     * NMLX_STEP_END, key, pos, id) after the step's last op before the
     * logits' download: the recording is kept for `key` if nothing in it
     * had to wait for the host. `key` must stand for everything but pos
     * and id that the step's ops depend on (buffers, cache capacities,
     * RoPE tables): the model promises that two steps with one key issue
     * the same ops, with positions (rope_kv's pos0 and row0, attention's
     * q_pos and n_kv) that differ from pos by the same amounts, and embed
     * the one id. Returns false at END. */
    bool (*step_graph)(nmlx_backend *be, int what, uint64_t key, int64_t pos, int32_t id);
    /* Optional (NULL on the CPU): the index of the largest of x[0..n), a
     * backend buffer, the first one on ties (as nmlx_argmax); waits for
     * the result. Greedy decoding then downloads one id a token, not the
     * logits (shared/layers.h nmlx_logits_defer). */
    int32_t (*argmax)(nmlx_backend *be, const float *x, int64_t n);
    /* Optional (NULL on the CPU): nmlx_sampler_sample on a backend buffer,
     * waiting for the one id it returns: the row x[0..n) with p's
     * repetition penalty (over the last p->repetition_context_size ids of
     * history[0..n_history), host memory), temperature, top-k, min-p and
     * top-p, and the draw u in [0, 1) that the host sampler's generator
     * gave (unused at temperature 0). -1 if it could not run (the caller
     * samples on the host). Same semantics as the host sampler; ids may
     * differ only where u falls within float rounding of a boundary of the
     * filtered distribution (tests/cuda/test_cuda_sample.c counts those). */
    int32_t (*sample)(nmlx_backend *be, const float *x, int64_t n, const nmlx_sampler_params *p,
                      const int32_t *history, size_t n_history, double u);

    /* y[T, D] = x[T, N] @ W[D, N]^T (+ bias[D] if bias != NULL, any float
     * dtype). y must not alias x. */
    void (*matmul)(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias, const float *x,
                   float *y, int64_t T);
    /* Optional (NULL: one matmul call per weight): y_i = x @ W_i^T (+ b_i)
     * for n <= NMLX_MATMUL_MULTI_MAX weights reading the same x (q/k/v,
     * gate/up), in one pass over the backend's threads; each y_i as its
     * own matmul call gives it, bit for bit. */
    void (*matmul_multi)(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                         const nmlx_tensor *const *biases, const float *x, float *const *ys,
                         int64_t T);
    /* out[t, :] = table[ids[t], :] * scale; table [V, D]. */
    void (*embed)(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                  float scale, float *out);
    /* y[r, :] = x[r, :] / sqrt(mean(x[r]^2) + eps) * (w + w_offset) for R
     * rows of width D; w [D] any float dtype, or NULL for no weight; y may
     * alias x. (w_offset = 1 gives Gemma's (1 + w) norm.) */
    void (*rmsnorm)(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                    float eps, float *y, int64_t R, int64_t D);
    /* RoPE in place on x[T, H, HD], rotate-half pairing (i, i + rot/2) for
     * i < rot/2 over the first `rot` dims; angle = (pos0 + t) * freqs[i];
     * rotated values are multiplied by mscale (1 for plain RoPE).
     * freqs [rot/2] is a backend buffer. */
    void (*rope)(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                 int64_t pos0, const float *freqs, float mscale);
    void (*attention)(nmlx_backend *be, const nmlx_attn_args *a);
    /* Optional (NULL: the caller makes one rope / attention call per row;
     * the CPU). Batched decode, R rows of one token each of R sequences:
     * rope_rows rotates row r of x[R, H, HD] at position pos[r]; each row
     * equals `rope` with T = 1, pos0 = pos[r], bit for bit.
     * attention_rows runs the query a->q[r] against rows[r]'s f32 cache
     * into a->out[r] (rows [R, H, HD]); a's H, KVH, HD, scale, softcap and
     * sinks apply to every row, its k, v, cap, q_pos, n_kv, window, T and
     * 16-bit fields are ignored; each row equals `attention` with T = 1 on
     * rows[r] to rounding (bit for bit where both take the same kernel:
     * CUDA's one-query calls may take its split-K kernel). pos and rows are
     * host arrays, read during the call. */
    void (*rope_rows)(nmlx_backend *be, float *x, int64_t R, int64_t H, int64_t HD, int64_t rot,
                      const int64_t *pos, const float *freqs, float mscale);
    void (*attention_rows)(nmlx_backend *be, const nmlx_attn_args *a, const nmlx_attn_row *rows,
                           int64_t R);
    /* Optional fused ops, for the launch-bound decode step of a GPU (each
     * saves kernel launches). NULL: the model code runs the unfused
     * sequence named here. NMLX_FUSED=0 in the environment, read when a
     * backend is created, leaves them NULL on every backend (A/B runs).
     *
     * add_rmsnorm: x[r, :] += d[r, :], then y[r, :] = rmsnorm(x[r, :]) as
     * `rmsnorm` gives it (w, w_offset, eps alike), for R rows of width D:
     * a residual add and the next block's (or the final) norm. y must not
     * alias x or d. Same as `add` then `rmsnorm`: bit for bit on the CPU;
     * CUDA sums the squares in the order its rmsnorm kernel does. */
    void (*add_rmsnorm)(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                        float w_offset, float eps, float *y, int64_t R, int64_t D);
    /* rope_kv (nmlx_rope_kv_args): the same as, in order,
     *   rmsnorm(q, q_norm, ..., T * H rows, HD) and rmsnorm(k, k_norm, ...,
     *     T * KVH rows, HD) in place, if qk_norm;
     *   rope(q, T, H, ...) and rope(k, T, KVH, ...) at pos0, if rot >= 2 and
     *     freqs != NULL;
     *   copy of k's and v's row (t, h) to cache row (h, row0 + t), t < T;
     * k may or may not hold the normed, rotated keys afterwards (the CPU
     * works on it in place, CUDA leaves it). Bit for bit on the CPU; to
     * rounding on CUDA (same arithmetic as its rmsnorm and rope kernels).
     * Caches must not overlap q, k or v. */
    void (*rope_kv)(nmlx_backend *be, const nmlx_rope_kv_args *a);
    /* rope_kv_rows: rope_kv for a batched decode's R rows (one token each of
     * R sequences): row r of q [R, H, HD], k and v [R, KVH, HD] is rope_kv
     * with T = 1, pos0 = rows[r].pos and rows[r]'s cache rows; a's other
     * fields (its T, k_cache, v_cache, cap, row0, pos0 ignored) apply to every
     * row. Each row equals that rope_kv call bit for bit. rows is a host
     * array read during the call. Returns false, having done nothing, when
     * it cannot take the call (too many rows, a recorded step): the caller
     * then makes one rope_kv call per row. */
    bool (*rope_kv_rows)(nmlx_backend *be, const nmlx_rope_kv_args *a, const nmlx_kv_row_dst *rows,
                         int64_t R);
    /* gate_up_act: the gated MLP's first half for T tokens,
     *   gate[T, I] = act(x @ G^T (+ bg)) * (x @ U^T (+ bu))
     * with G, U [I, N] (biases [I] or NULL); up [T, I] is scratch (left
     * unspecified). The same as matmul_multi (or two matmuls) into gate
     * and up, then act_mul(gate, up -> gate): bit for bit on the CPU; on
     * CUDA one launch where the int16 mat-vec takes both weights (one
     * token, affine 4/8-bit), each gate/up row pair summed by one warp
     * exactly as matmul_multi sums it, else those ops. */
    void (*gate_up_act)(nmlx_backend *be, nmlx_act act, const nmlx_weight *g, const nmlx_weight *u,
                        const nmlx_tensor *bg, const nmlx_tensor *bu, const float *x, float *gate,
                        float *up, int64_t T);
    /* Optional (NULL: add_rmsnorm, then matmul_multi or gate_up_act; the
     * CPU). One decode token: add_rmsnorm(x, d, nw, w_offset, eps, y, 1, D)
     * followed, on y, by
     *   act < 0:  matmul_multi(n, ws, biases, y, ys, 1), n <= 3;
     *   act >= 0: gate_up_act((nmlx_act)act, ws[0], ws[1], biases[0],
     *             biases[1], y, ys[0], ys[1], 1), n == 2 (ys[1] scratch);
     * ws all of D columns, biases NULL or per weight. Returns false, having
     * done nothing, where it does not fuse these weights: the caller runs
     * the ops. x, d, y and the ys must not overlap. x and y as add_rmsnorm
     * gives them, the ys as those ops on y give them (CUDA: the int16
     * mat-vec of affine 4/8-bit weights staging normed x itself, its sum
     * of squares in the order of the add_rmsnorm kernel).
     * rope != NULL (act < 0, n == 3: q, k, v): then rope_kv(rope) too, with
     * rope->q == ys[0], rope->k == ys[1], rope->v == ys[2], T == 1 and
     * qk_norm false (q rotated in place, k and v appended to the cache; k's
     * and v's ys left unspecified). A backend that cannot fold it returns
     * false and does nothing: the caller may ask again with rope NULL.
     * d NULL: x already holds the residual sum (nothing added, x not
     * written); where the call directly follows a matmul_residual into x,
     * the backend may take the norm's sum of squares from that call. */
    bool (*add_rmsnorm_matmul)(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *nw,
                               float w_offset, float eps, float *y, int64_t D, int act, int n,
                               const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                               float *const *ys, const nmlx_rope_kv_args *rope);
    /* Optional (NULL: matmul into a scratch, then the residual add; the
     * CPU). x[T, w->rows] += a[T, w->cols] @ W^T (+ bias), each element the
     * sum the unfused add of the matmul's output gives. Returns false,
     * having done nothing, where it does not take the call (CUDA: one token,
     * the int16 mat-vec's weights, NMLX_CUDA_RESID set). a and x must not
     * overlap. CUDA keeps the sums of squares of the new x for an
     * add_rmsnorm_matmul with d NULL that follows (no pass over x there). */
    bool (*matmul_residual)(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                            const float *a, float *x, int64_t T);
    /* moe_experts: the experts of a MoE block (shared/moe.c) for T tokens
     * with k slots each, routing done:
     *   out[t] = sum_{j < k} scores[t, j] * y[t, j], in that order, where
     *   y[t, j] = nmlx_switch_glu_forward's row t * k + j (g's experts on
     *   x[t]: gate/up (+ bias), g->act, down (+ bias)).
     * x, out [T, D] backend buffers (out must not alias x); idx, scores
     * [T * k] host memory (0 <= idx < E, T * k <= b->max_pairs, validated
     * by the caller); b: g's work buffers, left unspecified. Returns false
     * when it did nothing (the caller runs the generic path). CUDA: a few
     * launches instead of several per pair (cuda_moe.cu); same arithmetic
     * as the generic path to rounding. */
    bool (*moe_experts)(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                        const int32_t *idx, const float *scores, int64_t T, int64_t k,
                        struct nmlx_switch_buffers *b, float *out);
    /* moe_routed: moe_experts with the routing on the device. logits
     * [T, E] is the router's output (a backend buffer, E = g's experts),
     * routed as shared/moe.c nmlx_moe_route does: routing 1 = softmax then
     * top k (norm: the k scores renormalised), 2 = top k then softmax over
     * them; ties to the lower expert; the same choice and scores to
     * rounding. Optional; returns false when it did nothing (the caller
     * downloads the logits and routes on the host). CUDA: the decode form's
     * pair counts, with no host wait, so a decode step stays one graph. */
    bool (*moe_routed)(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                       const float *logits, int routing, bool norm, int64_t T, int64_t k,
                       struct nmlx_switch_buffers *b, float *out);

    /* out[i] = act(gate[i]) * up[i] for n elements; out may alias gate. */
    void (*act_mul)(nmlx_backend *be, nmlx_act act, const float *gate, const float *up, float *out,
                    int64_t n);
    /* gpt-oss clipped SwiGLU: g = min(gate[i], limit), u = clamp(up[i],
     * -limit, limit), out[i] = g * sigmoid(alpha * g) * (u + 1); out may
     * alias gate or up. */
    void (*swiglu_clipped)(nmlx_backend *be, const float *gate, const float *up, float *out,
                           int64_t n, float alpha, float limit);
    /* x[i] = act(x[i]) in place. */
    void (*act)(nmlx_backend *be, nmlx_act act, float *x, int64_t n);
    /* out[i] = a[i] + b[i]; out may alias a or b. */
    void (*add)(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n);
    /* x[i] *= s */
    void (*scale)(nmlx_backend *be, float *x, float s, int64_t n);
    /* softmax over each of R rows of width n, in place. */
    void (*softmax)(nmlx_backend *be, float *x, int64_t R, int64_t n);

    /* Gemma 3n (cpu_gemma3n_ops.c). Activation sparsity: for R rows of
     * width n, x[r, i] = max(0, x[r, i] - (mean_r + std_r * std_mult))
     * (population std), in place. */
    void (*gaussian_topk)(nmlx_backend *be, float *x, int64_t R, int64_t n, float std_mult);
    /* x[t, :] *= sqrt(mean(ref[t, :]^2)) / sqrt(max(mean(x[t, :]^2), eps))
     * for T rows of width D (AltUp stream magnitudes); x must not alias ref. */
    void (*rms_match)(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                      float eps);
    /* x[r, :] *= w[:] for R rows of width D; w [D] any float dtype. */
    void (*mul_rows)(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D);
    /* AltUp predict over K streams x_k = x + k * stride, each [T, D]:
     *   c[t] = coefs [K*K, K] @ tanh(router[t, :K])   (c[t] read as [K, K])
     *   out_i[t, :] = x_i[t, :] + sum_j c[t][i][j] * x_j[t, :]
     * out (same stream layout) must not alias x. */
    void (*altup_predict)(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                          const nmlx_tensor *coefs, float *out, int64_t K, int64_t T, int64_t D);
    /* AltUp correct, in place on the K predicted streams p_k = p + k * stride:
     *   c[t] = clip(coefs [K, K], +-clip) @ tanh(router[t, :K]) + 1  (clip 0 = none)
     *   p_i[t, :] += c[t][i] * (act[t, :] - p_active[t, :]) */
    void (*altup_correct)(nmlx_backend *be, float *p, int64_t stride, const float *act,
                          const float *router, const nmlx_tensor *coefs, float clip, int64_t active,
                          int64_t K, int64_t T, int64_t D);
    /* Optional (NULL: the caller rotates on the host; host backends only).
     * Llama 4's interleaved RoPE in place on x[T, H, HD]: pairs (2j, 2j + 1)
     * for j < HD/2, angle (pos0 + t) * freqs[j] (freqs [HD/2], a backend
     * buffer), as nmlx_rope_interleaved (shared/llama4_model.h). */
    void (*rope_interleaved)(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD,
                             int64_t pos0, const float *freqs);
} nmlx_backend_ops;

struct nmlx_backend {
    const nmlx_backend_ops *ops;
    int n_threads;
    nmlx_pool *pool;          /* CPU workers (also used by GPU backends for host work) */
    void *impl;               /* backend private state */
    nmlx_backend_ops own_ops; /* the table as changed by the environment (NMLX_FUSED=0) */
    /* Where every call shares the backend's state (CUDA: one stream, its
     * scratch, the graph being captured, the LM head's row), a recursive
     * lock that the library's entry points hold across each call
     * (nmlx_backend_enter), so sessions of one model may run on different
     * threads as nmlx.h promises; NULL on the CPU, whose ops share only the
     * worker pool (which serialises its own runs). First come, first served
     * (backend_lock.c says why). */
    struct nmlx_call_lock *call_lock;
    /* Tokens a prefill chunk should hold on this backend (0: the model's
     * own default); read through nmlx_backend_prefill_chunk. */
    int prefill_chunk;
};

/* Tokens per prefill chunk for a model whose default is dflt: the
 * environment's NMLX_PREFILL_CHUNK (16..8192) if set, else the backend's
 * wish (CUDA: 512, so a 512-token prompt dequantizes each weight once and
 * runs GEMMs twice as tall), else dflt (the CPU: activation memory). */
int64_t nmlx_backend_prefill_chunk(const nmlx_backend *be, int64_t dflt);

/* Makes be's entry points take one thread at a time (call_lock); the drop
 * undoes it (for the backend's free; safe on a backend without the lock).
 * backend_lock.c. */
nmlx_status nmlx_backend_make_serial(nmlx_backend *be);
void nmlx_backend_drop_serial(nmlx_backend *be);
/* Takes / lets go of be's call lock (no-ops without one); recursive. */
void nmlx_backend_enter(nmlx_backend *be);
void nmlx_backend_leave(nmlx_backend *be);
/* Whether another thread waits for be's call lock (a long call such as
 * nmlx_generate lets it in between tokens) */
bool nmlx_backend_contended(nmlx_backend *be);

/* For backend constructors, after setting be->ops: applies NMLX_FUSED=0
 * (copies the table into be->own_ops without the fused ops). */
void nmlx_backend_apply_env(nmlx_backend *be);
/* NMLX_SKIP_OPS (timing only; backend_skip.c): the named ops do nothing.
 * Called by nmlx_backend_apply_env. */
void nmlx_backend_apply_skip(nmlx_backend *be);

/* CPU backend: portable C kernels, with AVX2+FMA+F16C versions chosen at
 * run time when the CPU has them (NMLX_CPU=portable forces the portable
 * path; NMLX_CPU=avx2 caps it at avx2). n_threads = 0 uses all online CPUs. */
nmlx_status nmlx_backend_cpu_create(int n_threads, nmlx_backend **out);
void nmlx_backend_free(nmlx_backend *be);
/* CUDA backend (src/compute/cuda/, built with -DNMLX_CUDA=ON) on GPU
 * `device`; NMLX_ERR_UNSUPPORTED when built without CUDA or no GPU. */
nmlx_status nmlx_backend_cuda_create(int device, nmlx_backend **out);
/* "cpu" (or NULL / ""), "cuda" (= "cuda:0") or "cuda:N". */
nmlx_status nmlx_backend_create(const char *device, int n_threads, nmlx_backend **out);
/* Precision of the CPU backend's quantized prefill: NULL or "default" (f32
 * activations), or "int8" (activations rounded to int8 per weight group,
 * AVX512_VNNI; about 2x the speed, over the quantized fixtures' precision
 * contract: docs/quantization.md). NMLX_ERR_UNSUPPORTED for int8 where the
 * CPU lacks AVX512_VNNI or the backend is not the CPU; INVALID_ARG for
 * other names. */
nmlx_status nmlx_backend_set_precision(nmlx_backend *be, const char *precision);
/* Records and returns NMLX_ERR_NOMEM for an allocation of `bytes` that
 * failed: "<what>: cannot allocate N MiB of <backend> memory", plus what
 * the device has free where the backend can tell (mem_info). */
nmlx_status nmlx_backend_fail_alloc(nmlx_backend *be, size_t bytes, const char *what);
/* Frees the n backend buffers of bufs (ops->free), skipping NULL ones: the
 * one cleanup of a struct of buffers that may be partly allocated. */
void nmlx_backend_free_bufs(nmlx_backend *be, void *const *bufs, size_t n);
/* NMLX_PROFILE=1 (nmlx_backend_create attaches it): every op's time, by op
 * and shape, printed to stderr when the backend is freed (backend_profile.c).
 * A device backend is synchronised after each op (its own time, launch
 * included) and runs without decode-step graphs. */
bool nmlx_backend_profile_wanted(void);
nmlx_status nmlx_backend_profile_attach(nmlx_backend *be);
/* Prints the table to out (NULL: nothing) and restores the backend's own
 * ops; does nothing on a backend that is not profiled. */
void nmlx_backend_profile_detach(nmlx_backend *be, FILE *out);
/* true when the backend's buffers are host memory (the CPU backend). */
bool nmlx_backend_is_host(const nmlx_backend *be);
/* "avx512bf16", "avx512", "avx2" or "portable": which kernels the CPU
 * backend picked ("avx512" = the avx2 set with an AVX-512 prefill matmul;
 * "avx512bf16" = avx512 plus a vdpbf16ps decode mat-vec for bf16 weights,
 * activations rounded to bf16). */
const char *nmlx_backend_cpu_isa(const nmlx_backend *be);

#endif
