/* Part of test_cuda_ops.c (included after its helpers: cpu, gpu, test_keep,
 * dev_of, rel_err, check_ok, encode, note): the family ops of
 * cuda_family_ops.cu against the CPU ops on random inputs, odd sizes:
 * swiglu_clipped (gate/up past the limit, out aliasing gate), gaussian_topk,
 * rms_match, mul_rows (F32/F16/BF16 weights), altup_predict and
 * altup_correct (K 2..5, unaligned stream strides, clipped coefficients,
 * BF16 coefficients), and rope_interleaved against the host function of
 * Llama 4 (the CPU backend has no such op). Limit 1e-6 of max|ref| (rows'
 * statistics in double on both sides). */
#ifndef NMLX_TEST_CUDA_FAMILY_OPS_CHECKS_H
#define NMLX_TEST_CUDA_FAMILY_OPS_CHECKS_H

#include "shared/llama4_model.h" /* nmlx_rope_interleaved */

enum { FAM_SWIGLU = 18, FAM_TOPK, FAM_MATCH, FAM_MULROWS, FAM_PREDICT, FAM_CORRECT, FAM_ROPE_IL };

static const double FAM_TOL = 1e-6;

static void check_swiglu_clipped(int64_t n, float alpha, float limit) {
    float *g = test_rand_floats((size_t)n, -12, 12), *u = test_rand_floats((size_t)n, -12, 12);
    float *ref = malloc((size_t)n * sizeof(float));
    cpu->ops->swiglu_clipped(cpu, g, u, ref, n, alpha, limit);
    float *dg = test_dev_floats(gpu, g, (size_t)n), *du = test_dev_floats(gpu, u, (size_t)n);
    gpu->ops->swiglu_clipped(gpu, dg, du, dg, n, alpha, limit); /* out aliases gate */
    check_ok("swiglu_clipped");
    double e = rel_err(dg, ref, (size_t)n);
    EXPECT(e <= FAM_TOL, "swiglu_clipped n=%lld: %.2e", (long long)n, e);
    note(FAM_SWIGLU, e);
    gpu->ops->free(gpu, dg), gpu->ops->free(gpu, du);
    free(g), free(u), free(ref);
}

static void check_gaussian_topk(int64_t R, int64_t n, float mult) {
    size_t N = (size_t)(R * n);
    float *x = test_rand_floats(N, -3, 5), *ref = malloc(N * sizeof(float));
    memcpy(ref, x, N * sizeof(float));
    cpu->ops->gaussian_topk(cpu, ref, R, n, mult);
    float *dx = test_dev_floats(gpu, x, N);
    gpu->ops->gaussian_topk(gpu, dx, R, n, mult);
    check_ok("gaussian_topk");
    double e = rel_err(dx, ref, N);
    EXPECT(e <= FAM_TOL, "gaussian_topk R=%lld n=%lld: %.2e", (long long)R, (long long)n, e);
    note(FAM_TOPK, e);
    gpu->ops->free(gpu, dx);
    free(x), free(ref);
}

static void check_rms_match(int64_t T, int64_t D, float eps) {
    size_t N = (size_t)(T * D);
    float *r = test_rand_floats(N, -3, 3), *x = test_rand_floats(N, -0.01f, 0.02f);
    float *ref = malloc(N * sizeof(float));
    memcpy(ref, x, N * sizeof(float));
    cpu->ops->rms_match(cpu, r, ref, T, D, eps);
    float *dr = test_dev_floats(gpu, r, N), *dx = test_dev_floats(gpu, x, N);
    gpu->ops->rms_match(gpu, dr, dx, T, D, eps);
    check_ok("rms_match");
    double e = rel_err(dx, ref, N);
    EXPECT(e <= FAM_TOL, "rms_match T=%lld D=%lld eps=%g: %.2e", (long long)T, (long long)D, eps,
           e);
    note(FAM_MATCH, e);
    gpu->ops->free(gpu, dr), gpu->ops->free(gpu, dx);
    free(r), free(x), free(ref);
}

/* a prepared float tensor of shape [n] or [a, b] from random values in [lo, hi) */
static nmlx_tensor fam_tensor(nmlx_dtype dt, int64_t a, int64_t b, float lo, float hi,
                              const nmlx_tensor **dev) {
    float *v = test_rand_floats((size_t)(a * (b ? b : 1)), lo, hi);
    nmlx_tensor t = {.dtype = dt, .ndim = b ? 2 : 1, .shape = {a, b}, .name = "fam"};
    t.data = test_keep(encode(dt, v, (size_t)(a * (b ? b : 1))));
    free(v);
    EXPECT(gpu->ops->prepare_tensor(gpu, &t, dev) == NMLX_OK, "prepare: %s", nmlx_last_error());
    return t;
}

static void check_mul_rows(nmlx_dtype dt, int64_t R, int64_t D) {
    size_t N = (size_t)(R * D);
    const nmlx_tensor *pw = NULL;
    nmlx_tensor w = fam_tensor(dt, D, 0, -2, 2, &pw);
    float *x = test_rand_floats(N, -3, 3), *ref = malloc(N * sizeof(float));
    memcpy(ref, x, N * sizeof(float));
    cpu->ops->mul_rows(cpu, ref, &w, R, D);
    float *dx = test_dev_floats(gpu, x, N);
    gpu->ops->mul_rows(gpu, dx, pw, R, D);
    check_ok("mul_rows");
    double e = rel_err(dx, ref, N);
    EXPECT(e <= FAM_TOL, "mul_rows %s R=%lld D=%lld: %.2e", nmlx_dtype_name(dt), (long long)R,
           (long long)D, e);
    note(FAM_MULROWS, e);
    gpu->ops->free(gpu, dx);
    free(x), free(ref);
}

/* K streams of [T, D] at `stride` floats (>= T * D: the gap is never read
 * as a stream), router [T, K]; predict and correct against the CPU. */
static void check_altup(nmlx_dtype dt, int64_t K, int64_t T, int64_t D, int64_t pad, float clip,
                        int64_t active) {
    int64_t stride = T * D + pad;
    size_t N = (size_t)(K * stride), TD = (size_t)(T * D);
    float *x = test_rand_floats(N, -2, 2), *router = test_rand_floats((size_t)(T * K), -3, 3);
    float *act = test_rand_floats(TD, -2, 2);
    float *ref = malloc(N * sizeof(float));
    const nmlx_tensor *pp = NULL, *pc = NULL;
    nmlx_tensor pred = fam_tensor(dt, K * K, K, -1, 1, &pp);
    nmlx_tensor corr = fam_tensor(dt, K, K, -1, 1, &pc);
    /* predict: out must not alias x; the gaps of out are left as they were */
    memcpy(ref, x, N * sizeof(float));
    cpu->ops->altup_predict(cpu, x, stride, router, &pred, ref, K, T, D);
    float *dx = test_dev_floats(gpu, x, N), *dr = test_dev_floats(gpu, router, (size_t)(T * K)),
          *dout = test_dev_floats(gpu, x, N);
    gpu->ops->altup_predict(gpu, dx, stride, dr, pp, dout, K, T, D);
    check_ok("altup_predict");
    double e = rel_err(dout, ref, N);
    EXPECT(e <= FAM_TOL, "altup_predict %s K=%lld T=%lld D=%lld pad=%lld: %.2e",
           nmlx_dtype_name(dt), (long long)K, (long long)T, (long long)D, (long long)pad, e);
    note(FAM_PREDICT, e);
    /* correct, in place on the predictions */
    cpu->ops->altup_correct(cpu, ref, stride, act, router, &corr, clip, active, K, T, D);
    float *da = test_dev_floats(gpu, act, TD);
    gpu->ops->altup_correct(gpu, dout, stride, da, dr, pc, clip, active, K, T, D);
    check_ok("altup_correct");
    e = rel_err(dout, ref, N);
    EXPECT(e <= FAM_TOL, "altup_correct %s K=%lld T=%lld D=%lld clip=%g active=%lld: %.2e",
           nmlx_dtype_name(dt), (long long)K, (long long)T, (long long)D, clip, (long long)active,
           e);
    note(FAM_CORRECT, e);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dr), gpu->ops->free(gpu, dout);
    gpu->ops->free(gpu, da);
    free(x), free(router), free(act), free(ref);
}

static void check_rope_interleaved(int64_t T, int64_t H, int64_t HD, int64_t pos0) {
    size_t N = (size_t)(T * H * HD);
    float *x = test_rand_floats(N, -2, 2),
          *freqs = test_rand_floats((size_t)(HD / 2), 0.0001f, 1.0f);
    float *ref = malloc(N * sizeof(float));
    memcpy(ref, x, N * sizeof(float));
    nmlx_rope_interleaved(ref, T, H, HD, pos0, freqs);
    float *dx = test_dev_floats(gpu, x, N), *df = test_dev_floats(gpu, freqs, (size_t)(HD / 2));
    gpu->ops->rope_interleaved(gpu, dx, T, H, HD, pos0, df);
    check_ok("rope_interleaved");
    double e = rel_err(dx, ref, N);
    EXPECT(e <= FAM_TOL, "rope_interleaved T=%lld H=%lld HD=%lld pos0=%lld: %.2e", (long long)T,
           (long long)H, (long long)HD, (long long)pos0, e);
    note(FAM_ROPE_IL, e);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, df);
    free(x), free(freqs), free(ref);
}

static void test_family_ops(void) {
    EXPECT(gpu->ops->swiglu_clipped && gpu->ops->gaussian_topk && gpu->ops->rms_match &&
               gpu->ops->mul_rows && gpu->ops->altup_predict && gpu->ops->altup_correct &&
               gpu->ops->rope_interleaved,
           "the CUDA backend lacks a family op");
    check_swiglu_clipped(1, 1.702f, 7.0f);
    check_swiglu_clipped(1001, 1.702f, 7.0f);
    check_swiglu_clipped(300007, 1.0f, 3.5f);
    check_gaussian_topk(1, 16384, 1.6448536f);
    check_gaussian_topk(3, 1001, 1.6448536f);
    check_gaussian_topk(5, 37, 0.5f);
    check_rms_match(1, 2048, 1e-5f);
    check_rms_match(7, 2051, 1e-5f);
    check_rms_match(3, 37, 1.0f); /* eps above the mean square: the floor applies */
    for (int d = 0; d < 3; d++) {
        const nmlx_dtype dt = d == 0 ? NMLX_DT_F32 : d == 1 ? NMLX_DT_F16 : NMLX_DT_BF16;
        check_mul_rows(dt, 1, 2048);
        check_mul_rows(dt, 5, 1001);
    }
    check_altup(NMLX_DT_F32, 4, 1, 2048, 0, 0.0f, 0);   /* Gemma 3n decode */
    check_altup(NMLX_DT_F32, 4, 7, 1001, 13, 0.5f, 2);  /* clipped, active 2, padded streams */
    check_altup(NMLX_DT_BF16, 2, 3, 300, 1, 120.0f, 1); /* BF16 coefficients */
    check_altup(NMLX_DT_F32, 5, 2, 257, 0, 0.0f, 4);    /* K 5: 25 prediction coefficients */
    check_rope_interleaved(1, 8, 128, 4095);
    check_rope_interleaved(5, 3, 66, 100000); /* 33 pairs */
    check_rope_interleaved(9, 1, 2, 0);
}

#endif
