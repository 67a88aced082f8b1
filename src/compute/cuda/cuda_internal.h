/* Internal to the CUDA backend: its state and the op entry points the .cu
 * files share. Every op is enqueued on one stream (impl->stream); `sync`,
 * `download` and `free` wait for it. */
#ifndef NMLX_CUDA_INTERNAL_H
#define NMLX_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "common.h"
#include "compute/backend.h"
}

/* One prepared weight: a device copy of host bytes [host, host + bytes). */
typedef struct cuda_region {
    const char *host;
    size_t bytes;
    char *dev;
    bool owned; /* false: a view inside another region's copy */
} cuda_region;

/* Small device-to-device copies (the KV cache appends one row per head and
 * token) are queued and run as one launch: COPY_BATCH copies per kernel,
 * passed by value as its parameter. */
enum { COPY_BATCH = 96 };
typedef struct cuda_copy_batch {
    char *dst[COPY_BATCH];
    const char *src[COPY_BATCH];
    unsigned int bytes[COPY_BATCH];
    int n;
} cuda_copy_batch;

/* argmax's device state (cuda_kernels.cu): the best key so far, the count
 * of blocks done (both 0 between launches: the last block resets them) and
 * the op's result. */
typedef struct cuda_argmax_state {
    unsigned long long best;
    unsigned int done;
    int32_t out;
} cuda_argmax_state;

struct cuda_moe_state; /* cuda_moe.cu */

/* Recorded decode steps kept (cuda_graph.cu): one per key, e.g. sessions
 * decoding in turn. */
enum { STEP_GRAPHS = 4 };

/* A device buffer of ops->alloc, by address and size (cuda_buffers.cu) */
typedef struct cuda_block {
    void *p;
    size_t bytes;
} cuda_block;

typedef struct cuda_impl {
    int device;
    cudaStream_t stream;
    /* ops->alloc's buffers: those handed out, and those freed but kept for
     * reuse (idle_bytes in all; cuda_buffers.cu) */
    cuda_block *live, *idle;
    size_t n_live, cap_live, n_idle, cap_idle, idle_bytes;
    bool buf_cache; /* NMLX_CUDA_BUF_CACHE=1 (opt-in until measured on a GPU) */
    cublasHandle_t cublas;
    cuda_region *regions; /* prepared weights */
    size_t n_regions, cap_regions;
    nmlx_tensor **tensors; /* the tensors prepare_tensor handed out */
    size_t n_tensors, cap_tensors;
    int32_t *ids_host; /* pinned staging for embed ids */
    int32_t *ids_dev;
    size_t ids_cap;
    void *act16; /* x converted to bf16/f16 for cuBLAS prefill */
    size_t act16_bytes;
    void *y2; /* the [2T, D] hi/lo products of a split GEMM */
    size_t y2_bytes;
    void *qx; /* quantized prefill: x as bf16 hi, lo and chunk sums */
    size_t qx_bytes;
    void *qg; /* NMLX_CUDA_QMM=gemm: x hi/lo, a chunk of W as f16, GEMM output */
    size_t qg_bytes;
    struct cuda_qg_seen *qg_seen; /* weights whose f16 lo half is known zero or not */
    size_t n_qg_seen, cap_qg_seen;
    int *qg_flag; /* device: set when a dequantized chunk has a nonzero lo */
    /* the x split at the start of qg (cuda_qgemm.cu): reused by the next
     * weight of one matmul_multi (qg_x_share) when x, T, N and the form match */
    const float *qg_x;
    int64_t qg_x_t, qg_x_n;
    int qg_x_form;
    bool qg_x_share;
    void *attn_part; /* split decode attention: per-chunk partial results */
    size_t attn_part_bytes;
    void *dec_part; /* flash-decoding attention's partials and counts, fixed */
    int dec_sms;    /* multiprocessors (sizes its grid) */
    float *qr_part; /* few-rows v2 split-K (cuda_qrows_mma.cu): partial sums */
    size_t qr_part_bytes;
    unsigned *qr_cnt; /* its row blocks' counters (0 between launches) */
    size_t qr_cnt_n;
    bool f32_x;              /* precision "f32": quantized mat-vecs keep f32 x */
    bool rows_off;           /* NMLX_CUDA_ROWS=0: rope_rows / attention_rows as per-row calls */
    cudaError_t first_error; /* first failure of a void op, kept for tests */
    cuda_copy_batch copies;  /* queued, not yet launched */
    /* decode steps as CUDA graphs (cuda_graph.cu) */
    bool graph_on;   /* NMLX_CUDA_GRAPH != 0 */
    bool graph_want; /* inside a step: capture from the next kernel op */
    bool capturing;
    cudaGraphExec_t gexec;       /* the last step's graph, updated in place */
    cudaGraphExec_t gexec_batch; /* the last batched step's (another shape) */
    bool batch_graph_on;         /* NMLX_CUDA_BATCH_GRAPH=1: batched steps as graphs */
    bool in_batch;               /* inside a batched step's brackets */
    long graph_launches, graph_instantiations;
    /* replayed steps (step_graph): the step's position and token id in
     * device memory, staged through pinned host memory */
    int64_t *step_dev;                  /* [0] position, [1] token id */
    int64_t *step_host;                 /* pinned */
    bool pos_dev;                       /* recording: kernels read positions as *step_dev + delta */
    int64_t step_pos;                   /* that step's position (the deltas' base) */
    bool step_broken;                   /* the recording ended early (an op waited for the host) */
    cudaGraphExec_t rexec[STEP_GRAPHS]; /* recorded steps (NULL: free slot), for rkey[i] */
    uint64_t rkey[STEP_GRAPHS];
    long rused[STEP_GRAPHS]; /* last use (step count): the least recent is replaced */
    long replays;
    cuda_argmax_state *argmax_state; /* argmax (cuda_kernels.cu) */
    int32_t *argmax_host;            /* its result's pinned copy */
    int argmax_blocks; /* its most blocks a launch (ARGMAX_BLOCKS_PER_SM a multiprocessor) */
    /* sample (cuda_sample.cu): the row's work copy and marks; the penalty's
     * ids and the result, on the device and pinned on the host */
    void *sample_work;
    size_t sample_work_bytes;
    int32_t *sample_ids_dev, *sample_ids_host;
    size_t sample_ids_dev_bytes, sample_ids_host_bytes;
    /* add_rmsnorm_matmul (cuda_qgemv16.cu, dense: cuda_matmul.cu): its
     * blocks' counter (device, 0 between launches; NULL: the op declines)
     * and its calls so far */
    unsigned *norm_done;
    long norm_fused, norm_roped, norm_declined;
    /* matmul_residual (NMLX_CUDA_RESID, cuda_quant.cu): the block sums of
     * squares its launches write (NMLX_Q16_RSUM_CAP + 1 doubles, or NULL:
     * the op declines), the x and width they describe until the next op
     * reads or changes x (NULL: none), its launches so far; which
     * add_rmsnorm_matmul calls run: with d (NMLX_CUDA_NORM_MATMUL=1), with
     * rope_kv folded in (that, or NMLX_CUDA_RESID=rope) */
    double *rsum;
    const float *rsum_x;
    int64_t rsum_D;
    long resid_fused;
    bool norm_with_d, norm_rope;
    struct cuda_moe_state *moe; /* moe_experts' tables and staging (cuda_moe.cu), or NULL */
} cuda_impl;

/* Launches the queued copies (every op, sync and download call this first,
 * so queued copies keep their place in the stream order). */
void nmlx_cuda_flush(nmlx_backend *be);

/* Graph capture of a decode step (cuda_graph.cu): begin on the stream;
 * end: instantiate (or update the last step's graph in place) and launch. */
void nmlx_cuda_capture_begin(nmlx_backend *be);
void nmlx_cuda_capture_end(nmlx_backend *be);
void nmlx_cuda_decode_step(nmlx_backend *be, int what);
bool nmlx_cuda_step_graph(nmlx_backend *be, int what, uint64_t key, int64_t pos, int32_t id);
/* Inside a recorded step (pos_dev): the device position to add to a
 * position's delta from step_pos, else NULL (positions by value). */
static inline const int64_t *cuda_step_pos(const cuda_impl *c) {
    return c->pos_dev ? c->step_dev : NULL;
}

/* The impl of a backend whose queued copies have been launched: every op
 * that only enqueues work on the stream takes its state through this (inside
 * a decode step, the first such op starts the graph capture). */
static inline cuda_impl *cuda_of(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (c->graph_want && !c->capturing) nmlx_cuda_capture_begin(be);
    if (c->copies.n) nmlx_cuda_flush(be);
    return c;
}

/* The same for ops that wait for the stream, allocate, or read host memory
 * (upload, download, sync, alloc, free, embed's id staging): a capture in
 * progress ends and its graph runs first; the rest of that step runs
 * without a graph. */
static inline cuda_impl *cuda_host_of(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (c->capturing) {
        nmlx_cuda_capture_end(be);
        c->graph_want = false;
        c->step_broken = true; /* a recorded step is incomplete: not kept */
    }
    if (c->copies.n) nmlx_cuda_flush(be);
    return c;
}

/* Programmatic dependent launch (Hopper; on unless NMLX_CUDA_PDL=0): the
 * decode mat-vec (cuda_qgemv16.cu) is launched so that it may start while
 * the kernel before it finishes; its blocks put their first weight loads in
 * flight, then wait (cuda_pdl_wait: the previous grid has completed and its
 * writes are visible) before reading x. add_rmsnorm, rope_kv and the decode
 * attention are launched the same way and wait first thing: only their
 * launch latency hides. The kernels of a decode step let their dependents
 * launch from their start (cuda_pdl_trigger; a no-op for a dependent
 * launched the usual way). Every block of a kernel launched this way waits
 * before it exits, so a chain of them keeps stream order. */
__device__ __forceinline__ void cuda_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void cuda_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
/* NMLX_CUDA_PDL (read once): on unless "0", where the GPU and the build
 * have griddepcontrol (sm_90 and later) */
bool nmlx_cuda_pdl_on(void);
/* NMLX_CUDA_PDL_BATCH (read once; on unless "0", where PDL is on): the
 * kernels of a batched decode step that wait first thing (few-rows v2 / v3
 * and their x split, rope_kv_rows, the decode attention's rows form,
 * act_mul) launched early too. H100, session 18: bench_cuda_batch 8B 4-bit
 * 8 / 32 sessions 1,206.9 / 2,477.0 tok/s against 1,093.6 / 2,340.1 */
bool nmlx_cuda_pdl_batch_on(void);

/* k on st, as a programmatic dependent launch where `on`, else the usual way */
template <typename... P, typename... A>
static inline cudaError_t cuda_launch_pdl_if(bool on, void (*k)(P...), dim3 grid, dim3 block,
                                             size_t smem, cudaStream_t st, A... args) {
    if (!on) {
        k<<<grid, block, smem, st>>>(args...);
        return cudaGetLastError();
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, k, args...);
}

/* Launches kernel k on st, as a programmatic dependent launch where PDL is
 * on: k's blocks may become resident while the kernel before them ends (it
 * calls cuda_pdl_trigger), so the launch latency of a step's small kernels
 * hides behind the kernel before. k must call cuda_pdl_wait() in every
 * block before its first global memory access (read or write). */
template <typename... P, typename... A>
static inline cudaError_t cuda_launch_pdl(void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                          cudaStream_t st, A... args) {
    return cuda_launch_pdl_if(nmlx_cuda_pdl_on(), k, grid, block, smem, st, args...);
}
/* ... a batched step's kernel (nmlx_cuda_pdl_batch_on) */
template <typename... P, typename... A>
static inline cudaError_t cuda_launch_pdl_batch(void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                                cudaStream_t st, A... args) {
    return cuda_launch_pdl_if(nmlx_cuda_pdl_batch_on(), k, grid, block, smem, st, args...);
}

/* Records the first error of a void op (ops cannot return one). */
void nmlx_cuda_note(nmlx_backend *be, cudaError_t e);

/* Multiprocessors of the current device (read once a device). */
int nmlx_cuda_sm_count(void);
/* Blocks of kern (threads a block, smem bytes of dynamic shared memory)
 * resident on one multiprocessor, for persistent one-wave grids: asked of
 * the runtime once per (kernel, threads, smem) outside a graph capture;
 * inside one, or where the query fails, `fallback` unasked (blocks past
 * what fits then wait for a second wave: still right). */
int nmlx_cuda_resident_blocks(const void *kern, int threads, size_t smem, cudaStream_t st,
                              int fallback);

void nmlx_cuda_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                      const float *x, float *y, int64_t T);
/* Quantized weights (cuda_quant.cu): matmul for w->mode != NMLX_QUANT_NONE,
 * and the embedding gather of a quantized table (ids already on the device). */
void nmlx_cuda_qmatmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                       const float *x, float *y, int64_t T);
/* The cuBLAS quantized mat-mat (cuda_qgemm.cu; the default for T > 8):
 * false when NMLX_CUDA_QMM turned it off or its scratch cannot be allocated
 * (nothing done: the caller runs qmm_kernel). */
bool nmlx_cuda_qgemm(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                     const float *x, float *y, int64_t T);
/* gate_up_act through it (gemm1, the default form): gate = act(x G^T + bg)
 * * (x U^T + bu), the unfused ops' bits, up never written; false (nothing
 * done) with NMLX_CUDA_QMM_ACT=0 (nmlx_cuda_set_qmm_act), in the other
 * forms, or where the weights differ in shape or mode. */
bool nmlx_cuda_qgemm_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g, const nmlx_weight *u,
                         const nmlx_tensor *bg, const nmlx_tensor *bu, const float *x, float *gate,
                         int64_t T);
/* The most rows of x the few-rows tensor-core mat-mat takes (cuda_qrows_mma.cu) */
int nmlx_cuda_qrows_mma_max_t(void);
/* The fused quantized mat-mat (cuda_qmm_fused.cu; NMLX_CUDA_QMM=fused):
 * affine 4/8-bit, group 32/64/128, N a multiple of 64; false (nothing
 * done) for anything else or when its scratch cannot be had. */
bool nmlx_cuda_qmm_fused(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                         const float *x, float *y, int64_t T);
/* cuda_qgemm.cu's scratch (c->qg) grown to need bytes; false when cudaMalloc fails. */
bool nmlx_cuda_qg_reserve(nmlx_backend *be, size_t need);
/* The quantized operand x [T, N] as bf16 hi + lo (x = hi + lo to ~2^-16)
 * and per-32-input chunk sums xs [T, N / 32], in the backend's scratch
 * (cuda_quant.cu; valid until the next quantized matmul). */
typedef struct nmlx_cuda_qx {
    const __nv_bfloat16 *hi, *lo;
    const float *xs;
} nmlx_cuda_qx;
bool nmlx_cuda_qx_split(nmlx_backend *be, const float *x, int64_t T, int64_t N, nmlx_cuda_qx *out);
/* The few-rows tensor-core mat-mat (cuda_qrows_mma.cu) for 2 <= T <= the
 * limit (NMLX_CUDA_QROWS_MMA_T, default below; precision "f32" excluded):
 * false (nothing done) for other T or weights. Default 64 since measured
 * (H200, Llama-3.1-8B 4-bit, bench_cuda_batch: 8 sessions 484 -> 773
 * tok/s, 32 sessions 1,320 -> 1,775; test_cuda_qrows and test_cuda_batch
 * passing there). */
#ifndef NMLX_CUDA_QROWS_MMA_T_DEFAULT
#define NMLX_CUDA_QROWS_MMA_T_DEFAULT 64
#endif
bool nmlx_cuda_qrows_mma(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                         const float *x, float *y, int64_t T);
/* The dense mat-vec (cuda_matmul.cu) for T <= 8 rows of x: n <= 3 weights
 * of one dtype and width reading one x in one launch, or gate/up writing
 * act(g) * u to out; false (nothing launched) for anything else. */
bool nmlx_cuda_gemv_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                          const nmlx_tensor *const *biases, const float *x, float *const *ys,
                          int64_t T);
bool nmlx_cuda_gemv_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g, const nmlx_weight *u,
                        const nmlx_tensor *bg, const nmlx_tensor *bu, const float *x, float *out,
                        int64_t T);
/* backend.h matmul_residual for a dense weight (cuda_matmul.cu): resid +=
 * W x (+ bias) for one token, each row's value the unfused add's, each
 * block's sum of squares of its updated rows to rsum (NMLX_Q16_RSUM_CAP + 1
 * doubles); false (nothing launched) for anything else. */
bool nmlx_cuda_gemv_resid(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                          const float *x, float *resid, double *rsum);
/* backend.h add_rmsnorm_matmul for dense weights (cuda_matmul.cu): one
 * token, n weights of one dtype and of nrm->D columns (act >= 0: a gate/up
 * pair), the norm staged in each block; rope != NULL: q/k/v rotated and k/v
 * appended to the cache by the same warps. Results equal add_rmsnorm, then
 * nmlx_cuda_gemv_multi / gemv_act (and rope_kv), bit for bit; false (nothing
 * launched) for anything else. */
struct nmlx_cuda_norm_in;
bool nmlx_cuda_gemv_norm(nmlx_backend *be, const struct nmlx_cuda_norm_in *nrm, int act, int n,
                         const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                         float *const *ys, const nmlx_rope_kv_args *rope);
void nmlx_cuda_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                            const nmlx_tensor *const *biases, const float *x, float *const *ys,
                            int64_t T);
void nmlx_cuda_qembed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids_dev, int64_t T,
                      float scale, float *out);
void nmlx_cuda_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                     float scale, float *out);
void nmlx_cuda_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                       float eps, float *y, int64_t R, int64_t D);
void nmlx_cuda_rope(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                    int64_t pos0, const float *freqs, float mscale);
void nmlx_cuda_attention(nmlx_backend *be, const nmlx_attn_args *a);
/* The tiled prefill kernel (cuda_attention_tiled.cu) where it is on and
 * applies (T >= 2, HD <= 256); false: nothing launched. */
bool nmlx_cuda_attention_tiled(nmlx_backend *be, const nmlx_attn_args *a);
/* The flash-decoding kernel (cuda_attention_decode.cu) where it is on and
 * applies (few query rows a KV head); step: a recorded step's position (a's
 * q_pos and n_kv its deltas) or NULL. false: not run. */
bool nmlx_cuda_attention_decode(nmlx_backend *be, const nmlx_attn_args *a, const int64_t *step);
bool nmlx_cuda_attention_decode_rows(nmlx_backend *be, const nmlx_attn_args *a,
                                     const nmlx_attn_row *rows, int64_t R);
bool nmlx_cuda_attn_decode_on(void);
/* Its fixed scratch, allocated with the backend (false: the kernel declines). */
bool nmlx_cuda_dec_scratch_init(cuda_impl *c);
/* The tensor-core prefill kernel (cuda_attention_mma.cu) where it is on
 * (opt-in) and applies (T >= 2, HD a multiple of 16 up to 256, 16-byte
 * aligned q/k/v/out); false: nothing launched. */
bool nmlx_cuda_attention_mma(nmlx_backend *be, const nmlx_attn_args *a);
/* Batched decode (backend.h rope_rows / attention_rows): one launch for all
 * rows (ROPE_ROWS / ATTN_ROWS rows a launch, their fields by value). */
void nmlx_cuda_rope_rows(nmlx_backend *be, float *x, int64_t R, int64_t H, int64_t HD, int64_t rot,
                         const int64_t *pos, const float *freqs, float mscale);
void nmlx_cuda_attention_rows(nmlx_backend *be, const nmlx_attn_args *a, const nmlx_attn_row *rows,
                              int64_t R);
/* Fused ops (cuda_fused.cu; backend.h add_rmsnorm, rope_kv) */
void nmlx_cuda_add_rmsnorm(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                           float w_offset, float eps, float *y, int64_t R, int64_t D);
void nmlx_cuda_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a);
bool nmlx_cuda_rope_kv_rows(nmlx_backend *be, const nmlx_rope_kv_args *a,
                            const nmlx_kv_row_dst *rows, int64_t R);
/* cuda_quant.cu: the int16 mat-vec's gate/up pairs (cuda_qgemv16.cu), else
 * matmul_multi + act_mul */
void nmlx_cuda_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                           const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                           const float *x, float *gate, float *up, int64_t T);
/* cuda_quant.cu: backend.h add_rmsnorm_matmul, the int16 mat-vec staging
 * the norm (cuda_qgemv16.cu); false where it does not take the weights */
bool nmlx_cuda_add_rmsnorm_matmul(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *nw,
                                  float w_offset, float eps, float *y, int64_t D, int act, int n,
                                  const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                                  float *const *ys, const nmlx_rope_kv_args *rope);
/* cuda_quant.cu: backend.h matmul_residual, the int16 mat-vec updating x
 * and writing its sums of squares (cuda_qgemv16.cu); false where it does
 * not take the weight */
bool nmlx_cuda_matmul_residual(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                               const float *a, float *x, int64_t T);
void nmlx_cuda_act_mul(nmlx_backend *be, nmlx_act act, const float *gate, const float *up,
                       float *out, int64_t n);
void nmlx_cuda_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n);
void nmlx_cuda_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n);
void nmlx_cuda_scale(nmlx_backend *be, float *x, float s, int64_t n);
void nmlx_cuda_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n);
int32_t nmlx_cuda_argmax(nmlx_backend *be, const float *x, int64_t n);
/* The argmax kernel alone: cuda_argmax_ready allocates its state (once,
 * outside any capture; false: it could not, no error left set); then cuda_argmax_launch
 * enqueues the index of x[0..n) (1 <= n <= INT_MAX, x 4-byte aligned) into
 * out (device memory) with no allocation and no host wait, so a recorded
 * graph may contain it. Launches on one stream must not overlap (they share
 * the state). */
bool cuda_argmax_ready(cuda_impl *c);
void cuda_argmax_launch(nmlx_backend *be, cuda_impl *c, const float *x, int n, int32_t *out);
int32_t nmlx_cuda_sample(nmlx_backend *be, const float *x, int64_t n, const nmlx_sampler_params *p,
                         const int32_t *history, size_t n_history, double u);
/* Family ops (cuda_family_ops.cu): MoE, Gemma 3n, Llama 4. */
void nmlx_cuda_swiglu_clipped(nmlx_backend *be, const float *gate, const float *up, float *out,
                              int64_t n, float alpha, float limit);
void nmlx_cuda_gaussian_topk(nmlx_backend *be, float *x, int64_t R, int64_t n, float std_mult);
void nmlx_cuda_rms_match(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                         float eps);
void nmlx_cuda_mul_rows(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D);
void nmlx_cuda_altup_predict(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                             const nmlx_tensor *coefs, float *out, int64_t K, int64_t T, int64_t D);
void nmlx_cuda_altup_correct(nmlx_backend *be, float *p, int64_t stride, const float *act,
                             const float *router, const nmlx_tensor *coefs, float clip,
                             int64_t active, int64_t K, int64_t T, int64_t D);
void nmlx_cuda_rope_interleaved(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD,
                                int64_t pos0, const float *freqs);

/* MoE experts (cuda_moe.cu; backend.h moe_experts) */
bool nmlx_cuda_moe_experts(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                           const int32_t *idx, const float *scores, int64_t T, int64_t k,
                           struct nmlx_switch_buffers *b, float *out);
bool nmlx_cuda_moe_routed(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                          const float *logits, int routing, bool norm, int64_t T, int64_t k,
                          struct nmlx_switch_buffers *b, float *out);
/* Frees its state (cuda_release, with the stream still alive). */
void nmlx_cuda_moe_release(cuda_impl *c);

/* Expert e's device pointers in one switch linear (the layout of
 * cuda_qrows2_group.h qr2_expert). */
typedef struct moe_ptrs {
    const void *w, *s, *b, *bias;
} moe_ptrs;

/* cuda_moe.cu's view of one switch linear: the pointer table and the
 * format every expert shares. bits: 0 = dense (sc = the weight dtype as
 * SC_F32 / SC_F16 / SC_BF16), else the affine bits, or 4 with SC_E8M0
 * (MXFP4); gshift: log2(group size / 8). */
typedef struct moe_lin {
    const moe_ptrs *tab; /* [E] device */
    int64_t rows, cols;
    int bits, sc, gshift;
    nmlx_dtype bias_dt;
    bool has_bias;
    bool w16; /* every expert's codes 16-byte aligned (the tensor-core tile's copies) */
} moe_lin;

/* The grouped few-rows kernel over experts (cuda_moe_rows.cu): whether it
 * takes linear l's format and shape; then y0 (and y1 with l1, a linear of
 * the same format and shape reading the same x) = each task's expert
 * applied to its rows of x [P, l->cols] (rows sorted by expert; dtask
 * [ntask][3] on the device: expert, first row, rows, at most
 * NMLX_CUDA_MOE_TASK_ROWS). False: nothing launched. */
enum { NMLX_CUDA_MOE_TASK_ROWS = 32 };
bool nmlx_cuda_moe_rows_ok(nmlx_backend *be, const moe_lin *l);
bool nmlx_cuda_moe_rows(nmlx_backend *be, const moe_lin *l0, float *y0, const moe_lin *l1,
                        float *y1, const float *x, int64_t P, const int32_t *dtask, int ntask);

/* The grouped tensor-core tile over experts (cuda_moe_qmm.cu), for affine
 * 4/8-bit and MXFP4 experts: whether it takes l; the task rows it wants
 * (32 or 64) for pairs over used experts; then, as nmlx_cuda_moe_rows, y0
 * (and y1) over tasks of at most task_rows rows, x row s being row
 * rows[s] / rdiv of x (rows NULL: row s). False: nothing written. */
bool nmlx_cuda_moe_qmm_ok(nmlx_backend *be, const moe_lin *l);
int nmlx_cuda_moe_qmm_rows(int64_t pairs, int64_t used);
bool nmlx_cuda_moe_qmm(nmlx_backend *be, const moe_lin *l0, float *y0, const moe_lin *l1, float *y1,
                       const float *x, const int32_t *rows, int rdiv, int64_t P,
                       const int32_t *dtask, int ntask, int task_rows);

/* A prefill chunk's pairs sorted by expert on the device (cuda_moe_sort.cu):
 * whether it takes P pairs of E experts; then order [P] (sorted row ->
 * pair, stable), inv [P] (pair -> row) and task [tasks_max][3] (expert,
 * first row, rows <= most; rows 0 past the last) from idx [P], all on the
 * device, on the stream. */
bool nmlx_cuda_moe_sort_ok(int64_t P, int64_t E);
bool nmlx_cuda_moe_sort(nmlx_backend *be, const int32_t *idx, int64_t P, int64_t E, int most,
                        int tasks_max, int32_t *order, int32_t *inv, int32_t *task);

/* Block-wide sum (blockDim.x a multiple of 32, <= 1024); all threads get it. */
template <typename F> __device__ F cuda_block_sum(F v) {
    __shared__ F part[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads(); /* part[] may still be read by a previous call */
    if (l == 0) part[w] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = l < nw ? part[l] : (F)0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One RoPE pair: (x0, x1) at dims (i, i + half) rotated by pos * freq (the
 * angle in double, as the CPU), times mscale. Every kernel that rotates
 * (rope, rope_kv, the q/k/v mat-vecs that fold rope_kv in) calls this, and
 * its products are never contracted into FMAs, so they agree bit for bit. */
__device__ __forceinline__ void cuda_rope_pair(float x0, float x1, double pos, float freq,
                                               float mscale, float *o0, float *o1) {
    double s, c;
    sincos(pos * (double)freq, &s, &c);
    const float cf = (float)c, sf = (float)s;
    *o0 = __fmul_rn(__fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)), mscale);
    *o1 = __fmul_rn(__fadd_rn(__fmul_rn(x1, cf), __fmul_rn(x0, sf)), mscale);
}

/* rope_kv (T = 1, no q/k norm) folded into a decode q/k/v mat-vec
 * (backend.h add_rmsnorm_matmul's rope): q rows rotated in y, k rows
 * rotated and v rows copied into cache row crow = row0 (+ *step) of head h
 * (kc/vc + (h cap + crow) HD), at position pos0 (+ *step). half = rot / 2
 * with rot == HD (the pairs (i, i + half) of a head), or 0: no rotation. */
typedef struct cuda_rope_fold {
    float *kc, *vc;
    int64_t HD, cap, row0, pos0, half;
    const float *freqs;
    float mscale;
    const int64_t *step; /* non-NULL (a recorded step): row0 and pos0 are deltas from *step */
} cuda_rope_fold;

/* Threads of a block that norms one row of width D (rmsnorm and the fused
 * ops that contain one: the same count gives the same order of the sum). */
static inline int cuda_norm_threads(int64_t D) { return D >= 1024 ? 512 : D >= 256 ? 256 : 64; }

/* The activations of act / act_mul (and of the int16 mat-vec's gate/up
 * pairs), as the CPU reference computes them. */
__device__ __forceinline__ float cuda_act1(nmlx_act act, float x) {
    switch (act) {
    case NMLX_ACT_SILU: return x / (1.0f + expf(-x));
    case NMLX_ACT_GELU_TANH: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        float u = c * (x + 0.044715f * x * x * x);
        return x / (1.0f + expf(-2.0f * u));
    }
    case NMLX_ACT_GELU_ERF: return 0.5f * x * erfcf(x * -0.7071067811865476f);
    }
    return x;
}

/* gpt-oss's clipped SwiGLU of one element (swiglu_clipped, and the MoE
 * experts' fused kernel, cuda_moe.cu): g = min(gate, limit), u = clamp(up,
 * +-limit), g * sigmoid(alpha g) * (u + 1). */
__device__ __forceinline__ float cuda_swiglu_clipped1(float gate, float up, float alpha,
                                                      float limit) {
    float g = gate < limit ? gate : limit;
    float u = up < -limit ? -limit : (up > limit ? limit : up);
    return g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
}

/* Element i of a device buffer of a float dtype, as f32. */
__device__ __forceinline__ float cuda_load_f32(nmlx_dtype dt, const void *p, int64_t i) {
    if (dt == NMLX_DT_BF16) {
        unsigned int u = ((unsigned int)((const unsigned short *)p)[i]) << 16;
        return __uint_as_float(u);
    }
    if (dt == NMLX_DT_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* cuda_buffers.cu: ops->alloc / ops->free with freed buffers kept for
 * reuse, and the release of those kept */
void *nmlx_cuda_buf_alloc(nmlx_backend *be, size_t bytes);
void nmlx_cuda_buf_free(nmlx_backend *be, void *ptr);
void nmlx_cuda_buf_release(cuda_impl *c);

#endif
