/* Every CUDA op against the CPU op (the reference) on random inputs, odd
 * sizes included: matmul (F32/F16/BF16, T <= 8 mat-vec, T > 8 cuBLAS (16-bit
 * weights: x split into hi + lo up to 64 rows, rounded beyond), bias,
 * unaligned widths, row views of a prepared tensor), embed, rmsnorm, rope,
 * attention (GQA, sliding window, softcap, sinks, several key tiles), act_mul,
 * act, add, scale, softmax, copy/upload/download; quantized matmul (MLX affine
 * 2/3/4/5/6/8-bit x group 32/64/128 x F32/F16/BF16 scales, MXFP4; T <= 8
 * mat-vec and T > 8 tensor-core tiles, rows and tokens off the tile sizes,
 * unaligned row views) and quantized embed; the int16 decode mat-vec
 * (matmul, matmul_multi, gate_up_act at T = 1): kernels v1 and v2 in
 * several configurations give the same bits. Batched decode: dense and
 * quantized matmul rows (T <= 8) equal each row alone (f32 mat-vec) and
 * rope_rows the per-row calls, bit for bit; attention_rows the per-row
 * calls to rounding (they may take the split or flash-decoding kernel).
 * Decode attention also as a recorded step's graph replayed at other
 * positions (test_attention_graph). The family ops
 * (swiglu_clipped, gaussian_topk, rms_match, mul_rows, altup_predict /
 * correct, rope_interleaved): family_ops_checks.h. argmax (ties, NaNs,
 * unaligned rows, in a graph): argmax_checks.h. Prints the worst
 * relative error per op. Exits 77 (ctest: skipped) when no GPU is usable. */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/quant.h"
#include "compute/cuda/cuda_backend.h"
#include "dev_floats.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "qweight.h"

#include <string.h>
#include <time.h>

static nmlx_backend *cpu, *gpu;

/* max|got - ref| / max(max|ref|, tiny); downloads got from the device */
static double rel_err(const float *dev, const float *ref, size_t n) {
    float *got = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        got[i] = NAN; /* poison: every element must be written */
    gpu->ops->download(gpu, got, dev, n * sizeof(float));
    double e = test_diff_over_max(got, ref, n); /* NaN: infinity */
    free(got);
    return e;
}

/* How many of the T rows of dy [T, D] (= gw x dx + pb, already run) differ,
 * bit for bit, from that row's x run alone (a batched decode's rows). */
static int rows_alone_differ(const nmlx_weight *gw, const nmlx_tensor *pb, const float *dx,
                             const float *dy, int64_t T, int64_t D, int64_t N) {
    float *all = malloc((size_t)(T * D) * sizeof(float)), *one = malloc((size_t)D * 4);
    float *dy1 = gpu->ops->alloc(gpu, (size_t)D * sizeof(float));
    gpu->ops->download(gpu, all, dy, (size_t)(T * D) * sizeof(float));
    int differ = 0;
    for (int64_t t = 0; t < T; t++) {
        gpu->ops->matmul(gpu, gw, pb, dx + t * N, dy1, 1);
        gpu->ops->download(gpu, one, dy1, (size_t)D * sizeof(float));
        differ += memcmp(one, all + t * D, (size_t)D * sizeof(float)) != 0;
    }
    gpu->ops->free(gpu, dy1);
    free(all), free(one);
    return differ;
}

static void check_ok(const char *what) {
    nmlx_status st = nmlx_backend_cuda_check(gpu);
    EXPECT(st == NMLX_OK, "%s: %s", what, nmlx_last_error());
}

/* An int16 mat-vec op (matmul, matmul_multi, gate_up_act at T = 1), run
 * again by q16_variants_differ: n outputs ys[i] of D[i] floats. */
typedef struct q16_call {
    int kind; /* 0 matmul, 1 matmul_multi, 2 gate_up_act */
    int n;
    const nmlx_weight *const *ws;
    const nmlx_tensor *const *bs;
    const float *x;
    float *const *ys;
    const int64_t *D;
    nmlx_act act;
} q16_call;

static void q16_run(const q16_call *c) {
    if (c->kind == 0)
        gpu->ops->matmul(gpu, c->ws[0], c->bs ? c->bs[0] : NULL, c->x, c->ys[0], 1);
    else if (c->kind == 1)
        gpu->ops->matmul_multi(gpu, c->n, c->ws, c->bs, c->x, c->ys, 1);
    else
        gpu->ops->gate_up_act(gpu, c->act, c->ws[0], c->ws[1], c->bs ? c->bs[0] : NULL,
                              c->bs ? c->bs[1] : NULL, c->x, c->ys[0], c->ys[1], 1);
}

/* The int16 mat-vec's kernels (cuda_qgemv16.cu): v1 (NMLX_CUDA_QGEMV16=v1)
 * and v2 in several configurations (ring, DEP, blocks a multiprocessor)
 * must give v2's outputs in its default configuration (or the one
 * NMLX_CUDA_QGEMV16_CFG sets), bit for bit, each written anew (NaN-filled
 * before every run). Returns the variants that differ; v1 is skipped where
 * it declines (8-bit, one weight of >= 16384 rows: the f32 kernel). The
 * op's buffers end with v2's outputs. */
static int q16_variants_differ(const q16_call *c, bool v1_takes) {
    static const char *const cfgs[] = {"d2b1",        "d4b0",       "d8b3,d2b4", "d8b1,d4b1",
                                       "d4b2,d2b0",   "a16b2,a8b2", "a8b0,a8b1", "d4b2r2,d2b2",
                                       "a8b2r2,a8b2", "d2b3r2,d4b2"};
    const int nout = c->kind == 2 ? 1 : c->n; /* gate_up_act: gate only (up: unfused scratch) */
    float *ref[3], *got[3];
    nmlx_cuda_set_qgemv16_version(2);
    nmlx_cuda_set_qgemv16_cfg(NULL);
    q16_run(c);
    for (int i = 0; i < nout; i++) {
        ref[i] = malloc((size_t)c->D[i] * sizeof(float));
        got[i] = malloc((size_t)c->D[i] * sizeof(float));
        gpu->ops->download(gpu, ref[i], c->ys[i], (size_t)c->D[i] * sizeof(float));
    }
    int differ = 0;
    const int nv = 1 + (int)(sizeof cfgs / sizeof cfgs[0]);
    for (int v = 0; v < nv; v++) {
        if (v == 0 && !v1_takes) continue;
        if (v == 0)
            nmlx_cuda_set_qgemv16_version(1);
        else {
            nmlx_cuda_set_qgemv16_version(2);
            EXPECT(nmlx_cuda_set_qgemv16_cfg(cfgs[v - 1]) == 0, "cfg %s", cfgs[v - 1]);
        }
        for (int i = 0; i < nout; i++) {
            for (int64_t k = 0; k < c->D[i]; k++)
                got[i][k] = NAN;
            gpu->ops->upload(gpu, c->ys[i], got[i], (size_t)c->D[i] * sizeof(float));
        }
        q16_run(c);
        check_ok("int16 mat-vec variant");
        bool same = true;
        for (int i = 0; i < nout; i++) {
            gpu->ops->download(gpu, got[i], c->ys[i], (size_t)c->D[i] * sizeof(float));
            same = same && !memcmp(got[i], ref[i], (size_t)c->D[i] * sizeof(float));
        }
        if (!same) printf("  int16 mat-vec %s differs from v2's\n", v == 0 ? "v1" : cfgs[v - 1]);
        differ += !same;
    }
    nmlx_cuda_set_qgemv16_version(2);
    nmlx_cuda_set_qgemv16_cfg(NULL);
    q16_run(c); /* the buffers as v2 leaves them */
    nmlx_cuda_set_qgemv16_version(-1);
    for (int i = 0; i < nout; i++)
        free(ref[i]), free(got[i]);
    return differ;
}

enum { N_OPS = 25 };
static double worst[N_OPS];
static const char *op_names[N_OPS] = {
    "matmul",    "embed",       "rmsnorm",       "rope",          "attention",
    "act_mul",   "act",         "add",           "scale",         "softmax",
    "copy",      "matmul_view", "qmatvec",       "qmatmul",       "qmatmul_view",
    "qembed",    "qmatvec_i16", "matmul_multi",  "swiglu_clip",   "gaussian_topk",
    "rms_match", "mul_rows",    "altup_predict", "altup_correct", "rope_interl"};
static void note(int op, double e) {
    if (e > worst[op] || e != e) worst[op] = e;
}

/* host tensor of a float dtype from f32 values */
static void *encode(nmlx_dtype dt, const float *v, size_t n) {
    size_t es = nmlx_dtype_size(dt);
    char *p = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
        if (dt == NMLX_DT_F32)
            memcpy(p + i * 4, &v[i], 4);
        else {
            uint16_t h = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(v[i]) : nmlx_f32_to_f16(v[i]);
            memcpy(p + i * 2, &h, 2);
        }
    }
    return p;
}

static void test_matmul(nmlx_dtype dt, int64_t T, int64_t D, int64_t N, bool bias) {
    float *wv = test_rand_floats((size_t)(D * N), -1, 1),
          *x = test_rand_floats((size_t)(T * N), -1, 1);
    float *bv = test_rand_floats((size_t)D, -1, 1);
    nmlx_weight w = {.w = {.dtype = dt, .ndim = 2, .shape = {D, N}, .name = "w"},
                     .mode = NMLX_QUANT_NONE,
                     .rows = D,
                     .cols = N};
    w.w.data = encode(dt, wv, (size_t)(D * N));
    nmlx_tensor b = {.dtype = dt, .ndim = 1, .shape = {D}, .name = "b"};
    b.data = encode(dt, bv, (size_t)D);
    float *yref = malloc((size_t)(T * D) * sizeof(float));
    cpu->ops->matmul(cpu, &w, bias ? &b : NULL, x, yref, T);

    const nmlx_tensor *pw = NULL, *pb = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &w.w, &pw) == NMLX_OK, "prepare: %s", nmlx_last_error());
    EXPECT(gpu->ops->prepare_tensor(gpu, &b, &pb) == NMLX_OK, "prepare: %s", nmlx_last_error());
    nmlx_weight gw = w;
    gw.w = *pw;
    float *dx = test_dev_floats(gpu, x, (size_t)(T * N));
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * sizeof(float));
    gpu->ops->matmul(gpu, &gw, bias ? pb : NULL, dx, dy, T);
    check_ok("matmul");
    double e = rel_err(dy, yref, (size_t)(T * D));
    /* up to 8 rows run the f32 mat-vec; 16-bit weights up to 64 rows take
     * x split into hi + lo (~2^-16), beyond that x rounded to the weight's
     * type (cuBLAS) */
    double tol = T <= 8 || dt == NMLX_DT_F32 ? 1e-5
                 : T <= 64                   ? 5e-5
                 : dt == NMLX_DT_BF16        ? 2e-2
                                             : 3e-3;
    EXPECT(e <= tol, "matmul %s T=%lld D=%lld N=%lld bias=%d: rel err %.2e > %.0e",
           nmlx_dtype_name(dt), (long long)T, (long long)D, (long long)N, bias, e, tol);
    note(0, e);
    if (T > 1 && T <= 8) { /* batched decode: each row equals that row alone, bit for bit */
        int differ = rows_alone_differ(&gw, bias ? pb : NULL, dx, dy, T, D, N);
        EXPECT(differ == 0, "matmul %s T=%lld D=%lld N=%lld: %d rows differ from the row alone",
               nmlx_dtype_name(dt), (long long)T, (long long)D, (long long)N, differ);
    }

    /* a row view inside the prepared tensor shares its copy (fused qkv) */
    if (D > 4) {
        int64_t r0 = 3, n = D - 4;
        nmlx_weight v = w;
        v.w.data = (char *)w.w.data + (size_t)(r0 * N) * nmlx_dtype_size(dt);
        v.w.shape[0] = n;
        v.rows = n;
        const nmlx_tensor *pv = NULL;
        EXPECT(gpu->ops->prepare_tensor(gpu, &v.w, &pv) == NMLX_OK, "prepare view");
        EXPECT(pv && (char *)pv->data == (char *)pw->data + (size_t)(r0 * N) * nmlx_dtype_size(dt),
               "a view must share the prepared copy");
        nmlx_weight gv = v;
        gv.w = *pv;
        cpu->ops->matmul(cpu, &v, NULL, x, yref, T);
        gpu->ops->matmul(gpu, &gv, NULL, dx, dy, T);
        e = rel_err(dy, yref, (size_t)(T * n));
        EXPECT(e <= tol, "matmul view %s T=%lld: %.2e", nmlx_dtype_name(dt), (long long)T, e);
        note(11, e);
    }
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    test_keep(w.w.data), test_keep(b.data);
    free(wv), free(x), free(bv), free(yref);
}

static void test_embed(nmlx_dtype dt) {
    int64_t V = 97, D = 75, T = 9;
    float *tv = test_rand_floats((size_t)(V * D), -2, 2);
    nmlx_weight w = {.w = {.dtype = dt, .ndim = 2, .shape = {V, D}, .name = "emb"},
                     .mode = NMLX_QUANT_NONE,
                     .rows = V,
                     .cols = D};
    w.w.data = encode(dt, tv, (size_t)(V * D));
    int32_t ids[9] = {0, 96, 5, 5, 40, -1, 97, 13, 2}; /* two out of range: zero rows */
    float *ref = malloc((size_t)(T * D) * sizeof(float));
    cpu->ops->embed(cpu, &w, ids, T, 1.7f, ref);
    const nmlx_tensor *p = NULL;
    gpu->ops->prepare_tensor(gpu, &w.w, &p);
    nmlx_weight g = w;
    g.w = *p;
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * sizeof(float));
    gpu->ops->embed(gpu, &g, ids, T, 1.7f, dy);
    check_ok("embed");
    double e = rel_err(dy, ref, (size_t)(T * D));
    EXPECT(e <= 1e-6, "embed %s: %.2e", nmlx_dtype_name(dt), e);
    note(1, e);
    gpu->ops->free(gpu, dy);
    test_keep(w.w.data);
    free(tv), free(ref);
}

static nmlx_weight make_qweight(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t D,
                                int64_t N) {
    return test_qweight(mode, bits, gs, sdt, D, N, test_keep);
}

static nmlx_weight prepare_q(const nmlx_weight *w) { return test_qweight_device(gpu, w); }

static void test_qmatmul(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t T,
                         int64_t D, int64_t N, bool bias) {
    nmlx_weight w = make_qweight(mode, bits, gs, sdt, D, N);
    float *x = test_rand_floats((size_t)(T * N), -1, 1), *bv = test_rand_floats((size_t)D, -1, 1);
    nmlx_tensor b = {.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {D}, .name = "b"};
    b.data = test_keep(encode(NMLX_DT_BF16, bv, (size_t)D));
    float *yref = malloc((size_t)(T * D) * sizeof(float));
    cpu->ops->matmul(cpu, &w, bias ? &b : NULL, x, yref, T);
    nmlx_weight gw = prepare_q(&w);
    const nmlx_tensor *pb = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &b, &pb) == NMLX_OK, "prepare bias");
    float *dx = test_dev_floats(gpu, x, (size_t)(T * N));
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * sizeof(float));
    gpu->ops->matmul(gpu, &gw, bias ? pb : NULL, dx, dy, T);
    check_ok("qmatmul");
    double e = rel_err(dy, yref, (size_t)(T * D));
    /* T == 1: f32 like the reference, or (affine 4/8-bit, the default) x
     * rounded per 16 inputs to int16 (2^-16 of the block's max|x|); T > 1:
     * q exact in bf16, x as bf16 hi + lo (~2^-16), f32 accumulation on the
     * tensor cores (2..64 rows: cuda_qrows_mma.cu; the f32 mat-vec rows up
     * to 8 where it is off) */
    const bool q16 = T == 1 && mode == NMLX_QUANT_AFFINE && (bits == 4 || bits == 8);
    /* int16 x: ~sqrt(N) x 2^-16 of a block's max|x| per output; the worst
     * measured on an H200 was 4.9e-5 (N = 14336): 2e-4 leaves 4x */
    /* T > 64, the cuBLAS mat-mat (cuda_qgemm.cu) in its default form: x and W
     * rounded once to f16 (~2^-11 each; measured worst ~5e-4); its exact
     * form (precision "f32") is checked below at 1e-4; NMLX_CUDA_QMM=fused
     * (cuda_qmm_fused.cu, x rounded to f16) and what it declines (gemm1) too */
    const char *qmm = getenv("NMLX_CUDA_QMM");
    const bool f16mm = T > 64 && (!qmm || !*qmm || !strcmp(qmm, "gemm1") || !strcmp(qmm, "fused"));
    double tol = q16 ? 2e-4 : T == 1 ? 1e-5 : f16mm ? 2e-3 : 1e-4;
    const char *sn = mode == NMLX_QUANT_MXFP4 ? "U8" : nmlx_dtype_name(sdt);
    EXPECT(e <= tol, "qmatmul %s %d-bit g%d %s T=%lld D=%lld N=%lld bias=%d: rel err %.2e > %.0e",
           nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, (long long)D, (long long)N, bias,
           e, tol);
    note(T == 1 ? (q16 ? 16 : 12) : T <= 8 ? 12 : 13, e);
    if (q16) { /* v1 and v2's configurations: the same bits */
        const nmlx_weight *ws[1] = {&gw};
        const nmlx_tensor *bs[1] = {bias ? pb : NULL};
        float *ys[1] = {dy};
        const q16_call c = {0, 1, ws, bs, dx, ys, &D, NMLX_ACT_SILU};
        const int differ = q16_variants_differ(&c, !(bits == 8 && D >= 16384));
        EXPECT(differ == 0, "qmatmul int16 %d-bit g%d %s D=%lld N=%lld: %d kernel variants differ",
               bits, gs, nmlx_dtype_name(sdt), (long long)D, (long long)N, differ);
    }
    if (q16) { /* the f32 mat-vec too (NMLX_CUDA_QGEMV=f32, precision "f32") */
        nmlx_cuda_set_qgemv16(0);
        gpu->ops->matmul(gpu, &gw, bias ? pb : NULL, dx, dy, T);
        nmlx_cuda_set_qgemv16(1);
        check_ok("qmatmul f32");
        double e32 = rel_err(dy, yref, (size_t)D);
        EXPECT(e32 <= 1e-5, "qmatmul f32 x %d-bit g%d %s D=%lld N=%lld: rel err %.2e", bits, gs,
               nmlx_dtype_name(sdt), (long long)D, (long long)N, e32);
        note(12, e32);
    }
    if (f16mm) { /* precision "f32": the exact form */
        nmlx_cuda_set_f32_activations(gpu, 1);
        gpu->ops->matmul(gpu, &gw, bias ? pb : NULL, dx, dy, T);
        nmlx_cuda_set_f32_activations(gpu, 0);
        check_ok("qmatmul exact");
        double ex = rel_err(dy, yref, (size_t)(T * D));
        EXPECT(ex <= 1e-4, "qmatmul exact (precision f32) %s %d-bit g%d %s T=%lld: %.2e > 1e-4",
               nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, ex);
        note(13, ex);
    }
    if (T > 1 && T <= 8) { /* batched decode: each row equals that row alone through the
                            * f32 mat-vec (the int16 one is T = 1 only), bit for bit; the
                            * f32 rows kernel (the tensor-core one, the default for 2..64
                            * rows, sums in another order: test_cuda_qrows) */
        nmlx_cuda_set_qgemv16(0);
        nmlx_cuda_set_qrows_mma(0);
        gpu->ops->matmul(gpu, &gw, bias ? pb : NULL, dx, dy, T);
        int differ = rows_alone_differ(&gw, bias ? pb : NULL, dx, dy, T, D, N);
        EXPECT(differ == 0,
               "qmatmul %s %d-bit g%d %s T=%lld D=%lld: %d rows differ from the row alone",
               nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, (long long)D, differ);
        nmlx_cuda_set_qrows_mma(-1);
        nmlx_cuda_set_qgemv16(1);
    }

    /* a row view (fused qkv part), rows starting at an odd offset: unaligned
     * for 3/5-bit codes, so the kernels' scalar load paths run */
    if (D > 5) {
        nmlx_weight v = test_qweight_rows(&w, 3, D - 5);
        nmlx_weight gv = prepare_q(&v);
        EXPECT((char *)gv.w.data == (char *)gw.w.data + (size_t)(3 * w.w.shape[1]) * 4,
               "a quantized view must share the prepared copy");
        cpu->ops->matmul(cpu, &v, NULL, x, yref, T);
        /* x at a 4-byte offset: the unaligned activation path */
        float *dx1 = gpu->ops->alloc(gpu, (size_t)(T * N + 1) * sizeof(float));
        gpu->ops->upload(gpu, dx1 + 1, x, (size_t)(T * N) * sizeof(float));
        gpu->ops->matmul(gpu, &gv, NULL, dx1 + 1, dy, T);
        check_ok("qmatmul view");
        e = rel_err(dy, yref, (size_t)(T * (D - 5)));
        EXPECT(e <= tol, "qmatmul view %s %d-bit g%d T=%lld: %.2e", nmlx_quant_mode_name(mode),
               bits, gs, (long long)T, e);
        note(14, e);
        gpu->ops->free(gpu, dx1);
    }
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x), free(bv), free(yref);
}

/* matmul_multi: q/k/v-like weights of one format in one int16 mat-vec
 * launch (and a mixed set, which falls back to one matmul each) */
static void test_qmulti(int bits, int gs, nmlx_dtype sdt, int64_t N, bool mixed) {
    const int64_t Ds[3] = {517, 64, 129};
    nmlx_weight w[3], g[3];
    float *ref[3], *dy[3];
    float *x = test_rand_floats((size_t)N, -2, 2);
    nmlx_tensor b = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {Ds[1]}, .name = "b"};
    b.data = test_keep(test_rand_floats((size_t)Ds[1], -1, 1));
    const nmlx_tensor *pb = NULL, *bs[3] = {NULL, NULL, NULL};
    EXPECT(gpu->ops->prepare_tensor(gpu, &b, &pb) == NMLX_OK, "prepare bias");
    for (int i = 0; i < 3; i++) {
        const int bi = mixed && i == 2 ? 3 : bits;
        w[i] = make_qweight(NMLX_QUANT_AFFINE, bi, gs, sdt, Ds[i], N);
        g[i] = prepare_q(&w[i]);
        ref[i] = malloc((size_t)Ds[i] * sizeof(float));
        cpu->ops->matmul(cpu, &w[i], i == 1 ? &b : NULL, x, ref[i], 1);
        dy[i] = gpu->ops->alloc(gpu, (size_t)Ds[i] * sizeof(float));
    }
    bs[1] = pb;
    const nmlx_weight *ws[3] = {&g[0], &g[1], &g[2]};
    float *dx = test_dev_floats(gpu, x, (size_t)N);
    gpu->ops->matmul_multi(gpu, 3, ws, bs, dx, dy, 1);
    check_ok("matmul_multi");
    if (!mixed) { /* one int16 mat-vec launch: v1 and v2's configurations, the same bits */
        const q16_call c = {1, 3, ws, bs, dx, dy, Ds, NMLX_ACT_SILU};
        const int differ = q16_variants_differ(&c, true);
        EXPECT(differ == 0, "matmul_multi int16 %d-bit g%d %s N=%lld: %d kernel variants differ",
               bits, gs, nmlx_dtype_name(sdt), (long long)N, differ);
    }
    for (int i = 0; i < 3; i++) {
        double e = rel_err(dy[i], ref[i], (size_t)Ds[i]);
        EXPECT(e <= 2e-4, "matmul_multi %d-bit g%d %s N=%lld mixed=%d weight %d: rel err %.2e",
               bits, gs, nmlx_dtype_name(sdt), (long long)N, mixed, i, e);
        note(17, e);
        gpu->ops->free(gpu, dy[i]);
        free(ref[i]);
    }
    gpu->ops->free(gpu, dx);
    free(x);
}

/* gate_up_act at T = 1 on affine 4/8-bit weights: the int16 mat-vec's
 * gate/up pairs (act(gate) * up written by the kernel): within 2e-3 of
 * max|ref| of the CPU op (as test_cuda_fused), and v1 and v2's
 * configurations the same bits */
static void test_qpair(int bits, int gs, nmlx_dtype sdt, int64_t I, int64_t N, bool bias,
                       nmlx_act act) {
    nmlx_weight hw[2], g[2];
    nmlx_tensor hb[2];
    const nmlx_tensor *db[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        hw[i] = make_qweight(NMLX_QUANT_AFFINE, bits, gs, sdt, I, N);
        g[i] = prepare_q(&hw[i]);
        hb[i] = (nmlx_tensor){.dtype = NMLX_DT_F32, .ndim = 1, .shape = {I}, .name = "b"};
        hb[i].data = test_keep(test_rand_floats((size_t)I, -1, 1));
        if (bias) EXPECT(gpu->ops->prepare_tensor(gpu, &hb[i], &db[i]) == NMLX_OK, "bias");
    }
    float *x = test_rand_floats((size_t)N, -2, 2), *rg = malloc((size_t)I * sizeof(float));
    float *ru = malloc((size_t)I * sizeof(float));
    cpu->ops->gate_up_act(cpu, act, &hw[0], &hw[1], bias ? &hb[0] : NULL, bias ? &hb[1] : NULL, x,
                          rg, ru, 1);
    float *dx = test_dev_floats(gpu, x, (size_t)N);
    float *dg = gpu->ops->alloc(gpu, (size_t)I * sizeof(float));
    float *du = gpu->ops->alloc(gpu, (size_t)I * sizeof(float));
    const nmlx_weight *ws[2] = {&g[0], &g[1]};
    float *ys[2] = {dg, du};
    const q16_call c = {2, 2, ws, bias ? db : NULL, dx, ys, &I, act};
    q16_run(&c);
    check_ok("gate_up_act");
    const double e = rel_err(dg, rg, (size_t)I);
    EXPECT(e <= 2e-3, "gate_up_act int16 %d-bit g%d %s I=%lld N=%lld act=%d: rel err %.2e", bits,
           gs, nmlx_dtype_name(sdt), (long long)I, (long long)N, (int)act, e);
    const int differ = q16_variants_differ(&c, true);
    EXPECT(differ == 0, "gate_up_act int16 %d-bit g%d %s I=%lld N=%lld: %d kernel variants differ",
           bits, gs, nmlx_dtype_name(sdt), (long long)I, (long long)N, differ);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dg), gpu->ops->free(gpu, du);
    free(x), free(rg), free(ru);
}

static void test_qembed(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t D) {
    const int64_t V = 97, T = 9;
    nmlx_weight w = make_qweight(mode, bits, gs, sdt, V, D);
    int32_t ids[9] = {0, 96, 5, 5, 40, -1, 97, 13, 2}; /* two out of range: zero rows */
    float *ref = malloc((size_t)(T * D) * sizeof(float));
    cpu->ops->embed(cpu, &w, ids, T, 1.7f, ref);
    nmlx_weight g = prepare_q(&w);
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * sizeof(float));
    gpu->ops->embed(gpu, &g, ids, T, 1.7f, dy);
    check_ok("qembed");
    double e = rel_err(dy, ref, (size_t)(T * D));
    EXPECT(e <= 1e-6, "qembed %s %d-bit g%d: %.2e", nmlx_quant_mode_name(mode), bits, gs, e);
    note(15, e);
    gpu->ops->free(gpu, dy);
    free(ref);
}

static void test_quant(void) {
    const int bits[6] = {2, 3, 4, 5, 6, 8}, gss[3] = {32, 64, 128};
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int si = 0; si < 3; si++) {
                const nmlx_dtype sdt = si == 0 ? NMLX_DT_F32 : si == 1 ? NMLX_DT_F16 : NMLX_DT_BF16;
                const int64_t N = (int64_t)gss[gi] * (3 + bi % 3); /* odd group counts */
                test_qmatmul(NMLX_QUANT_AFFINE, bits[bi], gss[gi], sdt, 1, 37 + 8 * bi, N, true);
                test_qmatmul(NMLX_QUANT_AFFINE, bits[bi], gss[gi], sdt, 3, 29, N, gi == 0);
                test_qmatmul(NMLX_QUANT_AFFINE, bits[bi], gss[gi], sdt, 131, 67, N, si == 1);
            }
    for (int T = 1; T <= 200; T += 66) {
        test_qmatmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, T, 45, 32 * 7, T > 1);
        test_qmatmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, T, 130, 1024, false);
    }
    /* D >= 8192: the mat-vec's 4-rows-a-warp variant */
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 1, 8195, 512, true);
    test_qmatmul(NMLX_QUANT_AFFINE, 3, 32, NMLX_DT_F16, 1, 8197, 320, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 8, 128, NMLX_DT_F32, 1, 8200, 384, false);
    test_qmatmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, 1, 8193, 256, false);
    /* batched decode widths: the mat-vec over 2..8 rows (both row-per-warp
     * variants), and 9 rows (the mat-mat just past it) */
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 8, 8195, 512, true);
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 5, 1000, 2048, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_F16, 2, 777, 3072, true);
    test_qmatmul(NMLX_QUANT_AFFINE, 3, 32, NMLX_DT_F32, 7, 99, 96, false);
    test_qmatmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, 6, 8193, 256, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 9, 513, 2048, true);
    /* real widths: Llama-style 4/8-bit g64 bf16 */
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 1, 1000, 2048, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 300, 513, 2048, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16, 1, 777, 3072, true);
    test_qmatmul(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16, 64, 256, 3072, false);
    /* the int16 mat-vec at real widths (x staged whole in shared memory:
     * 14336 needs the opt-in above 48 KB), R = 4 rows a warp from 16384 */
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 1, 4096, 14336, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_F16, 1, 16389, 1024, true);
    test_qmatmul(NMLX_QUANT_AFFINE, 4, 128, NMLX_DT_F32, 1, 20000, 4096, false);
    test_qmatmul(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16, 1, 4096, 14336, false);
    for (int gi = 0; gi < 3; gi++) {
        const int gs = 32 << gi;
        test_qmulti(4, gs,
                    gi == 0   ? NMLX_DT_F32
                    : gi == 1 ? NMLX_DT_F16
                              : NMLX_DT_BF16,
                    gs * 9, false);
        test_qmulti(8, gs, NMLX_DT_BF16, gs * 5, gi == 2);
    }
    /* gate/up pairs: odd widths, fewer pieces a row than lanes, v1's 4
     * rows a warp (>= 8192 pairs), Llama-3.1-8B's 14336 x 4096 */
    test_qpair(4, 64, NMLX_DT_BF16, 517, 1024, true, NMLX_ACT_SILU);
    test_qpair(4, 32, NMLX_DT_F16, 333, 96, false, NMLX_ACT_GELU_TANH);
    test_qpair(4, 128, NMLX_DT_F32, 8200, 640, false, NMLX_ACT_SILU);
    test_qpair(8, 32, NMLX_DT_F16, 1000, 768, true, NMLX_ACT_GELU_ERF);
    test_qpair(8, 64, NMLX_DT_BF16, 9001, 256, false, NMLX_ACT_SILU);
    test_qpair(8, 128, NMLX_DT_F32, 45, 1152, true, NMLX_ACT_SILU);
    test_qpair(4, 64, NMLX_DT_BF16, 14336, 4096, false, NMLX_ACT_SILU);
    test_qembed(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 192);
    test_qembed(NMLX_QUANT_AFFINE, 3, 32, NMLX_DT_F16, 96);
    test_qembed(NMLX_QUANT_AFFINE, 5, 128, NMLX_DT_F32, 256);
    test_qembed(NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_BF16, 64);
    test_qembed(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, 160);
}

static void test_rmsnorm(int64_t R, int64_t D, bool weight, float off) {
    float *x = test_rand_floats((size_t)(R * D), -3, 3), *wv = test_rand_floats((size_t)D, -1, 1);
    nmlx_tensor w = {.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {D}, .name = "norm"};
    w.data = encode(NMLX_DT_BF16, wv, (size_t)D);
    float *ref = malloc((size_t)(R * D) * sizeof(float));
    cpu->ops->rmsnorm(cpu, x, weight ? &w : NULL, off, 1e-6f, ref, R, D);
    const nmlx_tensor *p = NULL;
    gpu->ops->prepare_tensor(gpu, &w, &p);
    float *dx = test_dev_floats(gpu, x, (size_t)(R * D));
    gpu->ops->rmsnorm(gpu, dx, weight ? p : NULL, off, 1e-6f, dx, R, D); /* in place */
    check_ok("rmsnorm");
    double e = rel_err(dx, ref, (size_t)(R * D));
    EXPECT(e <= 1e-6, "rmsnorm R=%lld D=%lld: %.2e", (long long)R, (long long)D, e);
    note(2, e);
    gpu->ops->free(gpu, dx);
    test_keep(w.data);
    free(x), free(wv), free(ref);
}

static void test_rope(int64_t T, int64_t H, int64_t HD, int64_t rot, int64_t pos0) {
    size_t n = (size_t)(T * H * HD);
    float *x = test_rand_floats(n, -2, 2), *fr = malloc((size_t)(rot / 2) * sizeof(float));
    for (int64_t i = 0; i < rot / 2; i++)
        fr[i] = (float)pow(10000.0, -2.0 * (double)i / (double)rot);
    float *ref = malloc(n * sizeof(float));
    memcpy(ref, x, n * sizeof(float));
    cpu->ops->rope(cpu, ref, T, H, HD, rot, pos0, fr, 1.1f);
    float *dx = test_dev_floats(gpu, x, n), *dfr = test_dev_floats(gpu, fr, (size_t)(rot / 2));
    gpu->ops->rope(gpu, dx, T, H, HD, rot, pos0, dfr, 1.1f);
    check_ok("rope");
    double e = rel_err(dx, ref, n);
    EXPECT(e <= 1e-6, "rope T=%lld HD=%lld rot=%lld pos0=%lld: %.2e", (long long)T, (long long)HD,
           (long long)rot, (long long)pos0, e);
    note(3, e);
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dfr);
    free(x), free(fr), free(ref);
}

static double now_sec(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC); /* C11 (clock_gettime needs POSIX) */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* us per call of gpu attention g (after a warm-up call), `reps` calls */
static double time_attention(const nmlx_attn_args *g, int reps) {
    gpu->ops->attention(gpu, g);
    gpu->ops->sync(gpu);
    const double t = now_sec();
    for (int i = 0; i < reps; i++)
        gpu->ops->attention(gpu, g);
    gpu->ops->sync(gpu);
    return (now_sec() - t) * 1e6 / reps;
}

static double worst_mma; /* the tensor-core kernel's worst, printed at the end */
/* > 0: each cached k and v row times e^u, u uniform in [-spread, spread]
 * (the mma kernel's per-row f16 scales; its P V scale grows tile by tile) */
static float attn_spread;

/* Attention of T queries from cache index q_pos over n_kv cached keys
 * (n_kv < q_pos + T: the last queries see only the cache's keys, or none
 * with a window) against the CPU, through every CUDA kernel that applies:
 * the decode ones (split off / on), and for prefills the simple, the tiled
 * and the tensor-core (mma) kernel. The mma kernel's bound is 2e-5 of
 * max|out|, 1e-5 for the f32 kernels: its operands are f16 hi + lo pairs
 * (22 bits; products to ~3 x 2^-22, cuda_attention_mma.cu; its CPU
 * emulation measures 1e-7 to 4e-7 on these inputs), but the tensor cores'
 * f32 accumulation is not IEEE's. time: also print the tiled and mma
 * kernels' time per call. */
static void test_attention_kv(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap,
                              int64_t q_pos, int64_t n_kv, int64_t window, float softcap,
                              bool sinks, bool time) {
    size_t nq = (size_t)(T * H * HD), nk = (size_t)(KVH * cap * HD);
    float *q = test_rand_floats(nq, -1, 1), *k = test_rand_floats(nk, -1, 1),
          *v = test_rand_floats(nk, -1, 1);
    float *sk = test_rand_floats((size_t)H, -1, 2);
    if (attn_spread > 0) {
        const size_t rows = (size_t)(KVH * cap);
        float *u = test_rand_floats(2 * rows, -attn_spread, attn_spread);
        for (size_t r = 0; r < rows; r++)
            for (size_t d = 0; d < (size_t)HD; d++) {
                k[r * (size_t)HD + d] *= expf(u[r]);
                v[r * (size_t)HD + d] *= expf(u[rows + r]);
            }
        free(u);
    }
    float *ref = malloc(nq * sizeof(float)),
          *scratch =
              malloc((size_t)(cpu->n_threads * (H / KVH) * n_kv) * 4); /* backend.h's contract */
    nmlx_attn_args a = {.q = q,
                        .k = k,
                        .v = v,
                        .out = ref,
                        .T = T,
                        .H = H,
                        .KVH = KVH,
                        .HD = HD,
                        .cap = cap,
                        .q_pos = q_pos,
                        .n_kv = n_kv,
                        .scale = 1.0f / sqrtf((float)HD),
                        .window = window,
                        .softcap = softcap,
                        .sinks = sinks ? sk : NULL,
                        .scratch = scratch};
    cpu->ops->attention(cpu, &a);
    float *dq = test_dev_floats(gpu, q, nq), *dk = test_dev_floats(gpu, k, nk),
          *dv = test_dev_floats(gpu, v, nk), *ds = test_dev_floats(gpu, sk, (size_t)H);
    float *dout = gpu->ops->alloc(gpu, nq * sizeof(float));
    nmlx_attn_args g = a;
    g.q = dq, g.k = dk, g.v = dv, g.out = dout, g.sinks = sinks ? ds : NULL, g.scratch = NULL;
    /* the simple kernel (variant 0), the split decode one (1), for prefills
     * the tiled (2) and the tensor-core kernel (3, where its contract
     * allows: HD a multiple of 16), and for few rows a KV head the
     * flash-decoding kernel (4, cuda_attention_decode.cu: must run where
     * it applies) */
    const bool mma = T > 1 && HD % 16 == 0 && HD <= 256;
    const int64_t rq = T * (H / KVH);
    const bool dec = rq <= 16 && T <= 16,
               dec_taken = dec && HD % 4 == 0 && (HD <= 128 || (HD <= 256 && rq <= 8));
    /* variant 5: the flash-decoding kernel without its short-context form
     * (which variant 4 takes where it applies: T 1, <= 128 keys, HD <= 128,
     * <= 8 rows a KV head) */
    const int64_t win_lo = window > 0 && q_pos - window + 1 > 0 ? q_pos - window + 1 : 0;
    const int64_t seen = (q_pos < n_kv - 1 ? q_pos : n_kv - 1) - win_lo + 1;
    const bool short_taken = dec_taken && T == 1 && HD <= 128 && H / KVH <= 8 && seen <= 128;
    /* variant 6: the phased kernel (one query, HD <= 256, <= 8 rows a KV
     * head; variants 4 and 5 run with it off) */
    const bool ph_taken = dec_taken && T == 1 && H / KVH <= 8;
    for (int variant = 0; variant < 7; variant++) {
        if ((variant == 2 && T == 1) || (variant == 3 && !mma) || (variant >= 4 && !dec)) continue;
        nmlx_cuda_set_attn_split(variant == 1);
        nmlx_cuda_set_attn_tiled(variant == 2);
        nmlx_cuda_set_attn_mma(variant == 3);
        nmlx_cuda_set_attn_decode(variant >= 4);
        nmlx_cuda_set_attn_short(variant == 4);
        nmlx_cuda_set_attn_phased(variant == 6);
        const unsigned long long launched = nmlx_cuda_attn_mma_launches(),
                                 dec_launched = nmlx_cuda_attn_decode_launches(),
                                 short_launched = nmlx_cuda_attn_short_launches(),
                                 ph_launched = nmlx_cuda_attn_phased_launches();
        gpu->ops->attention(gpu, &g);
        check_ok("attention");
        double e = rel_err(dout, ref, nq);
        const char *name = variant == 0   ? "simple"
                           : variant == 1 ? "split"
                           : variant == 2 ? "tiled"
                           : variant == 3 ? "mma"
                           : variant == 4 ? "decode"
                           : variant == 5 ? "decode-split"
                                          : "decode-phased";
        if (variant >= 4)
            EXPECT(nmlx_cuda_attn_decode_launches() == dec_launched + (dec_taken ? 1 : 0),
                   "attention T=%lld H=%lld KVH=%lld HD=%lld: the decode kernel %s", (long long)T,
                   (long long)H, (long long)KVH, (long long)HD,
                   dec_taken ? "did not run" : "ran outside its contract");
        if (variant >= 4)
            EXPECT(nmlx_cuda_attn_phased_launches() ==
                       ph_launched + (variant == 6 && ph_taken ? 1 : 0),
                   "attention T=%lld H=%lld KVH=%lld HD=%lld: the phased kernel %s", (long long)T,
                   (long long)H, (long long)KVH, (long long)HD,
                   variant == 6 && ph_taken ? "did not run" : "ran where it should not");
        if (variant >= 4)
            EXPECT(nmlx_cuda_attn_short_launches() ==
                       short_launched + (variant == 4 && short_taken ? 1 : 0),
                   "attention T=%lld H=%lld KVH=%lld HD=%lld seen=%lld: the short-context kernel "
                   "%s",
                   (long long)T, (long long)H, (long long)KVH, (long long)HD, (long long)seen,
                   variant == 4 && short_taken ? "did not run" : "ran where it should not");
        EXPECT(e <= (variant == 3 ? 2e-5 : 1e-5),
               "attention T=%lld H=%lld KVH=%lld HD=%lld q_pos=%lld n_kv=%lld win=%lld cap=%g "
               "sinks=%d %s: %.2e",
               (long long)T, (long long)H, (long long)KVH, (long long)HD, (long long)q_pos,
               (long long)n_kv, (long long)window, softcap, sinks, name, e);
        if (variant == 3) {
            EXPECT(nmlx_cuda_attn_mma_launches() == launched + 1,
                   "attention T=%lld HD=%lld: the mma kernel did not run", (long long)T,
                   (long long)HD);
            if (e > worst_mma || e != e) worst_mma = e;
        } else
            note(4, e);
        if (time || variant == 3)
            printf("attention T=%lld H=%lld KVH=%lld HD=%lld q_pos=%lld n_kv=%lld win=%lld "
                   "%-6s rel err %.2e\n",
                   (long long)T, (long long)H, (long long)KVH, (long long)HD, (long long)q_pos,
                   (long long)n_kv, (long long)window, name, e);
    }
    nmlx_cuda_set_attn_decode(0);
    nmlx_cuda_set_attn_short(-1); /* the defaults */
    nmlx_cuda_set_attn_phased(-1);
    if (time) {
        nmlx_cuda_set_attn_split(0);
        nmlx_cuda_set_attn_mma(0);
        nmlx_cuda_set_attn_tiled(1);
        const double tt = time_attention(&g, 20);
        nmlx_cuda_set_attn_mma(1);
        const double tm = mma ? time_attention(&g, 20) : 0.0;
        check_ok("attention timing");
        printf("attention T=%lld H=%lld KVH=%lld HD=%lld: tiled %.1f us, mma %.1f us a call\n",
               (long long)T, (long long)H, (long long)KVH, (long long)HD, tt, tm);
    }
    nmlx_cuda_set_attn_split(0);
    nmlx_cuda_set_attn_tiled(0);
    nmlx_cuda_set_attn_mma(0);
    nmlx_cuda_set_attn_decode(1);
    gpu->ops->free(gpu, dq), gpu->ops->free(gpu, dk), gpu->ops->free(gpu, dv);
    gpu->ops->free(gpu, ds), gpu->ops->free(gpu, dout);
    free(q), free(k), free(v), free(sk), free(ref), free(scratch);
}

static void test_attention(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap,
                           int64_t q_pos, int64_t window, float softcap, bool sinks) {
    test_attention_kv(T, H, KVH, HD, cap, q_pos, q_pos + T, window, softcap, sinks, false);
}

/* Decode attention recorded as a step's graph (the kernels read the
 * position from device memory) at pos[0], replayed at each pos[i]: T new
 * tokens at pos[i] over n_kv = pos[i] + T keys, against the CPU there;
 * the flash-decoding kernel (decode 1) and the old step kernel (0). The
 * graph's grid must not depend on n_kv: one recording serves every length
 * up to cap. */
static void test_attention_graph(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap,
                                 int64_t window, float softcap, bool sinks, const int64_t *pos,
                                 int n) {
    size_t nq = (size_t)(T * H * HD), nk = (size_t)(KVH * cap * HD);
    float *q = test_rand_floats(nq, -1, 1), *k = test_rand_floats(nk, -1, 1),
          *v = test_rand_floats(nk, -1, 1), *sk = test_rand_floats((size_t)H, -1, 2);
    float *ref = malloc(nq * sizeof(float)),
          *scratch = malloc((size_t)(cpu->n_threads * (H / KVH) * (cap + T)) * 4);
    float *dq = test_dev_floats(gpu, q, nq), *dk = test_dev_floats(gpu, k, nk),
          *dv = test_dev_floats(gpu, v, nk), *ds = test_dev_floats(gpu, sk, (size_t)H);
    float *dout = gpu->ops->alloc(gpu, nq * sizeof(float));
    float **outs = malloc((size_t)n * sizeof *outs);
    for (int i = 0; i < n; i++)
        outs[i] = gpu->ops->alloc(gpu, nq * sizeof(float));
    /* mode 3: the phased kernel (where it applies), 2: the flash-decoding
     * kernel with its short-context form (both recorded where it may
     * apply), 1: without it, 0: the old kernels */
    for (int mode = 3; mode >= 0; mode--) {
        nmlx_cuda_set_attn_decode(mode >= 1);
        nmlx_cuda_set_attn_short(mode == 2);
        nmlx_cuda_set_attn_phased(mode == 3);
        const unsigned long long dec_launched = nmlx_cuda_attn_decode_launches(),
                                 short_launched = nmlx_cuda_attn_short_launches(),
                                 ph_launched = nmlx_cuda_attn_phased_launches();
        nmlx_attn_args g = {.q = dq,
                            .k = dk,
                            .v = dv,
                            .out = dout,
                            .T = T,
                            .H = H,
                            .KVH = KVH,
                            .HD = HD,
                            .cap = cap,
                            .q_pos = pos[0],
                            .n_kv = pos[0] + T,
                            .scale = 1.0f / sqrtf((float)HD),
                            .window = window,
                            .softcap = softcap,
                            .sinks = sinks ? ds : NULL};
        nmlx_status st = nmlx_cuda_attention_graph_test(gpu, &g, pos, n, outs);
        EXPECT(st == NMLX_OK, "attention graph: %s", nmlx_last_error());
        check_ok("attention graph");
        if (mode)
            EXPECT(
                nmlx_cuda_attn_short_launches() ==
                    short_launched +
                        (mode == 2 && T == 1 && HD % 4 == 0 && HD <= 128 && H / KVH <= 8 ? 1 : 0),
                "attention graph T=%lld H=%lld KVH=%lld HD=%lld: short-context launches %llu",
                (long long)T, (long long)H, (long long)KVH, (long long)HD,
                nmlx_cuda_attn_short_launches() - short_launched);
        if (mode)
            EXPECT(
                nmlx_cuda_attn_phased_launches() ==
                    ph_launched +
                        (mode == 3 && T == 1 && HD % 4 == 0 && HD <= 256 && H / KVH <= 8 ? 1 : 0),
                "attention graph T=%lld H=%lld KVH=%lld HD=%lld: phased launches %llu",
                (long long)T, (long long)H, (long long)KVH, (long long)HD,
                nmlx_cuda_attn_phased_launches() - ph_launched);
        if (mode)
            EXPECT(nmlx_cuda_attn_decode_launches() == dec_launched + 1,
                   "attention graph T=%lld H=%lld KVH=%lld HD=%lld: the decode kernel did not "
                   "run",
                   (long long)T, (long long)H, (long long)KVH, (long long)HD);
        double worst_e = 0;
        for (int i = 0; i < n; i++) {
            nmlx_attn_args a = {.q = q,
                                .k = k,
                                .v = v,
                                .out = ref,
                                .T = T,
                                .H = H,
                                .KVH = KVH,
                                .HD = HD,
                                .cap = cap,
                                .q_pos = pos[i],
                                .n_kv = pos[i] + T,
                                .scale = 1.0f / sqrtf((float)HD),
                                .window = window,
                                .softcap = softcap,
                                .sinks = sinks ? sk : NULL,
                                .scratch = scratch};
            cpu->ops->attention(cpu, &a);
            double e = rel_err(outs[i], ref, nq);
            EXPECT(e <= 1e-5,
                   "attention graph %s T=%lld H=%lld KVH=%lld HD=%lld recorded at %lld, "
                   "replayed at %lld, win=%lld cap=%g sinks=%d: %.2e",
                   mode == 3 ? "phased"
                   : mode    ? "decode"
                             : "old",
                   (long long)T, (long long)H, (long long)KVH, (long long)HD, (long long)pos[0],
                   (long long)pos[i], (long long)window, softcap, sinks, e);
            note(4, e);
            if (e > worst_e || e != e) worst_e = e;
        }
        printf("attention graph %-6s T=%lld H=%lld KVH=%lld HD=%lld win=%lld: %d positions, "
               "worst rel err %.2e\n",
               mode == 3 ? "phased"
               : mode    ? "decode"
                         : "old",
               (long long)T, (long long)H, (long long)KVH, (long long)HD, (long long)window, n,
               worst_e);
    }
    nmlx_cuda_set_attn_decode(1);
    nmlx_cuda_set_attn_short(-1); /* the defaults */
    nmlx_cuda_set_attn_phased(-1);
    for (int i = 0; i < n; i++)
        gpu->ops->free(gpu, outs[i]);
    gpu->ops->free(gpu, dq), gpu->ops->free(gpu, dk), gpu->ops->free(gpu, dv);
    gpu->ops->free(gpu, ds), gpu->ops->free(gpu, dout);
    free(q), free(k), free(v), free(sk), free(ref), free(scratch), free(outs);
}

/* Batched decode ops: R rows, each its own position / cache, against the
 * per-row rope calls (bit for bit) and attention calls (to rounding) on
 * the GPU, and the CPU. */
enum { ROWS_MAX_CAP = 1100 }; /* rows' caches: 1..ROWS_MAX_CAP keys (several blocks a KV head) */
static void test_rows(int64_t R, int64_t H, int64_t KVH, int64_t HD, int64_t window, bool sinks) {
    int64_t qrow = H * HD, krow = KVH * HD, rot = HD;
    size_t nq = (size_t)(R * qrow);
    float *q = test_rand_floats(nq, -1, 1), *sk = test_rand_floats((size_t)H, -1, 2);
    float *fr = malloc((size_t)(rot / 2) * sizeof(float));
    for (int64_t i = 0; i < rot / 2; i++)
        fr[i] = (float)pow(10000.0, -2.0 * (double)i / (double)rot);
    float *dq = test_dev_floats(gpu, q, nq), *dq1 = test_dev_floats(gpu, q, nq),
          *dfr = test_dev_floats(gpu, fr, (size_t)(rot / 2));
    float *ds = test_dev_floats(gpu, sk, (size_t)H);
    int64_t *pos = malloc((size_t)R * sizeof(int64_t));
    nmlx_attn_row *rows = malloc((size_t)R * sizeof *rows);
    float **hk = malloc((size_t)R * sizeof *hk), **hv = malloc((size_t)R * sizeof *hv);
    for (int64_t r = 0; r < R; r++) {
        int64_t cap = 1 + (int64_t)(test_rand_u64() % ROWS_MAX_CAP),
                n_kv = 1 + (int64_t)(test_rand_u64() % (uint64_t)cap);
        pos[r] = n_kv - 1 + (int64_t)(test_rand_u64() % 5000);
        hk[r] = test_rand_floats((size_t)(krow * cap), -1, 1);
        hv[r] = test_rand_floats((size_t)(krow * cap), -1, 1);
        rows[r] = (nmlx_attn_row){.k = test_dev_floats(gpu, hk[r], (size_t)(krow * cap)),
                                  .v = test_dev_floats(gpu, hv[r], (size_t)(krow * cap)),
                                  .cap = cap,
                                  .q_pos = n_kv - 1,
                                  .n_kv = n_kv,
                                  .window = window};
    }
    /* rope */
    gpu->ops->rope_rows(gpu, dq, R, H, HD, rot, pos, dfr, 1.0f);
    for (int64_t r = 0; r < R; r++)
        gpu->ops->rope(gpu, dq1 + r * qrow, 1, H, HD, rot, pos[r], dfr, 1.0f);
    check_ok("rope_rows");
    float *a = malloc(nq * sizeof(float)), *b = malloc(nq * sizeof(float));
    gpu->ops->download(gpu, a, dq, nq * sizeof(float));
    gpu->ops->download(gpu, b, dq1, nq * sizeof(float));
    EXPECT(!memcmp(a, b, nq * sizeof(float)), "rope_rows R=%lld differs from per-row rope",
           (long long)R);
    float *ref = malloc(nq * sizeof(float));
    memcpy(ref, q, nq * sizeof(float));
    for (int64_t r = 0; r < R; r++)
        cpu->ops->rope(cpu, ref + r * qrow, 1, H, HD, rot, pos[r], fr, 1.0f);
    double e = rel_err(dq, ref, nq);
    EXPECT(e <= 1e-6, "rope_rows R=%lld vs cpu: %.2e", (long long)R, e);
    note(3, e);
    /* attention, on the roped queries */
    float *dout = gpu->ops->alloc(gpu, nq * sizeof(float)),
          *dout1 = gpu->ops->alloc(gpu, nq * sizeof(float));
    nmlx_attn_args g = {.q = dq,
                        .out = dout,
                        .T = 1,
                        .H = H,
                        .KVH = KVH,
                        .HD = HD,
                        .scale = 1.0f / sqrtf((float)HD),
                        .sinks = sinks ? ds : NULL};
    const unsigned long long dec0 = nmlx_cuda_attn_decode_launches();
    gpu->ops->attention_rows(gpu, &g, rows, R); /* the flash-decoding rows form */
    EXPECT(nmlx_cuda_attn_decode_launches() - dec0 == (unsigned long long)((R + 31) / 32),
           "attention_rows R=%lld: %llu flash-decoding launches", (long long)R,
           nmlx_cuda_attn_decode_launches() - dec0);
    float *scratch = malloc((size_t)(cpu->n_threads * ROWS_MAX_CAP) * 4 * (size_t)(H / KVH));
    for (int64_t r = 0; r < R; r++) {
        nmlx_attn_args o = g;
        o.q = dq + r * qrow, o.out = dout1 + r * qrow, o.k = rows[r].k, o.v = rows[r].v;
        o.cap = rows[r].cap, o.q_pos = rows[r].q_pos, o.n_kv = rows[r].n_kv, o.window = window;
        gpu->ops->attention(gpu, &o);
        nmlx_attn_args c = o;
        c.q = a + r * qrow, c.out = ref + r * qrow, c.k = hk[r], c.v = hv[r],
        c.sinks = sinks ? sk : NULL;
        c.scratch = scratch;
        cpu->ops->attention(cpu, &c);
    }
    check_ok("attention_rows");
    /* per-row one-query calls may take the split kernel: equal to rounding */
    gpu->ops->download(gpu, b, dout1, nq * sizeof(float));
    e = rel_err(dout, b, nq);
    EXPECT(e <= 2e-6, "attention_rows R=%lld vs per-row attention: %.2e", (long long)R, e);
    e = rel_err(dout, ref, nq);
    EXPECT(e <= 1e-5, "attention_rows R=%lld H=%lld KVH=%lld HD=%lld win=%lld vs cpu: %.2e",
           (long long)R, (long long)H, (long long)KVH, (long long)HD, (long long)window, e);
    note(4, e);
    /* the one-block-per-(row, head) kernel (NMLX_CUDA_ATTN_DECODE=old) */
    nmlx_cuda_set_attn_decode(0);
    g.out = dout1;
    gpu->ops->attention_rows(gpu, &g, rows, R);
    nmlx_cuda_set_attn_decode(1);
    check_ok("attention_rows (old kernel)");
    e = rel_err(dout1, ref, nq);
    EXPECT(e <= 1e-5, "attention_rows (old kernel) R=%lld vs cpu: %.2e", (long long)R, e);
    note(4, e);
    for (int64_t r = 0; r < R; r++) {
        gpu->ops->free(gpu, (void *)rows[r].k), gpu->ops->free(gpu, (void *)rows[r].v);
        free(hk[r]), free(hv[r]);
    }
    gpu->ops->free(gpu, dq), gpu->ops->free(gpu, dq1), gpu->ops->free(gpu, dfr);
    gpu->ops->free(gpu, ds), gpu->ops->free(gpu, dout), gpu->ops->free(gpu, dout1);
    free(q), free(sk), free(fr), free(pos), free(rows), free(hk), free(hv), free(a), free(b);
    free(ref), free(scratch);
}

static void test_elementwise(int64_t n) {
    float *a = test_rand_floats((size_t)n, -4, 4), *b = test_rand_floats((size_t)n, -4, 4);
    float *ref = malloc((size_t)n * sizeof(float));
    float *da = test_dev_floats(gpu, a, (size_t)n), *db = test_dev_floats(gpu, b, (size_t)n);
    float *dout = gpu->ops->alloc(gpu, (size_t)n * sizeof(float));
    for (int act = 0; act < 3; act++) {
        cpu->ops->act_mul(cpu, (nmlx_act)act, a, b, ref, n);
        gpu->ops->act_mul(gpu, (nmlx_act)act, da, db, dout, n);
        double e = rel_err(dout, ref, (size_t)n);
        EXPECT(e <= 1e-6, "act_mul %d n=%lld: %.2e", act, (long long)n, e);
        note(5, e);
        memcpy(ref, a, (size_t)n * sizeof(float));
        cpu->ops->act(cpu, (nmlx_act)act, ref, n);
        gpu->ops->copy(gpu, dout, da, (size_t)n * sizeof(float));
        gpu->ops->act(gpu, (nmlx_act)act, dout, n);
        e = rel_err(dout, ref, (size_t)n);
        EXPECT(e <= 1e-6, "act %d n=%lld: %.2e", act, (long long)n, e);
        note(6, e);
    }
    cpu->ops->add(cpu, a, b, ref, n);
    gpu->ops->add(gpu, da, db, dout, n);
    note(7, rel_err(dout, ref, (size_t)n));
    EXPECT(worst[7] <= 1e-7, "add n=%lld", (long long)n);
    memcpy(ref, a, (size_t)n * sizeof(float));
    cpu->ops->scale(cpu, ref, -0.37f, n);
    gpu->ops->copy(gpu, dout, da, (size_t)n * sizeof(float));
    gpu->ops->scale(gpu, dout, -0.37f, n);
    note(8, rel_err(dout, ref, (size_t)n));
    EXPECT(worst[8] <= 1e-7, "scale n=%lld", (long long)n);
    note(10, rel_err(da, a, (size_t)n)); /* upload/download round trip */
    EXPECT(worst[10] == 0, "upload/download n=%lld", (long long)n);
    check_ok("elementwise");
    gpu->ops->free(gpu, da), gpu->ops->free(gpu, db), gpu->ops->free(gpu, dout);
    free(a), free(b), free(ref);
}

static void test_softmax(int64_t R, int64_t n) {
    float *x = test_rand_floats((size_t)(R * n), -8, 8),
          *ref = malloc((size_t)(R * n) * sizeof(float));
    memcpy(ref, x, (size_t)(R * n) * sizeof(float));
    cpu->ops->softmax(cpu, ref, R, n);
    float *dx = test_dev_floats(gpu, x, (size_t)(R * n));
    gpu->ops->softmax(gpu, dx, R, n);
    check_ok("softmax");
    double e = rel_err(dx, ref, (size_t)(R * n));
    EXPECT(e <= 1e-6, "softmax R=%lld n=%lld: %.2e", (long long)R, (long long)n, e);
    note(9, e);
    gpu->ops->free(gpu, dx);
    free(x), free(ref);
}

#include "family_ops_checks.h" /* the family ops: MoE, Gemma 3n, Llama 4 */
#include "argmax_checks.h"     /* argmax: ties, NaNs, offsets, in a graph */

int main(void) {
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    /* the scalar reference kernels (SIMD ones use polynomial exp) */
    EXPECT(nmlx_backend_cpu_create_isa(2, "portable", &cpu) == NMLX_OK, "cpu backend");
    test_seed(20261122);
    const nmlx_dtype dts[3] = {NMLX_DT_F32, NMLX_DT_F16, NMLX_DT_BF16};
    const int64_t shapes[][3] = {{1, 1, 8},     {1, 37, 33},    {1, 130, 264},  {1, 257, 1024},
                                 {3, 37, 33},   {17, 130, 264}, {64, 96, 1000}, {5, 1, 7},
                                 {8, 130, 264}, {9, 37, 33},    {2, 257, 1024}, {7, 64, 40},
                                 {65, 40, 72},  {130, 33, 264}};
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            test_matmul(dts[d], shapes[s][0], shapes[s][1], shapes[s][2], s % 2 == 0);
    for (int d = 0; d < 3; d++)
        test_embed(dts[d]);
    test_quant();
    test_rmsnorm(1, 1024, true, 0.0f);
    test_rmsnorm(7, 37, true, 1.0f);
    test_rmsnorm(33, 128, false, 0.0f);
    test_rope(1, 16, 128, 128, 4095);
    test_rope(13, 5, 80, 40, 0); /* partial rotary */
    test_rope(3, 2, 64, 64, 100000);
    test_attention(1, 16, 8, 128, 256, 200, 0, 0, false); /* decode, GQA, 4 tiles */
    test_attention(7, 6, 2, 80, 20, 3, 0, 0, false);      /* prefill after 3 tokens */
    test_attention(19, 4, 4, 64, 300, 150, 16, 0, false); /* sliding window */
    test_attention(5, 8, 1, 256, 70, 60, 0, 30.0f, true); /* MQA, softcap, sinks, HD 256 */
    test_attention(3, 2, 1, 96, 8, 0, 2, 0, true);        /* window 2, sinks */
    /* long prefills (the tiled kernel: 32 queries x 32 keys a tile): partial
     * query and key tiles, a prompt after a cached prefix, windows shorter
     * and longer than a tile, HD 64 / 80 / 128 / 256, sinks, softcap */
    test_attention(130, 8, 2, 128, 160, 0, 0, 0, false);  /* Llama-like GQA */
    test_attention(77, 4, 4, 64, 300, 101, 0, 0, false);  /* after 101 cached keys */
    test_attention(200, 6, 2, 80, 260, 33, 40, 0, true);  /* window 40, sinks */
    test_attention(64, 4, 1, 256, 70, 0, 0, 50.0f, true); /* MQA, HD 256, softcap */
    test_attention(45, 2, 1, 64, 50, 0, 7, 0, false);     /* window 7 */
    /* the tensor-core kernel (64 queries a block, 64-key tiles; 32 at HD
     * 256): every case above with HD % 16 == 0 runs it too; here more of
     * its edges: GQA groups 1 / 4 / 8, T off the tiles by one either way,
     * one partial query tile, HD 96 / 112 (register tiles sized for 128),
     * keys past the queries' tiles, queries that see no key (n_kv short of
     * q_pos + T with a window: rows, warps and whole blocks of them),
     * windows inside one key tile and across several */
    test_attention(63, 8, 8, 128, 100, 0, 0, 0, false);        /* MHA, T = tile - 1 */
    test_attention(65, 8, 2, 128, 100, 0, 0, 0, true);         /* group 4, T = tile + 1, sinks */
    test_attention(129, 16, 2, 64, 300, 70, 0, 0, false);      /* group 8, after 70 keys */
    test_attention(2, 8, 1, 128, 10, 0, 0, 0, false);          /* two queries */
    test_attention(100, 4, 2, 96, 400, 250, 0, 30.0f, true);   /* HD 96, softcap, sinks */
    test_attention(70, 4, 1, 112, 200, 5, 130, 0, false);      /* HD 112, window > T */
    test_attention(150, 4, 4, 256, 400, 100, 90, 20.0f, true); /* HD 256, window, all */
    test_attention(200, 2, 1, 80, 300, 0, 3, 0, false);        /* window 3 */
    test_attention(40, 2, 1, 16, 60, 5, 0, 0, false);          /* the fixtures' HD 16, 32; 48 */
    test_attention(70, 4, 2, 32, 100, 0, 9, 0, true);
    test_attention(66, 2, 2, 48, 100, 3, 0, 15.0f, false);
    test_attention_kv(90, 4, 2, 128, 100, 0, 20, 8, 0, false, false);     /* t >= 27 see nothing */
    test_attention_kv(200, 4, 2, 64, 300, 30, 60, 16, 0, true, false);    /* blocks see nothing */
    test_attention_kv(150, 4, 1, 128, 300, 100, 180, 0, 0, false, false); /* n_kv < q_pos + T */
    attn_spread = 3.0f; /* k and v rows from e^-3 to e^3 of each other */
    test_attention(300, 4, 2, 128, 300, 0, 0, 0, false);
    test_attention(150, 4, 1, 256, 200, 20, 64, 0, true);
    attn_spread = 0.0f;
    /* the Llama-3.1-8B layer (pp512): error and both kernels' time printed */
    test_attention_kv(512, 32, 8, 128, 512, 0, 512, 0, 0, false, true);
    test_rows(1, 4, 2, 64, 0, false);
    test_rows(5, 16, 8, 128, 0, false);  /* GQA, several key tiles */
    test_rows(37, 6, 2, 80, 16, true);   /* over ATTN_ROWS, window, sinks */
    test_rows(130, 2, 1, 32, 0, false);  /* over ROPE_ROWS */
    test_rows(32, 32, 8, 128, 0, false); /* Llama-3.1-8B heads, a full launch */
    test_rows(9, 64, 8, 64, 128, true);  /* gpt-oss: GQA 8, window, sinks */
    test_rows(3, 8, 4, 256, 0, false);   /* Gemma: HD 256 */
    /* split decode attention (T x H / KVH <= 16 rows a KV head): chunks of
     * 64 keys, a partial last chunk, windows starting mid-chunk, one key */
    test_attention(1, 32, 8, 128, 1024, 699, 0, 0, false);   /* 8B-like GQA, 11 chunks */
    test_attention(1, 16, 8, 64, 200, 0, 0, 0, false);       /* first token: one key */
    test_attention(3, 8, 2, 64, 400, 333, 100, 0, true);     /* 12 rows, window, sinks */
    test_attention(1, 8, 4, 256, 600, 517, 0, 50.0f, false); /* HD 256, softcap */
    test_attention(2, 14, 2, 80, 300, 130, 0, 0, true);      /* 14 rows, HD 80 */
    test_attention(1, 4, 4, 128, 130, 128, 64, 0, false);    /* MHA, window of 64 */
    /* the flash-decoding kernel (cuda_attention_decode.cu; every case above
     * with few rows a KV head runs it too): one query over n_kv keys from 1
     * up, GQA 1 / 4 / 8 at HD 64 / 128 / 256, windows, sinks, softcap */
    {
        const int64_t nkv[] = {1, 2, 15, 16, 17, 64, 65, 300, 1000, 4097};
        const int64_t hds[] = {64, 128, 256}, groups[] = {1, 4, 8};
        for (int hi = 0; hi < 3; hi++)
            for (int gi = 0; gi < 3; gi++)
                for (int ni = 0; ni < 10; ni++) {
                    const int64_t n = nkv[ni], G = groups[gi], HD = hds[hi];
                    const int64_t window = ni % 3 == 1 ? 64 : ni % 3 == 2 ? 1000 : 0;
                    const float softcap = (ni + gi) % 4 == 3 ? 30.0f : 0.0f;
                    test_attention_kv(1, 2 * G, 2, HD, n + 3, n - 1, n, window, softcap,
                                      (ni + hi) % 2 == 1, false);
                }
    }
    test_attention_kv(1, 32, 8, 128, 8192, 8191, 8192, 0, 0, false, false); /* 8B, 8K keys */
    test_attention(1, 64, 8, 64, 5000, 4500, 128, 0, true);  /* gpt-oss-like: group 8 */
    test_attention(1, 8, 4, 256, 3000, 2900, 1024, 0, true); /* Gemma-like HD 256 */
    test_attention(2, 32, 8, 128, 700, 600, 0, 0, false);    /* 8 rows: two queries */
    test_attention(4, 16, 4, 96, 300, 200, 50, 0, true);     /* 16 rows, HD 96 */
    test_attention(16, 2, 2, 64, 100, 10, 0, 0, false);      /* T 16, MHA */
    test_attention(1, 12, 1, 256, 100, 50, 0, 0, false);     /* 12 rows at HD 256: declined */
    /* recorded steps replayed at other lengths (the grid fixed) */
    {
        const int64_t p1[] = {0, 1, 2, 5, 16, 17, 63, 64, 200, 511, 1000, 2040};
        test_attention_graph(1, 32, 8, 128, 2048, 0, 0, false, p1, 12);
        const int64_t p2[] = {100, 3, 50, 127, 128, 129, 700};
        test_attention_graph(1, 16, 2, 64, 701, 128, 0, true, p2, 7);
        test_attention_graph(1, 8, 4, 256, 701, 0, 50.0f, true, p2, 7);
        const int64_t p3[] = {300, 0, 1, 30, 299};
        test_attention_graph(3, 8, 2, 128, 303, 16, 0, true, p3, 5);
    }
    /* short contexts on the default split: n_kv 1..300, so that one block
     * has every key (n_kv <= 16: its output written directly, no merge) or
     * a few have them (the count to nb) and most of the grid none; HD 64 /
     * 128 / 256, windows, sinks, softcap, T 3, recorded steps replayed at
     * growing then falling lengths (the counts must be back to 0 after
     * each), the rows form (rows of 1..1100 keys in one launch) */
    {
        const int64_t nkv[] = {1, 16, 17, 33, 64, 65, 100, 128, 129, 300};
        const int64_t pr[] = {0,  1,  2,   5,   15,  16,  17,  31,  32,  33,   63,
                              64, 65, 100, 127, 128, 129, 200, 300, 511, 1000, 40};
        for (int ni = 0; ni < 10; ni++) {
            const int64_t n = nkv[ni], HD = ni % 3 == 0 ? 64 : ni % 3 == 1 ? 128 : 256;
            const int64_t G = HD == 256 ? 2 : ni % 2 ? 8 : 4;
            const int64_t window = ni % 3 == 1 ? 50 : 0;
            const float softcap = ni % 4 == 3 ? 30.0f : 0.0f;
            test_attention_kv(1, 2 * G, 2, HD, n + 3, n - 1, n, window, softcap, ni % 2 == 1,
                              false);
        }
        test_attention(3, 8, 2, 128, 200, 60, 16, 0, true);
        test_attention_kv(4, 8, 2, 64, 100, 30, 20, 8, 0, false, false); /* every row sees none */
        test_attention_graph(1, 32, 8, 128, 1001, 0, 0, false, pr, 22);
        test_attention_graph(2, 16, 4, 64, 1002, 64, 0, true, pr, 22);
        test_rows(9, 32, 8, 128, 0, false);
        test_rows(9, 32, 8, 128, 0, true);
    }
    test_elementwise(1);
    test_elementwise(1001);
    test_elementwise(300007);
    test_softmax(1, 151936);
    test_softmax(9, 33);
    test_argmax_all();
    test_family_ops();
    for (int i = 0; i < N_OPS; i++)
        printf("%-12s worst rel err %.2e\n", op_names[i], worst[i]);
    printf("%-12s worst rel err %.2e (bound 2e-5)\n", "attn_mma", worst_mma);
    nmlx_backend_free(gpu);
    nmlx_backend_free(cpu);
    test_free_kept();
    return test_summary();
}
