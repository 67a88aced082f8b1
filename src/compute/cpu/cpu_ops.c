/* CPU op drivers: check nothing (the model layer validates shapes and
 * dtypes), split the work over the thread pool where it pays, and call the
 * chosen kernel set. Small ops run on the caller thread alone: waking the
 * pool costs about a microsecond. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"

#include <math.h>
#include <string.h>

enum {
    PAR_ELEMS = 1 << 15,       /* elementwise ops below this run single-threaded */
    PAR_MATMUL_MACS = 1 << 16, /* matmuls below this many multiply-adds too */
    FEW_ROWS = 64              /* row block of the few-token path (cache-resident) */
};

static int threads_for(const nmlx_backend *be, int64_t work, int64_t min_work) {
    if (work < min_work) return 1;
    return be->n_threads;
}

/* ---- matmul ---- */

typedef struct {
    const cpu_kernels *k;
    const nmlx_weight *w;
    const nmlx_tensor *bias;
    const float *x;
    float *y;
    int64_t T;
    int prec; /* the backend's cpu_precision (f32: every matmul on f32 x) */
} matmul_job;

/* Precision "f32": a decode mat-vec on f32 x (the picked decode kernels
 * round x to bf16 or int16); false where the set's own path already is. */
static bool matvec_f32(const matmul_job *j, const float *x, float *y, int64_t d0, int64_t d1) {
    const nmlx_weight *w = j->w;
    if (w->mode == NMLX_QUANT_NONE) { /* not the bf16-x mat-vec */
        j->k->matmul_rows(w, x, y, 1, d0, d1);
        return true;
    }
#if NMLX_CPU_HAVE_AVX2
    if (!strncmp(j->k->isa, "avx512", 6)) {
        nmlx_avx512f32_quant_matvec(w, x, y, d0, d1);
        return true;
    }
#endif
    (void)x, (void)y, (void)d0, (void)d1;
    return false;
}

/* One token's mat-vec over rows [d0, d1): the decode kernel. */
static void matvec_rows(const matmul_job *j, const float *x, float *y, int64_t d0, int64_t d1) {
    const nmlx_weight *w = j->w;
    if (j->prec == CPU_PREC_F32 && matvec_f32(j, x, y, d0, d1)) return;
    if (!(w->mode == NMLX_QUANT_NONE && w->w.dtype == NMLX_DT_BF16 && j->k->matvec_bf16 &&
          j->k->matvec_bf16(j->k->matvec_bf16_variant, w->w.data, w->cols, x, y, d0, d1)))
        j->k->matmul_rows(w, x, y, 1, d0, d1);
}

/* T < NMLX_CPU_FEW_TOKENS tokens x [T, N] -> y [T, D] over rows [d0, d1):
 * the kernel set's few-token mat-vec, which loads each weight once for all
 * the tokens, else each token's mat-vec over row blocks small enough to
 * stay in cache across the tokens (weights read from memory once either
 * way; same bits). */
static void few_tokens(const matmul_job *j, const float *x, float *y, int64_t T, int64_t d0,
                       int64_t d1) {
    const nmlx_weight *w = j->w;
    const int64_t N = w->cols, D = w->rows;
    if (j->prec != CPU_PREC_F32 && j->k->matmul_few && j->k->matmul_few(w, x, y, T, d0, d1)) return;
    for (int64_t b0 = d0; b0 < d1; b0 += FEW_ROWS) {
        int64_t b1 = d1 - b0 < FEW_ROWS ? d1 : b0 + FEW_ROWS;
        for (int64_t t = 0; t < T; t++)
            matvec_rows(j, x + t * N, y + t * D, b0, b1);
    }
}

/* A prefill (T >= NMLX_CPU_FEW_CHUNKED) by the backend's precision:
 * quantized weights on AMX tiles or int16 x by default where picked (avx2
 * and avx512 sets), int8 or f32 x where asked; dense bf16 weights on bf16 x where
 * picked (avx512bf16 set); never for the LM head (f32_input). false: not
 * taken, the set's matmul runs. */
static bool prefill_by_precision(const matmul_job *j, int64_t d0, int64_t d1) {
#if NMLX_CPU_HAVE_AVX2
    const nmlx_weight *w = j->w;
    if (w->f32_input) return false;
    if (!strcmp(j->k->isa, "avx2")) /* int16 x by default, vpmaddwd */
        return w->mode != NMLX_QUANT_NONE && j->prec == CPU_PREC_DEFAULT &&
               nmlx_avx2_quant_int16_ok(w) && nmlx_avx2_quant_int16_default() &&
               nmlx_avx2_quant_matmat16(w, j->x, j->y, j->T, d0, d1);
    if (strncmp(j->k->isa, "avx512", 6)) return false;
    if (w->mode == NMLX_QUANT_NONE) { /* dense bf16: x rounded to bf16, AMX or vdpbf16ps */
        if (w->w.dtype != NMLX_DT_BF16 || j->prec == CPU_PREC_F32 || w->cols % 32 ||
            strcmp(j->k->isa, "avx512bf16"))
            return false;
        const nmlx_qbf16_pick pick = nmlx_qbf16_get_pick();
        if (pick.dense_amx && nmlx_amx_bf16_matmat(w, j->x, j->y, j->T, d0, d1)) return true;
        if (!pick.dense_bf16) return false;
        nmlx_avx512bf16_quant_matmat(w, j->x, j->y, j->T, d0, d1);
        return true;
    }
    if (j->prec == CPU_PREC_F32) {
        nmlx_avx512f32_quant_matmat(w, j->x, j->y, j->T, d0, d1);
        return true;
    }
    const bool vnni = nmlx_qint8_cpu_ok() && nmlx_avx512vnni_quant_ok(w);
    /* NMLX_QUANT_INT8=prefill: int8 for every model of the process */
    if (vnni && (j->prec == CPU_PREC_INT8 ||
                 (j->prec == CPU_PREC_DEFAULT && nmlx_qint8_get_mode().prefill)))
        return nmlx_avx512vnni_quant_matmat(w, j->x, j->y, j->T, d0, d1);
    /* AMX tiles where picked, at the default precision only: AMX-INT8 on
     * int16 x (the int16 prefill's bits), else AMX-BF16 (3 terms, the
     * default: x and W as bf16 hi + lo, as accurate as int16 x) */
    const nmlx_qbf16_pick pick = nmlx_qbf16_get_pick();
    if (j->prec == CPU_PREC_DEFAULT && pick.prefill_amx8 && j->T >= pick.prefill_amx8_min_t &&
        nmlx_amx8_quant_matmat(w, j->x, j->y, j->T, d0, d1))
        return true;
    if (j->prec == CPU_PREC_DEFAULT && pick.prefill_amx && j->T >= pick.prefill_amx_min_t &&
        nmlx_amx_quant_matmat(w, j->x, j->y, j->T, d0, d1, pick.prefill_amx))
        return true;
    return vnni && pick.prefill_int16 &&
           nmlx_avx512vnni_quant_matmat16(w, j->x, j->y, j->T, d0, d1);
#else
    (void)j, (void)d0, (void)d1;
    return false;
#endif
}

static void matmul_task(void *ctx, int ith, int nth) {
    const matmul_job *j = ctx;
    int64_t d0, d1;
    cpu_split(j->w->rows, ith, nth, 16, &d0, &d1);
    if (d0 >= d1) return;
    const nmlx_weight *w = j->w;
    const int64_t N = w->cols, D = w->rows;
    if (j->T == 1) {
        matvec_rows(j, j->x, j->y, d0, d1);
    } else if (j->T < NMLX_CPU_FEW_CHUNKED) {
        /* Fewer tokens than the blocked prefill kernel pays for (a batched
         * decode step, a short prompt): under NMLX_CPU_FEW_TOKENS in one
         * few-token pass, up to NMLX_CPU_FEW_CHUNKED in two (the weights
         * read twice: still faster than the blocked kernel there). Every
         * row equals what a one-token call computes, bit for bit. */
        int64_t chunks = j->T < NMLX_CPU_FEW_TOKENS ? 1 : 2;
        for (int64_t c = 0, t0 = 0; c < chunks; c++) {
            int64_t n = (j->T - t0) / (chunks - c);
            few_tokens(j, j->x + t0 * N, j->y + t0 * D, n, d0, d1);
            t0 += n;
        }
    } else if (!prefill_by_precision(j, d0, d1)) {
        j->k->matmul_rows(w, j->x, j->y, j->T, d0, d1);
    }
    if (j->bias) {
        const int64_t D = j->w->rows;
        for (int64_t d = d0; d < d1; d++) {
            float b = nmlx_load_f32(j->bias->dtype, j->bias->data, (size_t)d);
            for (int64_t t = 0; t < j->T; t++)
                j->y[t * D + d] += b;
        }
    }
}

static bool matmul_dtype_ok(const nmlx_weight *w) {
    nmlx_dtype dt = w->w.dtype;
    if (w->mode != NMLX_QUANT_NONE) return dt == NMLX_DT_U32;
    return dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16;
}

/* Dense F32/F16/BF16 weights, or quantized (affine/MXFP4 with U32 packed
 * codes) as validated by the model layer; anything else leaves y untouched
 * (a void op cannot report it). */

void nmlx_cpu_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                     const float *x, float *y, int64_t T) {
    if (T <= 0 || w->rows <= 0 || !matmul_dtype_ok(w)) return;
    matmul_job j = {
        cpu_kernels_of(be), w, bias, x, y, T, ((const cpu_impl *)be->impl)->prefill_precision};
    int nth = threads_for(be, T * w->rows * w->cols, PAR_MATMUL_MACS);
    nmlx_pool_run_n(be->pool, matmul_task, &j, nth);
}

/* Several weights on one x: each thread takes its share of every weight's
 * rows (the same rows a lone call would give it), in one pool pass: one
 * wake-up and barrier instead of n, which a decode step pays per layer. */
typedef struct {
    matmul_job j[NMLX_MATMUL_MULTI_MAX];
    int n;
} multi_job;

static void multi_task(void *ctx, int ith, int nth) {
    const multi_job *m = ctx;
    for (int i = 0; i < m->n; i++)
        matmul_task((void *)&m->j[i], ith, nth);
}

void nmlx_cpu_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                           const nmlx_tensor *const *biases, const float *x, float *const *ys,
                           int64_t T) {
    if (T <= 0 || n <= 0) return;
    multi_job m = {.n = 0};
    int64_t work = 0;
    for (int i = 0; i < n; i++) {
        if (i >= NMLX_MATMUL_MULTI_MAX || ws[i]->rows <= 0 || !matmul_dtype_ok(ws[i]))
            continue; /* as a lone call: left untouched */
        m.j[m.n++] = (matmul_job){cpu_kernels_of(be),
                                  ws[i],
                                  biases ? biases[i] : NULL,
                                  x,
                                  ys[i],
                                  T,
                                  ((const cpu_impl *)be->impl)->prefill_precision};
        work += T * ws[i]->rows * ws[i]->cols;
    }
    if (!m.n) return;
    nmlx_pool_run_n(be->pool, multi_task, &m, threads_for(be, work, PAR_MATMUL_MACS));
}

/* ---- embed ---- */

/* An id outside [0, V) yields a zero row (the model layer validates ids). */
void nmlx_cpu_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                    float scale, float *out) {
    const int64_t V = table->rows, D = table->cols;
    const nmlx_tensor *tw = &table->w;
    size_t es = nmlx_dtype_size(tw->dtype);
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * D;
        if (ids[t] < 0 || ids[t] >= V) {
            memset(o, 0, (size_t)D * sizeof(float));
            continue;
        }
        if (table->mode != NMLX_QUANT_NONE) /* quantized table: dequantize the one row */
            nmlx_quant_dequant_row(table, ids[t], 0, D, o);
        else
            nmlx_to_f32(tw->dtype, (const char *)tw->data + (size_t)ids[t] * (size_t)D * es, o,
                        (size_t)D);
        if (scale != 1.0f) cpu_kernels_of(be)->scale(o, scale, D);
    }
}

/* ---- rmsnorm ---- */

typedef struct {
    const cpu_kernels *k;
    const float *x;
    float *sum;     /* add_rmsnorm: x itself, each row made x + d first; else NULL */
    const float *d; /* [R, D] with sum */
    const nmlx_tensor *w;
    float w_offset, eps;
    float *y;
    int64_t R, D;
} rms_job;

static void rms_task(void *ctx, int ith, int nth) {
    const rms_job *j = ctx;
    int64_t r0, r1;
    cpu_split(j->R, ith, nth, 1, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        if (j->sum) j->k->add(j->sum + r * j->D, j->d + r * j->D, j->sum + r * j->D, j->D);
        j->k->rmsnorm_row(j->x + r * j->D, j->w, j->w_offset, j->eps, j->y + r * j->D, j->D);
    }
}

static void run_rms(nmlx_backend *be, rms_job *j) {
    if (j->R <= 0 || j->D <= 0) return;
    j->k = cpu_kernels_of(be);
    int nth = j->R > 1 ? threads_for(be, j->R * j->D, PAR_ELEMS) : 1;
    nmlx_pool_run_n(be->pool, rms_task, j, nth);
}

void nmlx_cpu_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                      float eps, float *y, int64_t R, int64_t D) {
    rms_job j = {.x = x, .w = w, .w_offset = w_offset, .eps = eps, .y = y, .R = R, .D = D};
    run_rms(be, &j);
}

/* The fused add + rmsnorm (backend.h add_rmsnorm): per row, the two
 * kernels of the unfused sequence, so the result equals it bit for bit. */
void nmlx_cpu_add_rmsnorm(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                          float w_offset, float eps, float *y, int64_t R, int64_t D) {
    rms_job j = {
        .x = x, .sum = x, .d = d, .w = w, .w_offset = w_offset, .eps = eps, .y = y, .R = R, .D = D};
    run_rms(be, &j);
}

/* ---- rope ---- */

typedef struct {
    float *x;
    int64_t T, H, HD, rot, pos0;
    const float *freqs;
    float mscale;
} rope_job;

/* Angles in double: positions up to ~1e5 times freqs near 1 would lose
 * several digits of the angle in float. */
void nmlx_cpu_rope_heads(float *x, int64_t H, int64_t stride, int64_t half, double p,
                         const float *freqs, float mscale) {
    for (int64_t i = 0; i < half; i++) {
        double ang = p * (double)freqs[i];
        float c = (float)cos(ang), s = (float)sin(ang);
        for (int64_t h = 0; h < H; h++) {
            float *xh = x + h * stride;
            float x0 = xh[i], x1 = xh[i + half];
            xh[i] = (x0 * c - x1 * s) * mscale;
            xh[i + half] = (x1 * c + x0 * s) * mscale;
        }
    }
}

static void rope_task(void *ctx, int ith, int nth) {
    const rope_job *j = ctx;
    int64_t t0, t1;
    cpu_split(j->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        nmlx_cpu_rope_heads(j->x + t * j->H * j->HD, j->H, j->HD, j->rot / 2, (double)(j->pos0 + t),
                            j->freqs, j->mscale);
}

void nmlx_cpu_rope(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                   int64_t pos0, const float *freqs, float mscale) {
    if (T <= 0 || rot < 2) return;
    rope_job j = {x, T, H, HD, rot, pos0, freqs, mscale};
    int nth = T > 1 ? threads_for(be, T * rot * 8, PAR_ELEMS) : 1;
    nmlx_pool_run_n(be->pool, rope_task, &j, nth);
}

/* ---- elementwise ---- */

typedef struct {
    const cpu_kernels *k;
    int kind; /* 0 act_mul, 1 act, 2 add, 3 scale */
    nmlx_act act;
    const float *a, *b;
    float *out;
    float s;
    int64_t n;
} elem_job;

static void elem_task(void *ctx, int ith, int nth) {
    const elem_job *j = ctx;
    int64_t i0, i1;
    cpu_split(j->n, ith, nth, 64, &i0, &i1);
    if (i0 >= i1) return;
    int64_t m = i1 - i0;
    switch (j->kind) {
    case 0: j->k->act_mul(j->act, j->a + i0, j->b + i0, j->out + i0, m); break;
    case 1: j->k->act(j->act, j->out + i0, m); break;
    case 2: j->k->add(j->a + i0, j->b + i0, j->out + i0, m); break;
    case 3: j->k->scale(j->out + i0, j->s, m); break;
    }
}

static void run_elem(nmlx_backend *be, elem_job *j, int64_t cost_per_elem) {
    if (j->n <= 0) return;
    j->k = cpu_kernels_of(be);
    int nth = threads_for(be, j->n * cost_per_elem, PAR_ELEMS);
    nmlx_pool_run_n(be->pool, elem_task, j, nth);
}

void nmlx_cpu_act_mul(nmlx_backend *be, nmlx_act act, const float *gate, const float *up,
                      float *out, int64_t n) {
    elem_job j = {.kind = 0, .act = act, .a = gate, .b = up, .out = out, .n = n};
    run_elem(be, &j, 4);
}

void nmlx_cpu_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n) {
    elem_job j = {.kind = 1, .act = act, .out = x, .n = n};
    run_elem(be, &j, 4);
}

void nmlx_cpu_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n) {
    elem_job j = {.kind = 2, .a = a, .b = b, .out = out, .n = n};
    run_elem(be, &j, 1);
}

void nmlx_cpu_scale(nmlx_backend *be, float *x, float s, int64_t n) {
    elem_job j = {.kind = 3, .out = x, .s = s, .n = n};
    run_elem(be, &j, 1);
}

/* ---- softmax ---- */

typedef struct {
    const cpu_kernels *k;
    float *x;
    int64_t R, n;
} softmax_job;

static void softmax_task(void *ctx, int ith, int nth) {
    const softmax_job *j = ctx;
    int64_t r0, r1;
    cpu_split(j->R, ith, nth, 1, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        j->k->softmax_row(j->x + r * j->n, j->n, -INFINITY);
}

void nmlx_cpu_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n) {
    if (R <= 0 || n <= 0) return;
    softmax_job j = {cpu_kernels_of(be), x, R, n};
    int nth = R > 1 ? threads_for(be, R * n * 4, PAR_ELEMS) : 1;
    nmlx_pool_run_n(be->pool, softmax_task, &j, nth);
}
