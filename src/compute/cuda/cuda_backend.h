/* C-callable extras of the CUDA backend (the backend itself is created with
 * nmlx_backend_cuda_create in compute/backend.h). */
#ifndef NMLX_CUDA_BACKEND_H
#define NMLX_CUDA_BACKEND_H

#include "compute/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Waits for the stream; returns an error naming the first CUDA failure any
 * (void) op met so far, else NMLX_OK. Tests call it after each op. */
nmlx_status nmlx_backend_cuda_check(nmlx_backend *be);

/* Decode steps as graphs (cuda_graph.cu; NMLX_CUDA_GRAPH=0 turns them off), for tests:
 * *replays = recorded steps run again (step_graph), *launches = graphs
 * launched after a capture. */
void nmlx_backend_cuda_graph_stats(nmlx_backend *be, long *replays, long *launches);

/* Test hook (cuda_graph.cu): the argmax kernel alone (cuda_argmax_launch),
 * once for each of the R device rows rows[k][0..n[k]), recorded in one CUDA
 * graph, which then runs `runs` times; ids[r * R + k] = run r's index for
 * row k (-1 if the kernel wrote none). The first CUDA error, if any. */
nmlx_status nmlx_cuda_argmax_graph_test(nmlx_backend *be, const float *const *rows,
                                        const int64_t *n, int R, int runs, int32_t *ids);

/* qmm_kernel, the tensor-core quantized mat-mat (cuda_quant.cu; taken when
 * the cuBLAS path below is off): 1 = x split into bf16 hi + lo (exact to
 * ~1e-5), 0 = x rounded to bf16 (half the tensor-core work). The
 * environment variable NMLX_CUDA_QMM=bf16 sets 0 at start (and turns the
 * cuBLAS path off). Process-wide; for benchmarks. */
void nmlx_cuda_set_qmm_split(int split);

/* The quantized mat-mat through cuBLAS (cuda_qgemm.cu, the default for
 * T > 8): W dequantized a chunk of rows at a time to f16 hi + lo, x per
 * token scaled by a power of two and split into f16 hi + lo, f32
 * accumulation. NMLX_CUDA_QMM unset or gemm1 sets 19 at start (W and x hi
 * only, one GEMM; gemm: 1, the exact form; gemm16: 3, W hi only; mma or
 * bf16: 0). Precision
 * "f32" always takes the exact form. mode: 0 = off (qmm_kernel), 1 = on;
 * test bits: | 2 = W without its lo half, | 4 = x not rescaled per token,
 * | 8 = never skip the lo GEMM of a weight found exact in f16, | 16 = x
 * without its lo half, | 32 = the fused kernel (cuda_qmm_fused.cu) where
 * it applies (NMLX_CUDA_QMM=fused sets 1 | 2 | 16 | 32 = 51: gemm1 for what
 * it declines). Process-wide; for benchmarks and tests. */
void nmlx_cuda_set_qmm_gemm(int mode);
/* The fused kernel's block tile: 128 (128 tokens x 128 rows), 64 (64 x 64),
 * 0 = automatic (NMLX_CUDA_QMM_TILE, else 128 unless that leaves more than
 * half the SMs idle). Process-wide; for benchmarks and tests. */
void nmlx_cuda_set_qmm_fused_tile(int tile);
/* Launches of the fused kernel so far (test hook: it ran, not a fallback). */
unsigned long long nmlx_cuda_qmm_fused_launches(void);
/* Weights the gemm path has seen: *exact = whose f16 lo half was all zero
 * (their later calls skip the second GEMM), *inexact = the others. */
void nmlx_cuda_qgemm_seen(nmlx_backend *be, long *exact, long *inexact);
/* Rows of W dequantized per chunk (NMLX_CUDA_QMM_ROWS); 0 = automatic. */
void nmlx_cuda_set_qmm_rows(int64_t rows);
/* gate_up_act's prefill through the gemm path's join (act(g) u written
 * there, up never written): 1 on, 0 off, -1 back to NMLX_CUDA_QMM_ACT
 * (default off until timed on a GPU). Process-wide; for tests. */
void nmlx_cuda_set_qmm_act(int on);
/* gate_up_act calls that path took so far (test hook: it ran, not the ops). */
unsigned long long nmlx_cuda_qmm_act_calls(void);

/* Most rows of x (2..64) the few-rows tensor-core kernel takes
 * (cuda_qrows_mma.cu); 0 = off, -1 = back to NMLX_CUDA_QROWS_MMA_T or the
 * default (64). Process-wide; for benchmarks and tests. */
void nmlx_cuda_set_qrows_mma(int max_t);
/* Which few-rows kernel and how (cuda_qrows_mma.cu): version 1, 2, 3
 * (cuda_qrows3.h: v2's bits, x staged by the kernel, no x split launch) or
 * 0 (the default: 3 up to 4 rows of x, 2 past them); NMLX_CUDA_QROWS=v1 /
 * v2 / v3 picks one;
 * v2's (v3's) m16 tiles a warp mt (0 = by
 * T: 4 up to 8 rows of x, 2 up to 32, 1 past; 1 and 2 past 32 rows, 2 and
 * 4 up to 32), its row groups a block wr (1, 2, 4, 8; 0 = by T: 2, 4 past
 * 8 rows, 8 past 32), its split-K target bps blocks per SM (0 = no split;
 * default 2) and a forced split count (0 = from bps). version -1: back to
 * NMLX_CUDA_QROWS and NMLX_CUDA_QROWS_CFG ("mt=M,wr=R,bps=B,split=S").
 * Process-wide; for benchmarks and tests. */
void nmlx_cuda_set_qrows_kernel(int version, int mt, int wr, int bps, int split);
/* v2 launches so far (test hook: it ran). */
unsigned long long nmlx_cuda_qrows2_launches(void);
/* v3 launches so far (test hook: it ran, not the v2 it falls back to). */
unsigned long long nmlx_cuda_qrows3_launches(void);

/* Decode mat-vecs of affine 4/8-bit weights: 1 = int16 x and dp2a
 * (cuda_qgemv16.cu, the default), 0 = the f32 kernel. NMLX_CUDA_QGEMV=f32
 * sets 0 at start. Process-wide; for benchmarks and tests. */
void nmlx_cuda_set_qgemv16(int on);
/* Which int16 mat-vec kernel (cuda_qgemv16.cu): 2 = v2 (persistent warps, a
 * ring of loads in flight; the default), 1 = v1 (x staged whole, then rows
 * a block); -1 = back to NMLX_CUDA_QGEMV16 (v1 selects 1). The norm-staging
 * form (add_rmsnorm_matmul) runs v2 in v2's default configuration, else v1;
 * its rope_kv fold needs v2 (declined on v1). Process-wide; for benchmarks
 * and tests. */
void nmlx_cuda_set_qgemv16_version(int v);
/* v2's tunables, as NMLX_CUDA_QGEMV16_CFG: "d<DEP>b<BPS>" (both forms) or
 * "d<DEP>b<BPS>,d<DEP>b<BPS>" (plain / multi-weight, then gate/up pairs):
 * DEP = 2, 4 or 8 16-byte code loads in flight a lane in registers (a row
 * each; pairs: two; pairs take 8 as 4), or "a<DEP>b<BPS>": DEP = 8 or 16
 * steps of codes in flight through cp.async into shared memory (pairs: 8),
 * BPS = blocks a multiprocessor (0: as many as fit); a suffix "r2": two
 * rows a warp's unit (x read once for both; registers DEP 2 or 4, cp.async
 * 8; not for pairs, which are two rows already). NULL: back to the
 * environment or the defaults (d8b2,d4b2). -1 (nothing changed) if spec is
 * malformed. Process-wide; for benchmarks and tests. */
int nmlx_cuda_set_qgemv16_cfg(const char *spec);

/* add_rmsnorm_matmul (backend.h) calls on this backend so far: *fused =
 * run as one mat-vec staging the norm (*roped of them with rope_kv folded
 * in), *declined = left to the caller's add_rmsnorm + matmul_multi /
 * gate_up_act (weights it does not take, precision "f32"; a declined rope
 * fold that the caller then asks for without counts twice). Calls recorded
 * in a replayed graph count once. */
void nmlx_cuda_norm_matmul_stats(nmlx_backend *be, long *fused, long *roped, long *declined);

/* matmul_residual (backend.h; NMLX_CUDA_RESID) launches on this backend so
 * far (calls recorded in a replayed graph count once). */
long nmlx_cuda_resid_stats(nmlx_backend *be);

/* Decode attention split over key chunks (cuda_attention.cu): 1 = on, 0 =
 * the one-block-per-head kernel (the default). NMLX_CUDA_ATTN_SPLIT=1 sets
 * 1 at start. Process-wide; for benchmarks and tests. */
void nmlx_cuda_set_attn_split(int on);
/* Decode attention (T * H / KVH <= 16 query rows a KV head) through the
 * flash-decoding kernel (cuda_attention_decode.cu): 1 = on (the default,
 * in plain and recorded steps), 0 = the one-block-per-head kernels (and the
 * split one where nmlx_cuda_set_attn_split is on). NMLX_CUDA_ATTN_DECODE=old
 * sets 0 at start. Process-wide; for benchmarks and tests.
 * nmlx_cuda_attn_decode_launches: its launches so far, process-wide. */
void nmlx_cuda_set_attn_decode(int on);
unsigned long long nmlx_cuda_attn_decode_launches(void);
/* Within it, one query over at most 128 visible keys (HD <= 128, <= 8 query
 * heads a KV head) through the short-context kernel (cuda_attention_short.h):
 * 1 = on, 0 = the split kernel at every length (the default: the short
 * kernel measured no faster, session 21), -1 = as NMLX_CUDA_ATTN_SHORT
 * says (=1: on). nmlx_cuda_attn_short_launches: its launches so far (a
 * recorded step launches it beside the split one). */
void nmlx_cuda_set_attn_short(int on);
unsigned long long nmlx_cuda_attn_short_launches(void);
/* Within it, one query (T = 1, HD <= 256, <= 8 query heads a KV head)
 * through the phased kernel (cuda_attention_phased.h) while the short
 * kernel is off: 1 = on, 0 = dec_block's kernel, -1 = as
 * NMLX_CUDA_ATTN_PHASED says (=0: off; on by default).
 * nmlx_cuda_attn_phased_launches: its launches so far (counted in the
 * decode launches too). NMLX_CUDA_ATTN_PHASED_RUN=n: each block takes at
 * least n tiles of keys (1). */
void nmlx_cuda_set_attn_phased(int on);
unsigned long long nmlx_cuda_attn_phased_launches(void);
/* Test hook: attention a recorded as a decode step's graph with the step's
 * position pos[0] (a's q_pos and n_kv as at that position), then replayed
 * with the position pos[i] in device memory, as a replayed step does; each
 * replay's a->out copied to the device buffer outs[i]. The first CUDA error. */
nmlx_status nmlx_cuda_attention_graph_test(nmlx_backend *be, const nmlx_attn_args *a,
                                           const int64_t *pos, int n, float *const *outs);
/* Test hook: the tiled prefill attention on (1) or off (0), overriding
 * NMLX_CUDA_ATTN_TILED. */
void nmlx_cuda_set_attn_tiled(int on);
/* Test hook: the tensor-core prefill attention (cuda_attention_mma.cu) on
 * (1) or off (0), overriding NMLX_CUDA_ATTN_MMA (default on). When on it
 * is tried before the tiled kernel. nmlx_cuda_attn_mma_launches: calls
 * that ran it so far, process-wide (tests check it was not bypassed). */
void nmlx_cuda_set_attn_mma(int on);
unsigned long long nmlx_cuda_attn_mma_launches(void);

/* Precision "f32" of a model on this backend: quantized mat-vecs keep f32
 * x (nmlx_backend_set_precision calls it). */
void nmlx_cuda_set_f32_activations(nmlx_backend *be, int on);

/* MoE experts (cuda_moe.cu, backend.h moe_experts), counted over every
 * CUDA backend of the process: *small = calls that ran the decode form
 * (fused kernels), *sorted = the prefill form (expert-sorted rows,
 * per-expert matmuls). */
void nmlx_cuda_moe_stats(long *small, long *sorted);
/* calls of moe_routed that ran (the decode form, routed on the device), all backends */
long nmlx_cuda_moe_routed_calls(void);
/* prefill-form calls sorted on the device (moe_routed, cuda_moe_sort.cu), all backends */
long nmlx_cuda_moe_devsort_calls(void);
/* whether routed prefill chunks are sorted on the device (NMLX_CUDA_MOE_SORT) */
bool nmlx_cuda_moe_sorts_on_device(void);
/* launches of the grouped few-rows kernel over experts (cuda_moe_rows.cu), all backends */
unsigned long long nmlx_cuda_moe_rows_launches(void);
/* launches of the grouped tensor-core tile over experts (cuda_moe_qmm.cu), all backends */
unsigned long long nmlx_cuda_moe_qmm_launches(void);
/* That tile's task rows, process-wide: 32 or 64 forced, 1 = automatic, 0 =
 * off (the few-rows kernel runs), -1 = back to NMLX_CUDA_MOE_QMM. For tests
 * and A/B runs. */
void nmlx_cuda_set_moe_qmm(int rows);
/* Which form moe_experts runs: 0 = none (it declines: the generic path),
 * 1 = decode form up to 64 pairs, else prefill form (the default), 2 =
 * always the prefill form, 3 = the decode form whenever its kernels take
 * the experts' format. Unset or NMLX_CUDA_MOE=1 set 1 at start (the
 * default since the op passed its tests on an H200), =0 sets 0, =sorted 2.
 * For tests and A/B runs. */
void nmlx_backend_cuda_set_moe(nmlx_backend *be, int mode);

#ifdef __cplusplus
}
#endif

#endif
