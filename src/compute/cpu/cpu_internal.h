/* Internal to the CPU backend: the table of single-thread kernels one ISA
 * provides (portable C, AVX2+FMA+F16C), which the op drivers in cpu_ops.c
 * and cpu_attention.c split over the thread pool. Kernels never allocate. */
#ifndef NMLX_CPU_INTERNAL_H
#define NMLX_CPU_INTERNAL_H

#include "compute/backend.h"

/* Matmuls of fewer tokens than this run as per-token mat-vecs (a batched
 * decode step, a short prompt), so each row equals a one-token call's bit
 * for bit. Dense: measured faster than the blocked kernel up to 8 tokens on
 * the avx2 and avx512bf16 sets and level at 15 (bench/batched_decode.md);
 * quantized kernels had the same cut already (quant_avx512.c). */
#ifndef NMLX_CPU_FEW_TOKENS /* -D for accuracy experiments: 2 sends every T > 1 to the prefill kernels */
#define NMLX_CPU_FEW_TOKENS 16
#endif
/* From NMLX_CPU_FEW_TOKENS up to this many tokens, two few-token passes
 * (same bits): at 16 tokens they beat the blocked kernel by 1.2-2.6x on
 * bf16, 4-bit and 8-bit weights on the avx512bf16 set and tie or beat it on
 * the avx2 set; at 32 the blocked kernel wins for 8-bit and on avx2
 * (bench/batched_decode.md). */
#ifndef NMLX_CPU_FEW_CHUNKED
#define NMLX_CPU_FEW_CHUNKED 24
#endif

/* Software prefetch hint for weights streamed from DRAM by the decode
 * mat-vecs and their few-token forms: into L2 (T1), not L1 (T0). A T0
 * prefetch holds one of the core's few L1 miss buffers until the line
 * arrives, so one thread can keep only about 20 lines in flight: the
 * 8-bit mat-vec streamed 22-24 GB/s with T0 and 32 GB/s with T1 (2
 * threads, Zen 4; bench/bench_decode.c, bench/cpu_decode.md). The kernels
 * read the line from L2 a few hundred cycles later. Expands to an
 * _mm_prefetch hint: use only where <immintrin.h> is included. */
#ifndef NMLX_PF_STREAM
#define NMLX_PF_STREAM _MM_HINT_T1
#endif

/* A thread's f32 copy of one KV head's half-precision keys and values, rows
 * j0 .. j0 + n - 1 (every key the call's queries see), for the flash kernel:
 * kvh = -1 until the kernel fills it, then the head it holds. NULL where the
 * cache is f32 or the copy would pass NMLX_ATTN_WIDE_MAX bytes. */
typedef struct nmlx_attn_wide {
    int64_t kvh, j0, n;
    float *k, *v; /* [n][HD] each */
} nmlx_attn_wide;
enum { NMLX_ATTN_WIDE_MAX = 8 << 20 };

typedef struct cpu_kernels {
    const char *isa; /* "portable", "avx2", "avx512", "avx512bf16" */
    /* y[t, d] = sum_n x[t, n] * W[d, n] for rows d0 <= d < d1 and all t < T
     * (x [T, N], y [T, D] with N = w->cols, D = w->rows); no bias. Only
     * NMLX_QUANT_NONE weights in F32/F16/BF16. */
    void (*matmul_rows)(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                        int64_t d1);
    float (*dot)(const float *a, const float *b, int64_t n);
    /* y[i] += a * x[i] */
    void (*axpy)(float a, const float *x, float *y, int64_t n);
    /* Attention rows of g query heads sharing one KV head, over a cache in
     * `dt` (F32, F16 or BF16) of rows HD wide: sc[i * n + j] = scale * q_i .
     * K[j] (q rows contiguous), and out_i = sum_j p[i * n + j] * V[j] (out
     * rows contiguous, overwritten), for i < g, j < n. */
    void (*attn_scores)(nmlx_dtype dt, const float *q, int64_t g, const void *K, int64_t n,
                        int64_t HD, float scale, float *sc);
    void (*attn_mix)(nmlx_dtype dt, const float *p, int64_t g, const void *V, int64_t n,
                     int64_t HD, float *out);
    /* one row of rmsnorm (see backend.h); w may be NULL */
    void (*rmsnorm_row)(const float *x, const nmlx_tensor *w, float w_offset, float eps, float *y,
                        int64_t D);
    void (*act_mul)(nmlx_act act, const float *gate, const float *up, float *out, int64_t n);
    void (*act)(nmlx_act act, float *x, int64_t n);
    void (*add)(const float *a, const float *b, float *out, int64_t n);
    void (*scale)(float *x, float s, int64_t n);
    /* x[i] = exp(x[i] - m) / (sum_j exp(x[j] - m) + exp(sink - m)) with m
     * the max over x and sink; sink = -INFINITY for a plain softmax. */
    void (*softmax_row)(float *x, int64_t n, float sink);
    /* Optional (NULL if absent): the decode mat-vec for dense BF16 weights
     * with x rounded to bf16 (avx512bf16 set), y[d] = W[d, :] . x for
     * d0 <= d < d1; `variant` picks the row grouping and prefetch distance.
     * Returns false (y untouched) when it cannot run this shape (N too big);
     * the caller then uses matmul_rows. */
    bool (*matvec_bf16)(int variant, const uint16_t *W, int64_t N, const float *x, float *y,
                        int64_t d0, int64_t d1);
    int matvec_bf16_variant;
    /* Optional (NULL if absent): the few-token mat-vec, 1 < T <
     * NMLX_CPU_FEW_TOKENS (a batched decode step), y[t, d] for all t and
     * rows d0 <= d < d1, each row bit for bit what the one-token path
     * (matvec_bf16 or matmul_rows with T = 1) gives on token t, with each
     * weight loaded and converted once for all T tokens. Returns false (y
     * untouched) for weights it has no kernel for; the caller then runs
     * the one-token path per token. */
    bool (*matmul_few)(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                       int64_t d1);
    /* Optional (NULL if absent): a prefill's attention, flash style
     * (attention_avx512.c): the queries t0 .. t0 + min(T - t0, ROWS / g) - 1
     * of the g = H / KVH query heads of KV head kvh, out written for them;
     * buf holds nmlx_attn_flash_floats(HD) floats. Only where
     * attn_flash_ok(HD, g). */
    bool (*attn_flash_ok)(int64_t HD, int64_t g);
    void (*attn_flash)(const nmlx_attn_args *a, int64_t t0, int64_t kvh, int64_t g, float *buf,
                       nmlx_attn_wide *wide);
} cpu_kernels;

/* The flash kernel's work item: up to this many query rows (queries x the
 * heads of a KV head) against KEYS keys at a time, HD up to HD_MAX */
enum { NMLX_ATTN_FLASH_ROWS = 32, NMLX_ATTN_FLASH_KEYS = 64, NMLX_ATTN_FLASH_HD_MAX = 512 };
static inline int64_t nmlx_attn_flash_floats(int64_t HD) {
    return 2 * HD * NMLX_ATTN_FLASH_ROWS + (NMLX_ATTN_FLASH_KEYS + 16) * NMLX_ATTN_FLASH_ROWS +
           2 * NMLX_ATTN_FLASH_KEYS * HD;
}
/* Which path a prefill's attention takes (cpu_attention.c): 0 the per-query
 * row path, 1 blocks of queries through the row kernels, 2 the set's flash
 * kernel where it has one and an item has >= 16 rows (else 1), 3 the flash
 * kernel wherever it runs the shape. From NMLX_ATTN_BLOCK=0 / 1 / unset /
 * flash. Tests set it with nmlx_cpu_attn_set_path (-1: back to the
 * environment's). */
void nmlx_cpu_attn_set_path(int path);

extern const cpu_kernels nmlx_cpu_kernels_portable;
/* kernels_avx2.c is built on x86-64 only */
#if defined(__x86_64__)
#define NMLX_CPU_HAVE_AVX2 1
extern const cpu_kernels nmlx_cpu_kernels_avx2;
#else
#define NMLX_CPU_HAVE_AVX2 0
#endif

/* attention_avx2.c: the avx2 set's attention row kernels */
#if NMLX_CPU_HAVE_AVX2
void nmlx_avx2_attn_scores(nmlx_dtype dt, const float *q, int64_t g, const void *K, int64_t n,
                           int64_t HD, float scale, float *sc);
void nmlx_avx2_attn_mix(nmlx_dtype dt, const float *p, int64_t g, const void *V, int64_t n,
                        int64_t HD, float *out);
/* the avx2 set's flash prefill attention (as attention_avx512.c's, 8 lanes) */
bool nmlx_avx2_attn_flash_ok(int64_t HD, int64_t g);
void nmlx_avx2_attn_flash(const nmlx_attn_args *a, int64_t t0, int64_t kvh, int64_t g, float *buf,
                          nmlx_attn_wide *wide);
#endif

/* attention_avx512.c: the avx512 sets' flash prefill attention (see
 * cpu_kernels.attn_flash) and its e^x on n floats in place (tests) */
#if NMLX_CPU_HAVE_AVX2
bool nmlx_avx512_attn_flash_ok(int64_t HD, int64_t g);
void nmlx_avx512_attn_flash(const nmlx_attn_args *a, int64_t t0, int64_t kvh, int64_t g, float *buf,
                            nmlx_attn_wide *wide);
void nmlx_avx512_exp(float *x, int64_t n);
#endif

/* AVX-512 (x86-64): the AVX2 set with the prefill matmul replaced. */
#if NMLX_CPU_HAVE_AVX2
/* Quantized weights (quant_avx2.c): decode mat-vec on packed rows, and one
 * row segment dequantized to f32 for the blocked prefill matmuls. */
void nmlx_avx2_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0, int64_t d1);
void nmlx_avx2_quant_row(const nmlx_weight *w, int64_t row, int64_t k0, int64_t n, float *dst);
/* matmul_avx2.c: the avx2 set's matmul_rows (T == 1: the dense mat-vec). */
void nmlx_avx2_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1);
/* matmul_few_avx2.c: the avx2 set's cpu_kernels.matmul_few (dense f32, f16,
 * bf16 weights; quantized ones through quant_few_avx2.c's form of the
 * planar mat-vec: affine 4/8-bit g32/64/128, MXFP4; false for others). */
bool nmlx_avx2_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                          int64_t d1);
bool nmlx_avx2_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                int64_t d0, int64_t d1);
/* quant_avx512.c: the avx512 set's matmul_rows for quantized weights (any T). */
void nmlx_avx512_quant_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                   int64_t d0, int64_t d1);
void nmlx_avx512_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                             int64_t d1);
/* matmul_avx512bf16.c (AVX512_BF16): see cpu_kernels.matvec_bf16. x is
 * rounded into a stack buffer, so N is bounded. */
#define NMLX_BF16_MATVEC_MAX_N 32768
bool nmlx_avx512bf16_matvec(int variant, const uint16_t *W, int64_t N, const float *x, float *y,
                            int64_t d0, int64_t d1);
int nmlx_avx512bf16_matvec_variants(void);
const char *nmlx_avx512bf16_matvec_name(int variant);
/* The few-token form of nmlx_avx512bf16_matvec (any variant: they give the
 * same bits): y[t * D + d] for t < T, d0 <= d < d1; false if N is too big. */
bool nmlx_avx512bf16_matvec_few(const uint16_t *W, int64_t N, int64_t D, const float *x, float *y,
                                int64_t T, int64_t d0, int64_t d1);
/* cpu_kernels.matmul_few of the avx512 set (quant_few_avx512.c: quantized
 * weights) and of the avx512bf16 set (matmul_avx512bf16.c: dense bf16 too). */
bool nmlx_avx512_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1);
bool nmlx_avx512_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                            int64_t d1);
bool nmlx_avx512bf16_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                int64_t d0, int64_t d1);
#endif

/* The activations of quantized prefill matmuls (T >= NMLX_CPU_FEW_CHUNKED):
 * default = int16 where AVX512_VNNI is there and measured faster (else
 * f32; MXFP4 bf16 where picked), int8 (opt-in, faster, looser), f32 (exact,
 * slowest). Never for the LM head (f32_input): always f32 there. */
typedef enum { CPU_PREC_DEFAULT = 0, CPU_PREC_INT8, CPU_PREC_F32 } cpu_precision;

typedef struct cpu_impl {
    const cpu_kernels *k;
    cpu_kernels own; /* derived tables (avx512) live here, so no globals */
    int prefill_precision; /* nmlx_backend_set_precision: a cpu_precision */
} cpu_impl;

static inline const cpu_kernels *cpu_kernels_of(const nmlx_backend *be) {
    return ((const cpu_impl *)be->impl)->k;
}

/* Like nmlx_backend_cpu_create with the kernel set named explicitly
 * ("portable", "avx2", "avx512" or "avx512bf16"; NULL = the best this CPU
 * runs, or portable if NMLX_CPU=portable; NMLX_CPU=avx2 or avx512 caps it).
 * Fails with NMLX_ERR_UNSUPPORTED if this CPU cannot run the named set.
 * Tests use it to check every path on the same machine. */
nmlx_status nmlx_backend_cpu_create_isa(int n_threads, const char *isa, nmlx_backend **out);

/* The op drivers (cpu_ops.c, cpu_attention.c) behind nmlx_backend_ops. */
void nmlx_cpu_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                           const nmlx_tensor *const *biases, const float *x, float *const *ys,
                           int64_t T);
void nmlx_cpu_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                     const float *x, float *y, int64_t T);
void nmlx_cpu_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                    float scale, float *out);
void nmlx_cpu_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                      float eps, float *y, int64_t R, int64_t D);
void nmlx_cpu_rope(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                   int64_t pos0, const float *freqs, float mscale);
void nmlx_cpu_attention(nmlx_backend *be, const nmlx_attn_args *a);
void nmlx_cpu_act_mul(nmlx_backend *be, nmlx_act act, const float *gate, const float *up,
                      float *out, int64_t n);
void nmlx_cpu_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n);
void nmlx_cpu_swiglu_clipped(nmlx_backend *be, const float *gate, const float *up, float *out,
                             int64_t n, float alpha, float limit); /* cpu_moe_ops.c */
/* cpu_gemma3n_ops.c */
void nmlx_cpu_gaussian_topk(nmlx_backend *be, float *x, int64_t R, int64_t n, float std_mult);
void nmlx_cpu_rms_match(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                        float eps);
void nmlx_cpu_mul_rows(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D);
void nmlx_cpu_altup_predict(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                            const nmlx_tensor *coefs, float *out, int64_t K, int64_t T, int64_t D);
void nmlx_cpu_altup_correct(nmlx_backend *be, float *p, int64_t stride, const float *act,
                            const float *router, const nmlx_tensor *coefs, float clip,
                            int64_t active, int64_t K, int64_t T, int64_t D);
void nmlx_cpu_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n);
/* The fused ops (backend.h): add_rmsnorm in cpu_ops.c (rmsnorm's rows),
 * rope_kv and gate_up_act in cpu_fused.c */
void nmlx_cpu_add_rmsnorm(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                          float w_offset, float eps, float *y, int64_t R, int64_t D);
void nmlx_cpu_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a);
void nmlx_cpu_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                          const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                          const float *x, float *gate, float *up, int64_t T);
/* RoPE of one token's H heads, head h at x + h * stride, at position p
 * (rot = 2 * half dims); rope and rope_kv share it. */
void nmlx_cpu_rope_heads(float *x, int64_t H, int64_t stride, int64_t half, double p,
                         const float *freqs, float mscale);
void nmlx_cpu_scale(nmlx_backend *be, float *x, float s, int64_t n);
void nmlx_cpu_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n);

/* Splits [0, n) into nth near-equal chunks aligned to `align` elements and
 * returns chunk ith as [*lo, *hi). */
static inline void cpu_split(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t blocks = (n + align - 1) / align;
    int64_t b0 = blocks * ith / nth, b1 = blocks * (ith + 1) / nth;
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

#endif
