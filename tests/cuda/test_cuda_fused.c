/* The CUDA fused ops (backend.h add_rmsnorm, rope_kv, gate_up_act) on
 * random inputs of odd sizes against (a) the CPU's fused op, which equals
 * the CPU's unfused sequence bit for bit (tests/test_fused.c), limit 1e-6
 * of max|ref| as test_cuda_ops's rmsnorm and rope (gate_up_act: 2e-3 on the
 * int16 mat-vec, whose outputs test_cuda_ops bounds at 2e-4; 1e-4 for
 * several rows, on the tensor cores; else 1e-5);
 * and (b) the CUDA unfused sequence (add + rmsnorm; rmsnorm + rope + rope +
 * row copies; matmul_multi + act_mul), which shares their
 * arithmetic: the worst difference is printed, and must stay within the
 * same limit (it is expected to be 0 or a few ulps: FMA contraction may
 * differ between the kernels). Every element is checked (outputs start as
 * NaN; cache rows start random and must change exactly where the append
 * writes). add_rmsnorm_matmul (the norm inside the int16 mat-vec or the
 * dense mat-vec) as test_norm_matmul and test_norm_rope describe. Exits 77
 * (ctest: skipped) when no GPU is usable. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cuda/cuda_backend.h"
#include "dev_floats.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "model.h"
#include "nmlx.h"
#include "qweight.h"

#include <math.h>
#include <string.h>

static nmlx_backend *cpu, *gpu;
/* add_rmsnorm, rope_kv, gate_up_act, add_rmsnorm_matmul (y), its ys */
static double worst_cpu[5], worst_gpu[5];

static void check_ok(const char *what) {
    nmlx_status st = nmlx_backend_cuda_check(gpu);
    EXPECT(st == NMLX_OK, "%s: %s", what, nmlx_last_error());
}

/* A norm weight in dt on the host (kept: the CUDA backend keys its copy
 * by host address) and its device copy. */
static const nmlx_tensor *norm_weight(nmlx_dtype dt, int64_t n, nmlx_tensor *h) {
    *h = (nmlx_tensor){.dtype = dt, .ndim = 1, .shape = {n}, .name = "w"};
    size_t es = nmlx_dtype_size(dt);
    char *p = malloc((size_t)n * es);
    for (int64_t i = 0; i < n; i++) {
        float v = test_randf(-1.5f, 1.5f);
        if (dt == NMLX_DT_BF16) {
            uint16_t b = nmlx_f32_to_bf16(v);
            memcpy(p + i * 2, &b, 2);
        } else if (dt == NMLX_DT_F16) {
            uint16_t b = nmlx_f32_to_f16(v);
            memcpy(p + i * 2, &b, 2);
        } else {
            memcpy(p + i * 4, &v, 4);
        }
    }
    h->data = test_keep(p);
    const nmlx_tensor *d = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, h, &d) == NMLX_OK, "prepare norm weight");
    return d;
}

static void test_add_rmsnorm(int64_t R, int64_t D, nmlx_dtype wdt, bool weight, float off) {
    size_t n = (size_t)(R * D);
    float *x = test_rand_floats(n, -3, 3), *d = test_rand_floats(n, -3, 3);
    nmlx_tensor hw;
    const nmlx_tensor *dw = norm_weight(wdt, D, &hw);
    float *x_ref = malloc(n * sizeof(float)), *y_ref = malloc(n * sizeof(float));
    memcpy(x_ref, x, n * sizeof(float));
    cpu->ops->add_rmsnorm(cpu, x_ref, d, weight ? &hw : NULL, off, 1e-6f, y_ref, R, D);
    float *dx = test_dev_floats(gpu, x, n), *dd = test_dev_floats(gpu, d, n),
          *dy = test_dev_nan(gpu, n);
    float *ux = test_dev_floats(gpu, x, n), *uy = test_dev_nan(gpu, n);
    gpu->ops->add_rmsnorm(gpu, dx, dd, weight ? dw : NULL, off, 1e-6f, dy, R, D);
    gpu->ops->add(gpu, ux, dd, ux, (int64_t)n); /* the unfused sequence on the GPU */
    gpu->ops->rmsnorm(gpu, ux, weight ? dw : NULL, off, 1e-6f, uy, R, D);
    check_ok("add_rmsnorm");
    float *gx = test_host_floats(gpu, dx, n), *gy = test_host_floats(gpu, dy, n),
          *hx = test_host_floats(gpu, ux, n), *hy = test_host_floats(gpu, uy, n);
    double e = fmax(test_diff_over_max(gx, x_ref, n), test_diff_over_max(gy, y_ref, n));
    double u = fmax(test_diff_over_max(gx, hx, n), test_diff_over_max(gy, hy, n));
    EXPECT(e <= 1e-6 && u <= 1e-6, "add_rmsnorm R=%lld D=%lld: vs cpu %.2e, vs cuda unfused %.2e",
           (long long)R, (long long)D, e, u);
    /* the same thread count, per-thread sum order and w + w_offset as the
     * rmsnorm kernel (the weights loaded before the block sum in the fused
     * one, after it in rmsnorm): the same bits */
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += memcmp(&gx[i], &hx[i], sizeof(float)) || memcmp(&gy[i], &hy[i], sizeof(float));
    EXPECT(differ == 0,
           "add_rmsnorm R=%lld D=%lld: %zu of %zu outputs differ from the unfused bits",
           (long long)R, (long long)D, differ, n);
    worst_cpu[0] = fmax(worst_cpu[0], e), worst_gpu[0] = fmax(worst_gpu[0], u);
    float *bufs[] = {dx, dd, dy, ux, uy};
    for (int i = 0; i < 5; i++)
        gpu->ops->free(gpu, bufs[i]);
    free(x), free(d), free(x_ref), free(y_ref), free(gx), free(gy), free(hx), free(hy);
}

typedef struct rkv_case {
    int64_t T, H, KVH, HD, rot, cap, row0, pos0;
    bool norm, rope;
    nmlx_dtype wdt;
} rkv_case;

static void test_rope_kv(const rkv_case *c) {
    size_t nq = (size_t)(c->T * c->H * c->HD), nk = (size_t)(c->T * c->KVH * c->HD);
    size_t nc = (size_t)(c->KVH * c->cap * c->HD);
    float *q = test_rand_floats(nq, -2, 2), *k = test_rand_floats(nk, -2, 2),
          *v = test_rand_floats(nk, -2, 2);
    float *kc = test_rand_floats(nc, -1, 1), *vc = test_rand_floats(nc, -1, 1);
    float *fr = malloc((size_t)(c->rot / 2 + 1) * sizeof(float));
    for (int64_t i = 0; i < c->rot / 2; i++)
        fr[i] = (float)pow(500000.0, -2.0 * (double)i / (double)c->rot);
    nmlx_tensor hq, hk;
    const nmlx_tensor *dq_w = norm_weight(c->wdt, c->HD, &hq),
                      *dk_w = norm_weight(c->wdt, c->HD, &hk);
    nmlx_rope_kv_args a = {.T = c->T,
                           .H = c->H,
                           .KVH = c->KVH,
                           .HD = c->HD,
                           .cap = c->cap,
                           .row0 = c->row0,
                           .qk_norm = c->norm,
                           .q_norm = &hq,
                           .k_norm = &hk,
                           .q_norm_offset = 1.0f,
                           .q_norm_eps = 1e-6f,
                           .k_norm_offset = 0.0f,
                           .k_norm_eps = 1e-5f,
                           .rot = c->rot,
                           .pos0 = c->pos0,
                           .freqs = c->rope ? fr : NULL,
                           .mscale = 1.1f};
    /* reference: the CPU's fused op on copies */
    float *rq = malloc(nq * sizeof(float)), *rkc = malloc(nc * sizeof(float));
    float *rvc = malloc(nc * sizeof(float)), *rk = malloc(nk * sizeof(float));
    memcpy(rq, q, nq * sizeof(float)), memcpy(rkc, kc, nc * sizeof(float));
    memcpy(rvc, vc, nc * sizeof(float)),
        memcpy(rk, k, nk * sizeof(float)); /* the CPU's k is scratch */
    nmlx_rope_kv_args ca = a;
    ca.q = rq, ca.k = rk, ca.v = v, ca.k_cache = rkc, ca.v_cache = rvc;
    cpu->ops->rope_kv(cpu, &ca);
    /* the GPU: fused, then the unfused sequence on a second set of buffers */
    float *dq = test_dev_floats(gpu, q, nq), *dk = test_dev_floats(gpu, k, nk),
          *dv = test_dev_floats(gpu, v, nk), *dkc = test_dev_floats(gpu, kc, nc);
    float *dvc = test_dev_floats(gpu, vc, nc),
          *dfr = test_dev_floats(gpu, fr, (size_t)(c->rot / 2 + 1));
    float *uq = test_dev_floats(gpu, q, nq), *uk = test_dev_floats(gpu, k, nk),
          *ukc = test_dev_floats(gpu, kc, nc), *uvc = test_dev_floats(gpu, vc, nc);
    nmlx_rope_kv_args ga = a;
    ga.q = dq, ga.k = dk, ga.v = dv, ga.k_cache = dkc, ga.v_cache = dvc;
    ga.q_norm = dq_w, ga.k_norm = dk_w, ga.freqs = c->rope ? dfr : NULL;
    gpu->ops->rope_kv(gpu, &ga);
    if (c->norm) {
        gpu->ops->rmsnorm(gpu, uq, dq_w, 1.0f, 1e-6f, uq, c->T * c->H, c->HD);
        gpu->ops->rmsnorm(gpu, uk, dk_w, 0.0f, 1e-5f, uk, c->T * c->KVH, c->HD);
    }
    if (c->rope) {
        gpu->ops->rope(gpu, uq, c->T, c->H, c->HD, c->rot, c->pos0, dfr, 1.1f);
        gpu->ops->rope(gpu, uk, c->T, c->KVH, c->HD, c->rot, c->pos0, dfr, 1.1f);
    }
    size_t row = (size_t)c->HD * sizeof(float);
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t h = 0; h < c->KVH; h++) {
            int64_t dst = (h * c->cap + c->row0 + t) * c->HD, src = (t * c->KVH + h) * c->HD;
            gpu->ops->copy(gpu, ukc + dst, uk + src, row);
            gpu->ops->copy(gpu, uvc + dst, dv + src, row);
        }
    check_ok("rope_kv");
    float *gq = test_host_floats(gpu, dq, nq), *gkc = test_host_floats(gpu, dkc, nc),
          *gvc = test_host_floats(gpu, dvc, nc);
    float *hq2 = test_host_floats(gpu, uq, nq), *hkc = test_host_floats(gpu, ukc, nc);
    float *hvc = test_host_floats(gpu, uvc, nc);
    double e = fmax(test_diff_over_max(gq, rq, nq),
                    fmax(test_diff_over_max(gkc, rkc, nc), test_diff_over_max(gvc, rvc, nc)));
    double u = fmax(test_diff_over_max(gq, hq2, nq),
                    fmax(test_diff_over_max(gkc, hkc, nc), test_diff_over_max(gvc, hvc, nc)));
    EXPECT(e <= 1e-6 && u <= 1e-6,
           "rope_kv T=%lld H=%lld KVH=%lld HD=%lld rot=%lld norm=%d rope=%d: vs cpu %.2e, vs "
           "cuda unfused %.2e",
           (long long)c->T, (long long)c->H, (long long)c->KVH, (long long)c->HD, (long long)c->rot,
           c->norm, c->rope, e, u);
    worst_cpu[1] = fmax(worst_cpu[1], e), worst_gpu[1] = fmax(worst_gpu[1], u);
    float *dbufs[] = {dq, dk, dv, dkc, dvc, dfr, uq, uk, ukc, uvc};
    for (int i = 0; i < 10; i++)
        gpu->ops->free(gpu, dbufs[i]);
    float *hbufs[] = {q, k, v, kc, vc, fr, rq, rkc, rvc, rk, gq, gkc, gvc, hq2, hkc, hvc};
    for (int i = 0; i < 16; i++)
        free(hbufs[i]);
}

/* gate_up_act on quantized gate/up weights [I, N] (int16 mat-vec pairs for
 * T = 1 and affine 4/8-bit; else the fallback ops) */
/* rope_kv_rows: R rows of R sequences (own caches, capacities, rows and
 * positions) against rope_kv a row on copies of the same buffers: bit for
 * bit (the kernels share their per-head code). */
static void test_rope_kv_rows(int64_t R, int64_t H, int64_t KVH, int64_t HD, bool norm, bool rope) {
    const int64_t rot = HD, nq = R * H * HD, nk = R * KVH * HD;
    float *q = test_rand_floats((size_t)nq, -2, 2), *k = test_rand_floats((size_t)nk, -2, 2);
    float *v = test_rand_floats((size_t)nk, -2, 2);
    float *fr = malloc((size_t)(rot / 2) * sizeof(float));
    for (int64_t i = 0; i < rot / 2; i++)
        fr[i] = (float)pow(10000.0, -2.0 * (double)i / (double)rot);
    nmlx_tensor hq, hk;
    const nmlx_tensor *dq_w = norm_weight(NMLX_DT_BF16, HD, &hq),
                      *dk_w = norm_weight(NMLX_DT_BF16, HD, &hk);
    float *dfr = test_dev_floats(gpu, fr, (size_t)(rot / 2));
    float *aq = test_dev_floats(gpu, q, (size_t)nq), *ak = test_dev_floats(gpu, k, (size_t)nk),
          *bq = test_dev_floats(gpu, q, (size_t)nq);
    float *bk = test_dev_floats(gpu, k, (size_t)nk), *dv = test_dev_floats(gpu, v, (size_t)nk);
    nmlx_kv_row_dst rows[64], one_rows[64];
    size_t ncs[64];
    for (int64_t r = 0; r < R; r++) {
        const int64_t cap = 16 + 7 * r, row0 = (r * 5) % cap;
        ncs[r] = (size_t)(KVH * cap * HD);
        float *c0 = test_rand_floats(ncs[r], -1, 1), *c1 = test_rand_floats(ncs[r], -1, 1);
        rows[r] = (nmlx_kv_row_dst){test_dev_floats(gpu, c0, ncs[r]),
                                    test_dev_floats(gpu, c1, ncs[r]), cap, row0, 40 * r + 3};
        one_rows[r] = (nmlx_kv_row_dst){test_dev_floats(gpu, c0, ncs[r]),
                                        test_dev_floats(gpu, c1, ncs[r]), cap, row0, 40 * r + 3};
        free(c0), free(c1);
    }
    nmlx_rope_kv_args a = {.q = aq,
                           .k = ak,
                           .v = dv,
                           .T = 1,
                           .H = H,
                           .KVH = KVH,
                           .HD = HD,
                           .qk_norm = norm,
                           .q_norm = dq_w,
                           .k_norm = dk_w,
                           .q_norm_offset = 1.0f,
                           .q_norm_eps = 1e-6f,
                           .k_norm_eps = 1e-5f,
                           .rot = rot,
                           .freqs = rope ? dfr : NULL,
                           .mscale = 1.0f};
    bool took = gpu->ops->rope_kv_rows(gpu, &a, rows, R);
    EXPECT(took, "rope_kv_rows R=%lld declined", (long long)R);
    for (int64_t r = 0; r < R; r++) {
        nmlx_rope_kv_args b = a;
        b.q = bq + r * H * HD, b.k = bk + r * KVH * HD, b.v = dv + r * KVH * HD;
        b.k_cache = one_rows[r].k_cache, b.v_cache = one_rows[r].v_cache;
        b.cap = one_rows[r].cap, b.row0 = one_rows[r].row0, b.pos0 = one_rows[r].pos;
        gpu->ops->rope_kv(gpu, &b);
    }
    check_ok("rope_kv_rows");
    float *gq = test_host_floats(gpu, aq, (size_t)nq), *hq2 = test_host_floats(gpu, bq, (size_t)nq);
    bool same = !memcmp(gq, hq2, (size_t)nq * sizeof(float));
    for (int64_t r = 0; r < R; r++) {
        float *x0 = test_host_floats(gpu, rows[r].k_cache, ncs[r]),
              *x1 = test_host_floats(gpu, one_rows[r].k_cache, ncs[r]);
        float *y0 = test_host_floats(gpu, rows[r].v_cache, ncs[r]),
              *y1 = test_host_floats(gpu, one_rows[r].v_cache, ncs[r]);
        same = same && !memcmp(x0, x1, ncs[r] * sizeof(float)) &&
               !memcmp(y0, y1, ncs[r] * sizeof(float));
        free(x0), free(x1), free(y0), free(y1);
        gpu->ops->free(gpu, rows[r].k_cache), gpu->ops->free(gpu, rows[r].v_cache);
        gpu->ops->free(gpu, one_rows[r].k_cache), gpu->ops->free(gpu, one_rows[r].v_cache);
    }
    EXPECT(same, "rope_kv_rows R=%lld H=%lld KVH=%lld HD=%lld norm=%d rope=%d: not rope_kv's bits",
           (long long)R, (long long)H, (long long)KVH, (long long)HD, norm, rope);
    float *dbufs[] = {dfr, aq, ak, bq, bk, dv};
    for (int i = 0; i < 6; i++)
        gpu->ops->free(gpu, dbufs[i]);
    free(q), free(k), free(v), free(fr), free(gq), free(hq2);
}

static void test_gate_up_act(int bits, int gs, nmlx_dtype sdt, int64_t I, int64_t N, int64_t T,
                             bool bias, nmlx_act act) {
    nmlx_weight wg = test_qweight(NMLX_QUANT_AFFINE, bits, gs, sdt, I, N, test_keep);
    nmlx_weight wu = test_qweight(NMLX_QUANT_AFFINE, bits, gs, sdt, I, N, test_keep);
    nmlx_weight gg = test_qweight_device(gpu, &wg), gu = test_qweight_device(gpu, &wu);
    nmlx_tensor hb[2];
    const nmlx_tensor *db[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        hb[i] = (nmlx_tensor){.dtype = NMLX_DT_F32, .ndim = 1, .shape = {I}, .name = "b"};
        hb[i].data = test_keep(test_rand_floats((size_t)I, -1, 1));
        if (bias) EXPECT(gpu->ops->prepare_tensor(gpu, &hb[i], &db[i]) == NMLX_OK, "bias");
    }
    size_t nx = (size_t)(T * N), ny = (size_t)(T * I);
    float *x = test_rand_floats(nx, -2, 2), *rg = malloc(ny * sizeof(float));
    float *ru = malloc(ny * sizeof(float));
    cpu->ops->gate_up_act(cpu, act, &wg, &wu, bias ? &hb[0] : NULL, bias ? &hb[1] : NULL, x, rg, ru,
                          T);
    float *dx = test_dev_floats(gpu, x, nx), *dg = test_dev_nan(gpu, ny),
          *du = test_dev_nan(gpu, ny);
    float *ug = test_dev_nan(gpu, ny), *uu = test_dev_nan(gpu, ny);
    gpu->ops->gate_up_act(gpu, act, &gg, &gu, db[0], db[1], dx, dg, du, T);
    const nmlx_weight *ws[2] = {&gg, &gu};
    float *ys[2] = {ug, uu};
    gpu->ops->matmul_multi(gpu, 2, ws, db, dx, ys, T);
    gpu->ops->act_mul(gpu, act, ug, uu, ug, (int64_t)ny);
    check_ok("gate_up_act");
    float *hg = test_host_floats(gpu, dg, ny), *hu = test_host_floats(gpu, ug, ny);
    double e = test_diff_over_max(hg, rg, ny), u = test_diff_over_max(hg, hu, ny);
    /* T > 1: the tensor-core rows (x as bf16 hi + lo), 1e-4 as test_cuda_ops;
     * T > 64: the cuBLAS mat-mat on f16 x and W (gemm1), 2e-3 as test_cuda_ops,
     * its join writing act(g) u from the unfused ops' values */
    double lim = T == 1 && (bits == 4 || bits == 8) ? 2e-3 : T > 64 ? 2e-3 : T > 1 ? 1e-4 : 1e-5;
    EXPECT(e <= lim && u <= 1e-6,
           "gate_up_act %d-bit g%d %s I=%lld N=%lld T=%lld bias=%d act=%d: vs cpu %.2e, vs cuda "
           "unfused %.2e",
           bits, gs, nmlx_dtype_name(sdt), (long long)I, (long long)N, (long long)T, bias, (int)act,
           e, u);
    worst_cpu[2] = fmax(worst_cpu[2], e), worst_gpu[2] = fmax(worst_gpu[2], u);
    float *dbufs[] = {dx, dg, du, ug, uu};
    for (int i = 0; i < 5; i++)
        gpu->ops->free(gpu, dbufs[i]);
    free(x), free(rg), free(ru), free(hg), free(hu);
}

/* ---- add_rmsnorm_matmul: the norm staged by the mat-vec ----
 * n weights of D columns (act < 0: q/k/v-like, one rows[i] each; act >= 0:
 * gate/up pairs of rows[0] rows) in one of the formats below. The op runs
 * where the int16 mat-vec or the dense one takes the weights (fused = true
 * expected; dense: y and the ys the unfused bits exactly) and
 * must decline, having written nothing (x, y and the ys unchanged), where
 * it does not. Run: x must equal x + d exactly (one block writes it);
 * y within 1e-6 of max|y| of the CPU's add_rmsnorm and of the CUDA
 * add_rmsnorm (expected equal: same sum order); the ys within the int16
 * mat-vec's bound of the CPU's matmul_multi / gate_up_act on the CPU's y
 * (2e-4 as test_cuda_ops, gate_up_act 2e-3 as above) and within 1e-6 of
 * the CUDA unfused sequence (add_rmsnorm, then matmul_multi or gate_up_act
 * on its y; expected equal: the same staged values). */

/* NM_BF16 .. NM_DMIX: dense weights (the f32 mat-vec staging the norm,
 * cuda_matmul.cu): x, y and every output equal the unfused sequence's bit
 * for bit. NM_DMIX: bf16 and f16 weights in one call (declined). */
enum { NM_Q4 = 0, NM_Q8, NM_Q3, NM_MXFP4, NM_BF16, NM_MIXED, NM_F16, NM_F32, NM_DMIX };

static bool nm_dense(int fmt) { return fmt == NM_BF16 || fmt >= NM_F16; }

typedef struct nm_case {
    int64_t D;
    int act; /* < 0: matmul_multi; else the nmlx_act of a gate/up pair */
    int n;
    int64_t rows[3];
    int fmt, gs;
    nmlx_dtype sdt; /* quantized scales */
    bool bias, norm_w;
    nmlx_dtype wdt; /* norm weight */
    float off;
    bool f32x;  /* precision "f32" (the op declines) */
    bool fused; /* expected */
} nm_case;

static long nm_ran, nm_declined;

/* a dense weight [R, N] of dtype dt (bf16, f16, f32; host) */
static nmlx_weight dense_weight(nmlx_dtype dt, int64_t R, int64_t N) {
    const size_t es = nmlx_dtype_size(dt);
    char *p = malloc((size_t)(R * N) * es);
    for (int64_t i = 0; i < R * N; i++) {
        const float v = test_randf(-1, 1);
        if (dt == NMLX_DT_F32) {
            memcpy(p + i * 4, &v, 4);
        } else {
            const uint16_t b = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(v) : nmlx_f32_to_f16(v);
            memcpy(p + i * 2, &b, 2);
        }
    }
    nmlx_weight w = {.w = {.dtype = dt, .ndim = 2, .shape = {R, N}, .name = "dw"},
                     .mode = NMLX_QUANT_NONE,
                     .rows = R,
                     .cols = N};
    w.w.data = test_keep(p);
    return w;
}

static nmlx_weight nm_weight(const nm_case *c, int i, int64_t R) {
    int fmt = c->fmt == NM_MIXED ? (i == 1 ? NM_Q8 : NM_Q4) : c->fmt;
    switch (fmt) {
    case NM_Q4: return test_qweight(NMLX_QUANT_AFFINE, 4, c->gs, c->sdt, R, c->D, test_keep);
    case NM_Q8: return test_qweight(NMLX_QUANT_AFFINE, 8, c->gs, c->sdt, R, c->D, test_keep);
    case NM_Q3: return test_qweight(NMLX_QUANT_AFFINE, 3, c->gs, c->sdt, R, c->D, test_keep);
    case NM_MXFP4: return test_qweight(NMLX_QUANT_MXFP4, 4, 32, c->sdt, R, c->D, test_keep);
    case NM_F16: return dense_weight(NMLX_DT_F16, R, c->D);
    case NM_F32: return dense_weight(NMLX_DT_F32, R, c->D);
    case NM_DMIX: return dense_weight(i == 1 ? NMLX_DT_F16 : NMLX_DT_BF16, R, c->D);
    default: return dense_weight(NMLX_DT_BF16, R, c->D);
    }
}

static nmlx_weight nm_device(const nmlx_weight *w) {
    if (w->mode != NMLX_QUANT_NONE) return test_qweight_device(gpu, w);
    nmlx_weight g = *w;
    const nmlx_tensor *p = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &w->w, &p) == NMLX_OK, "prepare: %s", nmlx_last_error());
    if (p) g.w = *p;
    return g;
}

static bool all_nan(const float *h, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (h[i] == h[i]) return false;
    return true;
}

static bool same_bits(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void test_norm_matmul(const nm_case *c) {
    const int64_t D = c->D;
    const int n = c->act >= 0 ? 2 : c->n;
    nmlx_weight hw[3], gw[3];
    nmlx_tensor hb[3];
    const nmlx_tensor *hbs[3] = {NULL, NULL, NULL}, *gbs[3] = {NULL, NULL, NULL};
    int64_t ny[3];
    for (int i = 0; i < n; i++) {
        ny[i] = c->act >= 0 ? c->rows[0] : c->rows[i];
        hw[i] = nm_weight(c, i, ny[i]);
        gw[i] = nm_device(&hw[i]);
        if (c->bias) {
            hb[i] = (nmlx_tensor){.dtype = NMLX_DT_F32, .ndim = 1, .shape = {ny[i]}, .name = "b"};
            hb[i].data = test_keep(test_rand_floats((size_t)ny[i], -1, 1));
            hbs[i] = &hb[i];
            EXPECT(gpu->ops->prepare_tensor(gpu, &hb[i], &gbs[i]) == NMLX_OK, "bias");
        }
    }
    nmlx_tensor hn;
    const nmlx_tensor *gn = norm_weight(c->wdt, D, &hn);
    const float eps = test_randf(1e-6f, 1e-4f);
    float *x = test_rand_floats((size_t)D, -3, 3), *d = test_rand_floats((size_t)D, -3, 3);
    /* the CPU: add_rmsnorm, then the mat-vecs on its y */
    float *rx = malloc((size_t)D * sizeof(float)), *ry = malloc((size_t)D * sizeof(float));
    float *rys[3];
    memcpy(rx, x, (size_t)D * sizeof(float));
    cpu->ops->add_rmsnorm(cpu, rx, d, c->norm_w ? &hn : NULL, c->off, eps, ry, 1, D);
    for (int i = 0; i < n; i++)
        rys[i] = malloc((size_t)ny[i] * sizeof(float));
    const nmlx_weight *hws[3] = {&hw[0], &hw[1], &hw[2]}, *gws[3] = {&gw[0], &gw[1], &gw[2]};
    if (c->act >= 0)
        cpu->ops->gate_up_act(cpu, (nmlx_act)c->act, hws[0], hws[1], hbs[0], hbs[1], ry, rys[0],
                              rys[1], 1);
    else
        cpu->ops->matmul_multi(cpu, n, hws, hbs, ry, rys, 1);
    /* the GPU: fused, and the unfused sequence on a second set of buffers */
    nmlx_cuda_set_f32_activations(gpu, c->f32x);
    float *dx = test_dev_floats(gpu, x, (size_t)D), *dd = test_dev_floats(gpu, d, (size_t)D),
          *dy = test_dev_nan(gpu, (size_t)D);
    float *ux = test_dev_floats(gpu, x, (size_t)D), *uy = test_dev_nan(gpu, (size_t)D), *dys[3],
          *uys[3];
    for (int i = 0; i < n; i++)
        dys[i] = test_dev_nan(gpu, (size_t)ny[i]), uys[i] = test_dev_nan(gpu, (size_t)ny[i]);
    const nmlx_tensor *gnw = c->norm_w ? gn : NULL;
    bool fused = gpu->ops->add_rmsnorm_matmul(gpu, dx, dd, gnw, c->off, eps, dy, D, c->act, n, gws,
                                              gbs, dys, NULL);
    gpu->ops->add_rmsnorm(gpu, ux, dd, gnw, c->off, eps, uy, 1, D);
    if (c->act >= 0)
        gpu->ops->gate_up_act(gpu, (nmlx_act)c->act, gws[0], gws[1], gbs[0], gbs[1], uy, uys[0],
                              uys[1], 1);
    else
        gpu->ops->matmul_multi(gpu, n, gws, gbs, uy, uys, 1);
    check_ok("add_rmsnorm_matmul");
    nmlx_cuda_set_f32_activations(gpu, 0);
    EXPECT(fused == c->fused, "add_rmsnorm_matmul D=%lld fmt=%d act=%d n=%d: %s, expected %s",
           (long long)D, c->fmt, c->act, n, fused ? "fused" : "declined",
           c->fused ? "fused" : "declined");
    float *gx = test_host_floats(gpu, dx, (size_t)D), *gy = test_host_floats(gpu, dy, (size_t)D),
          *hy = test_host_floats(gpu, uy, (size_t)D);
    /* gate/up: only the gate output (act(gate) * up) is defined */
    const int nout = c->act >= 0 ? 1 : n;
    if (!fused) {
        bool untouched = memcmp(gx, x, (size_t)D * sizeof(float)) == 0 && all_nan(gy, (size_t)D);
        for (int i = 0; i < n; i++) {
            float *g = test_host_floats(gpu, dys[i], (size_t)ny[i]);
            untouched = untouched && all_nan(g, (size_t)ny[i]);
            free(g);
        }
        EXPECT(untouched, "add_rmsnorm_matmul D=%lld fmt=%d: declined but wrote", (long long)D,
               c->fmt);
        nm_declined++;
    } else {
        bool exact = true;
        for (int64_t i = 0; i < D; i++)
            exact = exact && gx[i] == rx[i];
        EXPECT(exact, "add_rmsnorm_matmul D=%lld: the residual is not x + d exactly", (long long)D);
        double ey = test_diff_over_max(gy, ry, (size_t)D),
               uyd = test_diff_over_max(gy, hy, (size_t)D);
        double e = 0, u = 0;
        bool bits = same_bits(gy, hy, (size_t)D); /* dense: the unfused bits expected */
        for (int i = 0; i < nout; i++) {
            float *g = test_host_floats(gpu, dys[i], (size_t)ny[i]),
                  *h = test_host_floats(gpu, uys[i], (size_t)ny[i]);
            e = fmax(e, test_diff_over_max(g, rys[i], (size_t)ny[i]));
            u = fmax(u, test_diff_over_max(g, h, (size_t)ny[i]));
            bits = bits && same_bits(g, h, (size_t)ny[i]);
            free(g), free(h);
        }
        EXPECT(bits || !nm_dense(c->fmt),
               "add_rmsnorm_matmul D=%lld fmt=%d act=%d n=%d bias=%d: dense, y or ys not the "
               "unfused bits",
               (long long)D, c->fmt, c->act, n, c->bias);
        const double lim = c->act >= 0 ? 2e-3 : 2e-4;
        EXPECT(ey <= 1e-6 && uyd <= 1e-6 && e <= lim && u <= 1e-6,
               "add_rmsnorm_matmul D=%lld fmt=%d gs=%d act=%d n=%d bias=%d off=%g: y vs cpu "
               "%.2e, vs cuda %.2e; ys vs cpu %.2e (limit %.0e), vs cuda unfused %.2e",
               (long long)D, c->fmt, c->gs, c->act, n, c->bias, (double)c->off, ey, uyd, e, lim, u);
        worst_cpu[3] = fmax(worst_cpu[3], ey), worst_gpu[3] = fmax(worst_gpu[3], uyd);
        worst_cpu[4] = fmax(worst_cpu[4], e), worst_gpu[4] = fmax(worst_gpu[4], u);
        nm_ran++;
    }
    float *bufs[] = {dx, dd, dy, ux, uy};
    for (int i = 0; i < 5; i++)
        gpu->ops->free(gpu, bufs[i]);
    for (int i = 0; i < n; i++)
        gpu->ops->free(gpu, dys[i]), gpu->ops->free(gpu, uys[i]), free(rys[i]);
    free(x), free(d), free(rx), free(ry), free(gx), free(gy), free(hy);
}

static void test_norm_matmuls(void) {
    const nmlx_dtype BF = NMLX_DT_BF16, F16 = NMLX_DT_F16, F32 = NMLX_DT_F32;
    const int SILU = NMLX_ACT_SILU, GT = NMLX_ACT_GELU_TANH, GE = NMLX_ACT_GELU_ERF;
    const nm_case cases[] = {
        /* D, act, n, rows, fmt, gs, scales, bias, norm w, w dtype, offset, f32x, fused */
        {4096, -1, 3, {4096, 1024, 1024}, NM_Q4, 64, BF, false, true, BF, 0, false, true},
        {4096, SILU, 2, {14336}, NM_Q4, 64, BF, false, true, BF, 0, false, true}, /* 4 rows/warp */
        {2880, -1, 3, {4096, 512, 512}, NM_Q4, 64, BF, true, true, BF, 0, false, true},
        {2880, SILU, 2, {2880}, NM_Q8, 32, F16, true, true, F32, 0, false, true},
        {5120, -1, 3, {5120, 1024, 1024}, NM_Q8, 64, F16, false, true, BF, 1, false, true},
        {5120, GT, 2, {3000}, NM_Q4, 128, F32, false, true, F16, 1, false, true},
        {2048, -1, 3, {2048, 512, 512}, NM_Q4, 64, BF, false, false, BF, 0, false, true},
        {2048, GE, 2, {8192}, NM_Q8, 64, BF, false, true, BF, 0, false, true},
        {2048, -1, 1, {3001}, NM_Q4, 32, F32, true, true, BF, 0, false, true},
        {768, -1, 3, {768, 256, 129}, NM_Q4, 128, F32, false, true, F32, 0, false, true}, /* 256 t
                                                                                           */
        {64, -1, 3, {64, 32, 17}, NM_Q8, 32, BF, true, true, BF, 0, false, true}, /* 64 threads */
        {64, SILU, 2, {200}, NM_Q4, 64, F16, false, true, BF, 1, false, true},
        /* declined: formats the int16 mat-vec does not take, precision f32 */
        {2048, -1, 3, {2048, 512, 512}, NM_Q3, 32, BF, false, true, BF, 0, false, false},
        {2880, SILU, 2, {2880}, NM_MXFP4, 32, BF, false, true, BF, 0, false, false},
        {4096, -1, 3, {4096, 1024, 1024}, NM_MIXED, 64, BF, false, true, BF, 0, false, false},
        {4096, -1, 3, {4096, 1024, 1024}, NM_Q4, 64, BF, false, true, BF, 0, true, false},
        {4096, SILU, 2, {2048}, NM_Q8, 64, BF, false, true, BF, 0, true, false},
        /* dense (cuda_matmul.cu): 64, 256 and 512 norm threads, x up to 64 KB
         * in shared memory, precision f32 (dense ignores it) */
        {64, -1, 1, {64}, NM_BF16, 0, BF, true, true, BF, 0, false, true},
        {64, GT, 2, {200}, NM_F32, 0, BF, false, true, F16, 1, false, true},
        {96, -1, 3, {96, 32, 32}, NM_F16, 0, BF, false, true, F32, 1, false, true},
        {96, SILU, 2, {333}, NM_F32, 0, BF, true, false, BF, 0, false, true},
        {2048, -1, 3, {2048, 256, 256}, NM_BF16, 0, BF, false, true, BF, 0, false, true},
        {2048, GE, 2, {5632}, NM_F16, 0, BF, true, true, BF, 1, false, true},
        {4104, -1, 3, {4104, 1032, 1032}, NM_F32, 0, BF, true, true, BF, 0, false, true},
        {4104, SILU, 2, {11000}, NM_BF16, 0, BF, false, true, F32, 0, false, true},
        {4096, -1, 3, {4096, 1024, 1024}, NM_BF16, 0, BF, true, true, BF, 0, true, true},
        {4096, SILU, 2, {14336}, NM_BF16, 0, BF, false, true, BF, 0, false, true}, /* Llama 8B */
        {5120, -1, 1, {777}, NM_F16, 0, BF, true, true, F16, 1, false, true},
        {16384, -1, 1, {300}, NM_BF16, 0, BF, true, true, BF, 0, false, true},
        /* dense, declined: too wide, width not a multiple of 8, dtypes mixed */
        {16392, -1, 1, {64}, NM_BF16, 0, BF, false, true, BF, 0, false, false},
        {100, -1, 1, {50}, NM_F32, 0, BF, false, true, BF, 0, false, false},
        {2048, -1, 3, {2048, 256, 256}, NM_DMIX, 0, BF, false, true, BF, 0, false, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_norm_matmul(&cases[i]);
    /* the same launch again and again: the block counter must come back to 0 */
    for (int r = 0; r < 3; r++)
        test_norm_matmul(&cases[0]);
    const nm_case dense = {.D = 4096,
                           .act = -1,
                           .n = 3,
                           .rows = {4096, 1024, 1024},
                           .fmt = NM_F16,
                           .sdt = BF,
                           .norm_w = true,
                           .wdt = BF,
                           .fused = true};
    for (int r = 0; r < 3; r++) /* the dense kernel's counter too */
        test_norm_matmul(&dense);
    printf("add_rmsnorm_matmul: %ld cases fused, %ld declined\n", nm_ran, nm_declined);
}

/* ---- add_rmsnorm_matmul with rope_kv folded in (q/k/v of one token) ----
 * Fused: one call with rope; unfused on a second set of buffers:
 * add_rmsnorm, matmul_multi on its y, rope_kv. Both caches start as NaN.
 * Where the op runs: x, y, q (ys[0]) and both whole caches equal the
 * unfused ones bit for bit (cuda_rope_pair in both), the token's rows
 * (row0 of each KV head) written, every other row still NaN. Where it
 * declines: nothing written. want: 1 must run (dense), 0 must decline,
 * -1 either (quantized: the int16 mat-vec may not fold rope yet). */
typedef struct nr_case {
    int fmt, gs;
    nmlx_dtype sdt; /* quantized scales */
    int64_t D, H, KVH, HD, rot, cap, row0, pos0;
    float mscale;
    bool bias, qk_norm;
    int want;
} nr_case;

static long nr_ran, nr_declined;

static void test_norm_rope(const nr_case *c) {
    const int64_t D = c->D, HD = c->HD, ny[3] = {c->H * HD, c->KVH * HD, c->KVH * HD};
    const size_t nc = (size_t)(c->KVH * c->cap * HD), nq = (size_t)ny[0];
    const nm_case wc = {.D = D, .act = -1, .n = 3, .fmt = c->fmt, .gs = c->gs, .sdt = c->sdt};
    nmlx_weight hw[3], gw[3];
    nmlx_tensor hb[3];
    const nmlx_tensor *gbs[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        hw[i] = nm_weight(&wc, i, ny[i]);
        gw[i] = nm_device(&hw[i]);
        if (c->bias) {
            hb[i] = (nmlx_tensor){.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {ny[i]}, .name = "b"};
            uint16_t *b = malloc((size_t)ny[i] * 2);
            for (int64_t j = 0; j < ny[i]; j++)
                b[j] = nmlx_f32_to_bf16(test_randf(-1, 1));
            hb[i].data = test_keep(b);
            EXPECT(gpu->ops->prepare_tensor(gpu, &hb[i], &gbs[i]) == NMLX_OK, "bias");
        }
    }
    const nmlx_weight *gws[3] = {&gw[0], &gw[1], &gw[2]};
    nmlx_tensor hn;
    const nmlx_tensor *gn = norm_weight(NMLX_DT_BF16, D, &hn);
    const float eps = test_randf(1e-6f, 1e-4f), off = c->D % 3 ? 0.0f : 1.0f;
    float *x = test_rand_floats((size_t)D, -3, 3), *d = test_rand_floats((size_t)D, -3, 3);
    float *fr = malloc((size_t)(HD / 2 + 1) * sizeof(float));
    for (int64_t i = 0; i < HD / 2; i++)
        fr[i] = (float)pow(10000.0, -2.0 * (double)i / (double)HD);
    float *dfr = test_dev_floats(gpu, fr, (size_t)(HD / 2 + 1));
    /* [0] fused, [1] unfused: x, y, q, k, v, k cache, v cache */
    float *b[2][7];
    for (int s = 0; s < 2; s++) {
        b[s][0] = test_dev_floats(gpu, x, (size_t)D), b[s][1] = test_dev_nan(gpu, (size_t)D);
        for (int i = 0; i < 3; i++)
            b[s][2 + i] = test_dev_nan(gpu, (size_t)ny[i]);
        b[s][5] = test_dev_nan(gpu, nc), b[s][6] = test_dev_nan(gpu, nc);
    }
    float *dd = test_dev_floats(gpu, d, (size_t)D);
    nmlx_rope_kv_args r = {.T = 1,
                           .H = c->H,
                           .KVH = c->KVH,
                           .HD = HD,
                           .cap = c->cap,
                           .row0 = c->row0,
                           .qk_norm = c->qk_norm,
                           .q_norm_eps = 1e-6f,
                           .k_norm_eps = 1e-6f,
                           .rot = c->rot,
                           .pos0 = c->pos0,
                           .freqs = c->rot >= 2 ? dfr : NULL,
                           .mscale = c->mscale};
    nmlx_rope_kv_args ra[2];
    for (int s = 0; s < 2; s++) {
        ra[s] = r;
        ra[s].q = b[s][2], ra[s].k = b[s][3], ra[s].v = b[s][4];
        ra[s].k_cache = b[s][5], ra[s].v_cache = b[s][6];
    }
    bool fused = gpu->ops->add_rmsnorm_matmul(gpu, b[0][0], dd, gn, off, eps, b[0][1], D, -1, 3,
                                              gws, gbs, &b[0][2], &ra[0]);
    gpu->ops->add_rmsnorm(gpu, b[1][0], dd, gn, off, eps, b[1][1], 1, D);
    gpu->ops->matmul_multi(gpu, 3, gws, gbs, b[1][1], &b[1][2], 1);
    gpu->ops->rope_kv(gpu, &ra[1]);
    check_ok("add_rmsnorm_matmul rope");
    const size_t n[7] = {(size_t)D, (size_t)D, nq, (size_t)ny[1], (size_t)ny[2], nc, nc};
    float *h[2][7];
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 7; i++)
            h[s][i] = test_host_floats(gpu, b[s][i], n[i]);
    if (fused) {
        /* x, y, q, the caches (k and v's ys are unspecified) */
        const int cmp[5] = {0, 1, 2, 5, 6};
        bool bits = true;
        for (int j = 0; j < 5; j++)
            bits = bits && same_bits(h[0][cmp[j]], h[1][cmp[j]], n[cmp[j]]);
        bool rows = true; /* row0 written, every other row untouched */
        for (int64_t kh = 0; kh < c->KVH; kh++)
            for (int64_t row = 0; row < c->cap; row++)
                for (int s = 5; s <= 6; s++) {
                    const float *p = h[0][s] + (kh * c->cap + row) * HD;
                    bool nan = all_nan(p, (size_t)HD), any = false;
                    for (int64_t i = 0; i < HD; i++)
                        any = any || p[i] != p[i];
                    rows = rows && (row == c->row0 ? !any : nan);
                }
        EXPECT(c->want != 0 && bits && rows,
               "add_rmsnorm_matmul rope fmt=%d D=%lld H=%lld KVH=%lld HD=%lld rot=%lld row0=%lld "
               "pos0=%lld: %s%s%s",
               c->fmt, (long long)D, (long long)c->H, (long long)c->KVH, (long long)HD,
               (long long)c->rot, (long long)c->row0, (long long)c->pos0,
               c->want == 0 ? "ran, expected to decline; " : "",
               bits ? "" : "not the unfused bits; ",
               rows ? "" : "cache rows other than row0 written (or row0 not)");
        nr_ran++;
    } else {
        bool untouched = same_bits(h[0][0], x, (size_t)D);
        for (int i = 1; i < 7; i++)
            untouched = untouched && all_nan(h[0][i], n[i]);
        EXPECT(c->want != 1 && untouched,
               "add_rmsnorm_matmul rope fmt=%d D=%lld H=%lld HD=%lld rot=%lld qk_norm=%d: "
               "declined%s%s",
               c->fmt, (long long)D, (long long)c->H, (long long)HD, (long long)c->rot, c->qk_norm,
               c->want == 1 ? " (expected to run)" : "", untouched ? "" : " but wrote");
        nr_declined++;
    }
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 7; i++)
            gpu->ops->free(gpu, b[s][i]), free(h[s][i]);
    gpu->ops->free(gpu, dd), gpu->ops->free(gpu, dfr);
    free(x), free(d), free(fr);
}

static void test_norm_ropes(void) {
    const nmlx_dtype BF = NMLX_DT_BF16, F16 = NMLX_DT_F16;
    const nr_case cases[] = {
        /* fmt, gs, scales, D, H, KVH, HD, rot, cap, row0, pos0, mscale, bias, qk_norm, want */
        {NM_BF16, 0, BF, 256, 4, 2, 64, 64, 16, 5, 5, 1.0f, false, false, 1},
        {NM_F16, 0, BF, 1024, 8, 2, 128, 0, 40, 39, 39, 1.0f, true, false,
         1}, /* no RoPE, last row */
        {NM_F32, 0, BF, 512, 8, 2, 128, 128, 300, 257, 100000, 1.1f, true, false, 1},  /* far */
        {NM_BF16, 0, BF, 4096, 32, 8, 128, 128, 512, 300, 300, 1.0f, false, false, 1}, /* 8B */
        {NM_F16, 0, BF, 2048, 32, 8, 128, 128, 64, 0, 7, 1.25f, true, false, 1}, /* row0 != pos0 */
        {NM_F32, 0, BF, 96, 4, 2, 64, 0, 8, 2, 2, 1.1f, false, false, 1},        /* mscale unused */
        {NM_BF16, 0, BF, 5120, 32, 8, 128, 128, 1000, 999, 5000, 1.0f, true, false, 1},
        /* dense, declined: partial rotary, q/k norms */
        {NM_BF16, 0, BF, 256, 4, 2, 64, 32, 16, 3, 3, 1.0f, false, false, 0},
        {NM_BF16, 0, BF, 256, 4, 2, 64, 64, 16, 3, 3, 1.0f, false, true, 0},
        /* quantized: affine 4 and 8-bit g64 */
        {NM_Q4, 64, BF, 256, 4, 2, 64, 64, 16, 5, 5, 1.0f, false, false, -1},
        {NM_Q4, 64, BF, 1024, 8, 2, 128, 0, 40, 39, 39, 1.0f, true, false, -1},
        {NM_Q4, 64, F16, 4096, 32, 8, 128, 128, 512, 300, 300, 1.1f, false, false, -1},
        {NM_Q8, 64, BF, 512, 4, 2, 64, 64, 16, 15, 1000, 1.1f, true, false, -1},
        {NM_Q8, 64, F16, 1024, 8, 2, 128, 128, 300, 100, 100, 1.0f, false, false, -1},
        {NM_Q8, 64, BF, 4096, 32, 8, 128, 0, 64, 10, 10, 1.0f, false, false, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_norm_rope(&cases[i]);
    for (int r = 0; r < 2; r++) /* again: the block counter back at 0 */
        test_norm_rope(&cases[3]);
    printf("add_rmsnorm_matmul + rope_kv: %ld cases fused, %ld declined\n", nr_ran, nr_declined);
}

/* ---- matmul_residual, then add_rmsnorm_matmul with d NULL (NMLX_CUDA_RESID) ----
 * A producer W [D, N] (o / down-like) adds W a (+ bias) into x and keeps
 * its sums of squares; the consumer (q/k/v-like, or a gate/up pair) stages
 * rmsnorm(x) from them. x must equal the CUDA unfused x + matmul exactly
 * (each row x + y as the add gives it); y within 2e-4 of max|y| of the
 * CPU's add_rmsnorm on (x, W a) (the producer's mat-vec error: its x is
 * not the CPU's) and within 1e-6 of the CUDA rmsnorm of that x; the ys
 * within the int16 mat-vec's bound of the CPU's ops on the CPU's y (2e-4,
 * gate/up 2e-3) and within 1e-6 of the CUDA unfused ops on the CUDA y.
 * between != 0: an add of a random z into x between the two calls, so
 * the kept sums no longer describe x: the consumer must not take them (y
 * the norm of x + W a + z). Dense weights take the f32 mat-vec's form;
 * formats the int16 mat-vec does not take (MXFP4, 3-bit) decline, x
 * untouched. */
static long rs_ran, rs_declined;

static void test_resid(int fmt, int gs, nmlx_dtype sdt, int64_t N, int64_t D, int act, int n,
                       int64_t r0, bool bias, bool between, bool fused) {
    const nm_case c = {.D = N, .fmt = fmt, .gs = gs, .sdt = sdt};
    nmlx_weight hw = nm_weight(&c, 0, D), gw = nm_device(&hw);
    nmlx_tensor hb = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {D}, .name = "b"};
    const nmlx_tensor *gb = NULL;
    if (bias) {
        hb.data = test_keep(test_rand_floats((size_t)D, -1, 1));
        EXPECT(gpu->ops->prepare_tensor(gpu, &hb, &gb) == NMLX_OK, "bias");
    }
    /* the consumer: n weights of D columns */
    const nm_case cc = {.D = D, .fmt = NM_Q4, .gs = 64, .sdt = NMLX_DT_BF16};
    nmlx_weight chw[3], cgw[3];
    int64_t ny[3];
    for (int i = 0; i < n; i++) {
        ny[i] = act >= 0 ? r0 : r0 / (i + 1);
        chw[i] = nm_weight(&cc, i, ny[i]);
        cgw[i] = nm_device(&chw[i]);
    }
    nmlx_tensor hn;
    const nmlx_tensor *gn = norm_weight(NMLX_DT_BF16, D, &hn);
    const float eps = 1e-5f;
    float *x = test_rand_floats((size_t)D, -3, 3), *a = test_rand_floats((size_t)N, -2, 2);
    float *z = test_rand_floats((size_t)D, -1, 1);
    /* the CPU */
    float *ry = malloc((size_t)D * sizeof(float)), *rw = malloc((size_t)D * sizeof(float)),
          *rx = malloc((size_t)D * sizeof(float)), *rys[3];
    memcpy(rx, x, (size_t)D * sizeof(float));
    cpu->ops->matmul(cpu, &hw, bias ? &hb : NULL, a, rw, 1);
    if (between) cpu->ops->add(cpu, rx, z, rx, D);
    cpu->ops->add_rmsnorm(cpu, rx, rw, &hn, 0.0f, eps, ry, 1, D);
    const nmlx_weight *hws[3] = {&chw[0], &chw[1], &chw[2]}, *gws[3] = {&cgw[0], &cgw[1], &cgw[2]};
    for (int i = 0; i < n; i++)
        rys[i] = malloc((size_t)ny[i] * sizeof(float));
    if (act >= 0)
        cpu->ops->gate_up_act(cpu, (nmlx_act)act, hws[0], hws[1], NULL, NULL, ry, rys[0], rys[1],
                              1);
    else
        cpu->ops->matmul_multi(cpu, n, hws, NULL, ry, rys, 1);
    /* the GPU: folded, and unfused on a second set of buffers */
    float *dx = test_dev_floats(gpu, x, (size_t)D), *da = test_dev_floats(gpu, a, (size_t)N),
          *dz = test_dev_floats(gpu, z, (size_t)D), *dy = test_dev_nan(gpu, (size_t)D);
    float *ux = test_dev_floats(gpu, x, (size_t)D), *uw = test_dev_nan(gpu, (size_t)D),
          *uy = test_dev_nan(gpu, (size_t)D), *dys[3], *uys[3];
    for (int i = 0; i < n; i++)
        dys[i] = test_dev_nan(gpu, (size_t)ny[i]), uys[i] = test_dev_nan(gpu, (size_t)ny[i]);
    const long before = nmlx_cuda_resid_stats(gpu);
    const bool took = gpu->ops->matmul_residual(gpu, &gw, gb, da, dx, 1);
    check_ok("matmul_residual");
    EXPECT(took == fused, "matmul_residual fmt=%d N=%lld D=%lld: %s, expected %s", fmt,
           (long long)N, (long long)D, took ? "taken" : "declined", fused ? "taken" : "declined");
    EXPECT(nmlx_cuda_resid_stats(gpu) == before + took, "matmul_residual's count");
    float *gx = test_host_floats(gpu, dx, (size_t)D);
    if (!took) {
        EXPECT(!memcmp(gx, x, (size_t)D * sizeof(float)), "matmul_residual declined but wrote x");
        rs_declined++;
    } else {
        if (between) gpu->ops->add(gpu, dx, dz, dx, D);
        const bool ran = gpu->ops->add_rmsnorm_matmul(gpu, dx, NULL, gn, 0.0f, eps, dy, D, act, n,
                                                      gws, NULL, dys, NULL);
        gpu->ops->matmul(gpu, &gw, gb, da, uw, 1);
        gpu->ops->add(gpu, ux, uw, ux, D);
        if (between) gpu->ops->add(gpu, ux, dz, ux, D);
        gpu->ops->rmsnorm(gpu, ux, gn, 0.0f, eps, uy, 1, D);
        if (act >= 0)
            gpu->ops->gate_up_act(gpu, (nmlx_act)act, gws[0], gws[1], NULL, NULL, uy, uys[0],
                                  uys[1], 1);
        else
            gpu->ops->matmul_multi(gpu, n, gws, NULL, uy, uys, 1);
        check_ok("add_rmsnorm_matmul after matmul_residual");
        EXPECT(ran, "add_rmsnorm_matmul (d NULL) D=%lld act=%d n=%d declined", (long long)D, act,
               n);
        free(gx);
        gx = test_host_floats(gpu, dx, (size_t)D);
        float *hx = test_host_floats(gpu, ux, (size_t)D),
              *gy = test_host_floats(gpu, dy, (size_t)D),
              *hy = test_host_floats(gpu, uy, (size_t)D);
        EXPECT(same_bits(gx, hx, (size_t)D),
               "matmul_residual fmt=%d N=%lld D=%lld: x is not the unfused x + W a", fmt,
               (long long)N, (long long)D);
        const double ey = test_diff_over_max(gy, ry, (size_t)D),
                     uyd = test_diff_over_max(gy, hy, (size_t)D);
        double e = 0, u = 0;
        for (int i = 0; i < (act >= 0 ? 1 : n); i++) {
            float *g = test_host_floats(gpu, dys[i], (size_t)ny[i]),
                  *h = test_host_floats(gpu, uys[i], (size_t)ny[i]);
            e = fmax(e, test_diff_over_max(g, rys[i], (size_t)ny[i]));
            u = fmax(u, test_diff_over_max(g, h, (size_t)ny[i]));
            free(g), free(h);
        }
        const double lim = act >= 0 ? 2e-3 : 2e-4;
        EXPECT(ey <= 2e-4 && uyd <= 1e-6 && e <= lim && u <= 1e-6,
               "resid fmt=%d gs=%d N=%lld D=%lld act=%d n=%d bias=%d between=%d: y vs cpu %.2e, "
               "vs cuda %.2e; ys vs cpu %.2e (limit %.0e), vs cuda unfused %.2e",
               fmt, gs, (long long)N, (long long)D, act, n, bias, between, ey, uyd, e, lim, u);
        worst_cpu[3] = fmax(worst_cpu[3], ey), worst_gpu[3] = fmax(worst_gpu[3], uyd);
        worst_cpu[4] = fmax(worst_cpu[4], e), worst_gpu[4] = fmax(worst_gpu[4], u);
        free(hx), free(gy), free(hy);
        rs_ran++;
    }
    float *bufs[] = {dx, da, dz, dy, ux, uw, uy};
    for (int i = 0; i < 7; i++)
        gpu->ops->free(gpu, bufs[i]);
    for (int i = 0; i < n; i++)
        gpu->ops->free(gpu, dys[i]), gpu->ops->free(gpu, uys[i]), free(rys[i]);
    free(x), free(a), free(z), free(ry), free(rw), free(rx), free(gx);
}

/* On a backend made with NMLX_CUDA_RESID=1 (and the norm fold with d off) */
static void test_resids(void) {
    setenv("NMLX_CUDA_RESID", "1", 1);
    setenv("NMLX_CUDA_NORM_MATMUL", "0", 1);
    nmlx_backend *r = NULL, *keep = gpu;
    const bool ok = nmlx_backend_cuda_create(0, &r) == NMLX_OK;
    unsetenv("NMLX_CUDA_RESID");
    setenv("NMLX_CUDA_NORM_MATMUL", "1", 1);
    EXPECT(ok && r->ops->matmul_residual && r->ops->add_rmsnorm_matmul,
           "NMLX_CUDA_RESID=1: matmul_residual and add_rmsnorm_matmul in the table");
    EXPECT(!gpu->ops->matmul_residual, "matmul_residual without NMLX_CUDA_RESID");
    if (!ok || !r->ops->matmul_residual) return;
    gpu = r;
    const nmlx_dtype BF = NMLX_DT_BF16, F16 = NMLX_DT_F16, F32 = NMLX_DT_F32;
    /* fmt, gs, scales, N, D, act, n, consumer rows, bias, between, taken */
    test_resid(NM_Q4, 64, BF, 4096, 4096, -1, 3, 4096, false, false, true); /* 8B o -> q/k/v */
    test_resid(NM_Q4, 64, BF, 14336, 4096, NMLX_ACT_SILU, 2, 14336, false, false, true); /* down */
    test_resid(NM_Q4, 64, BF, 2048, 2048, -1, 3, 2048, false, false, true); /* 1B o (v1) */
    test_resid(NM_Q8, 32, F16, 2880, 2880, NMLX_ACT_GELU_TANH, 2, 3000, true, false, true);
    test_resid(NM_Q4, 128, F32, 768, 5120, -1, 1, 777, true, false, true);
    test_resid(NM_Q8, 64, BF, 1024, 64, -1, 3, 64, false, false, true);     /* 64 norm threads */
    test_resid(NM_Q4, 64, BF, 4096, 4096, -1, 3, 4096, false, true, true);  /* stale sums */
    test_resid(NM_Q4, 64, BF, 4096, 4096, -1, 3, 4096, false, false, true); /* counter reset */
    test_resid(NM_BF16, 0, BF, 2048, 2048, -1, 3, 2048, true, false, true); /* dense (1B o) */
    test_resid(NM_F16, 0, BF, 8192, 2048, NMLX_ACT_SILU, 2, 8192, false, false, true);
    /* declined: formats the int16 mat-vec does not take */
    test_resid(NM_MXFP4, 32, BF, 2880, 2880, -1, 3, 2880, false, false, false);
    test_resid(NM_Q3, 32, BF, 2048, 2048, -1, 3, 2048, false, false, false);
    printf("matmul_residual + add_rmsnorm_matmul (d NULL): %ld cases run, %ld declined\n", rs_ran,
           rs_declined);
    gpu = keep;
    nmlx_backend_free(r);
}

/* NMLX_FUSED=0 leaves the fused ops out, add_rmsnorm_matmul included;
 * NMLX_CUDA_NORM_MATMUL=0 that one alone */
static void test_fused_env(void) {
    setenv("NMLX_FUSED", "0", 1);
    nmlx_backend *b = NULL;
    bool ok = nmlx_backend_cuda_create(0, &b) == NMLX_OK;
    unsetenv("NMLX_FUSED");
    EXPECT(ok, "cuda backend with NMLX_FUSED=0: %s", nmlx_last_error());
    if (!ok) return;
    EXPECT(!b->ops->add_rmsnorm && !b->ops->gate_up_act && !b->ops->add_rmsnorm_matmul,
           "NMLX_FUSED=0 left a fused op in the table");
    nmlx_backend_free(b);
    setenv("NMLX_CUDA_NORM_MATMUL", "0", 1); /* this op alone */
    b = NULL;
    ok = nmlx_backend_cuda_create(0, &b) == NMLX_OK;
    setenv("NMLX_CUDA_NORM_MATMUL", "1", 1);
    EXPECT(ok, "cuda backend with NMLX_CUDA_NORM_MATMUL=0: %s", nmlx_last_error());
    if (!ok) return;
    EXPECT(b->ops->add_rmsnorm && b->ops->gate_up_act && !b->ops->add_rmsnorm_matmul,
           "NMLX_CUDA_NORM_MATMUL=0: add_rmsnorm_matmul %s, the other fused ops %s",
           b->ops->add_rmsnorm_matmul ? "kept" : "dropped",
           b->ops->add_rmsnorm && b->ops->gate_up_act ? "kept" : "dropped");
    nmlx_backend_free(b);
}

/* ---- recorded decode steps (backend.h step_graph; NMLX_CUDA_GRAPH=0 turns them off) ----
 * The same greedy decode on the GPU with and without graphs (the ids of the
 * run without fed to both): the logits of every step within 1e-6 of their
 * range (the recorded step's kernels read the same positions from device
 * memory: expected equal), and where the model's steps repeat, the graph
 * replayed for all but a few steps (the first records; a cache growth at
 * 256 positions records again). */

enum { G_STEPS = 270, G_MAXV = 1 << 14 };

/* the last graph_run's add_rmsnorm_matmul calls: fused (roped of them with rope_kv), declined */
static long run_norm_fused, run_norm_roped, run_norm_declined;

static bool graph_run(const char *dir, bool graph, int32_t *fed, float *out, int64_t *V,
                      long *replays) {
    setenv("NMLX_CUDA_GRAPH", graph ? "1" : "0", 1);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.device = "cuda";
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    bool ok = nmlx_model_load(dir, &mp, &m) == NMLX_OK;
    unsetenv("NMLX_CUDA_GRAPH");
    EXPECT(ok, "%s: load: %s", dir, nmlx_last_error());
    if (!ok) return false;
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = 600;
    ok = nmlx_session_create(m, &sp, &s) == NMLX_OK;
    *V = nmlx_model_vocab_size(m);
    int32_t prompt[5] = {3, 1, 4, 1, 5};
    ok = ok && *V <= G_MAXV && nmlx_session_eval(s, prompt, 5, 0) == NMLX_OK;
    for (int step = 0; ok && step < G_STEPS; step++) {
        const float *l = nmlx_session_logits(s);
        if (!graph) { /* the run without graphs picks the ids */
            int32_t next = 0;
            for (int64_t i = 1; i < *V; i++)
                if (l[i] > l[next]) next = (int32_t)i;
            fed[step] = next;
        }
        ok = nmlx_session_eval(s, &fed[step], 1, 0) == NMLX_OK;
        if (ok)
            memcpy(out + (size_t)step * (size_t)*V, nmlx_session_logits(s),
                   (size_t)*V * sizeof(float));
    }
    EXPECT(ok, "%s: decode: %s", dir, nmlx_last_error());
    long launches = 0;
    nmlx_backend_cuda_graph_stats(m->be, replays, &launches);
    nmlx_cuda_norm_matmul_stats(m->be, &run_norm_fused, &run_norm_roped, &run_norm_declined);
    nmlx_session_free(s);
    nmlx_model_free(m);
    return ok;
}

/* worst |a - b| over each step's logit range (a NaN difference: infinity) */
static double steps_diff(const float *a, const float *b, int64_t V) {
    double worst = 0;
    for (int st = 0; st < G_STEPS; st++) {
        const float *x = a + (size_t)st * (size_t)V, *y = b + (size_t)st * (size_t)V;
        double lo = INFINITY, hi = -INFINITY, d = 0;
        for (int64_t i = 0; i < V; i++) {
            lo = fmin(lo, x[i]), hi = fmax(hi, x[i]);
            double e = fabs((double)x[i] - y[i]);
            d = e == e && e > d ? e : (e == e ? d : INFINITY);
        }
        worst = fmax(worst, d / fmax(hi - lo, 1e-30));
    }
    return worst;
}

static void test_graph(const char *dir, bool repeats) {
    size_t n = (size_t)G_STEPS * G_MAXV;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    int32_t fed[G_STEPS];
    int64_t Va = 0, Vb = 0;
    long ra = 0, rb = 0;
    if (graph_run(dir, false, fed, a, &Va, &ra) && graph_run(dir, true, fed, b, &Vb, &rb)) {
        double worst = steps_diff(a, b, Va);
        EXPECT(worst <= 1e-6, "%s: graph vs no graph: logits differ by %.2e of their range", dir,
               worst);
        EXPECT(repeats ? rb >= G_STEPS - 4 : rb == 0, "%s: %ld of %d steps replayed (%s)", dir, rb,
               G_STEPS, repeats ? "all but a few expected" : "none expected");
        printf("%-36s graph replays %ld of %d steps, logits within %.2e\n", dir, rb, G_STEPS,
               worst);
    }
    free(a), free(b);
}

/* The model path of add_rmsnorm_matmul: the same greedy decode (graphs on)
 * with the op off (NMLX_CUDA_NORM_MATMUL=0: add_rmsnorm + the mat-vecs; its
 * ids fed to both) and on: logits within 1e-6 of their range (expected
 * equal: the fused kernel stages the values add_rmsnorm writes). The op
 * must have run; all_fused: every call, q/k/v with rope_kv folded in
 * (dense models without q/k norms: recorded steps read the positions from
 * device memory; and the gate/up pairs). */
static void test_norm_model(const char *dir, bool all_fused) {
    size_t n = (size_t)G_STEPS * G_MAXV;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    int32_t fed[G_STEPS];
    int64_t Va = 0, Vb = 0;
    long ra = 0, rb = 0;
    setenv("NMLX_CUDA_NORM_MATMUL", "0", 1);
    bool ok = graph_run(dir, false, fed, a, &Va, &ra); /* picks the ids */
    setenv("NMLX_CUDA_NORM_MATMUL", "1", 1);
    if (ok && graph_run(dir, true, fed, b, &Vb, &rb)) {
        double worst = steps_diff(a, b, Va);
        EXPECT(worst <= 1e-6, "%s: add_rmsnorm_matmul on vs off: logits differ by %.2e", dir,
               worst);
        EXPECT(run_norm_fused > 0 && (!all_fused || (run_norm_declined == 0 && run_norm_roped > 0)),
               "%s: add_rmsnorm_matmul fused %ld (%ld with rope_kv), declined %ld", dir,
               run_norm_fused, run_norm_roped, run_norm_declined);
        printf("%-36s add_rmsnorm_matmul on vs off: logits within %.2e (%ld fused, %ld with "
               "rope_kv, %ld declined)\n",
               dir, worst, run_norm_fused, run_norm_roped, run_norm_declined);
    }
    free(a), free(b);
}

int main(void) {
    /* add_rmsnorm_matmul: on for this test unless asked off */
    setenv("NMLX_CUDA_NORM_MATMUL", "1", 0);
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    EXPECT(nmlx_backend_cpu_create_isa(2, "portable", &cpu) == NMLX_OK, "cpu backend");
    bool has = gpu->ops->add_rmsnorm && gpu->ops->rope_kv && gpu->ops->gate_up_act;
    EXPECT(has, "cuda backend has the fused ops (NMLX_FUSED=0 unset)");
    if (!has) return test_summary();
    test_seed(20261205);
    test_add_rmsnorm(1, 4096, NMLX_DT_BF16, true, 0.0f); /* 8B decode: 512 threads */
    test_add_rmsnorm(1, 2051, NMLX_DT_F16, true, 1.0f);
    test_add_rmsnorm(7, 37, NMLX_DT_F32, true, 0.0f); /* 64 threads, partial warp */
    test_add_rmsnorm(33, 300, NMLX_DT_BF16, false, 0.0f);
    test_add_rmsnorm(2, 8192, NMLX_DT_BF16, true, 0.0f); /* 16 inputs a thread in registers */
    test_add_rmsnorm(3, 9000, NMLX_DT_F32, true, 0.0f);  /* wider: the two-pass kernel */
    const rkv_case cases[] = {
        {1, 32, 8, 128, 128, 512, 300, 300, false, true, NMLX_DT_BF16}, /* Llama 8B decode */
        {1, 16, 8, 128, 128, 256, 17, 17, true, true, NMLX_DT_BF16},    /* Qwen3 decode */
        {1, 8, 4, 256, 256, 300, 299, 299, true, true, NMLX_DT_F32},    /* HD 256, last row */
        {9, 6, 2, 80, 40, 40, 5, 100000, true, true, NMLX_DT_F16},      /* partial rotary */
        {5, 3, 3, 33, 32, 9, 0, 0, true, false, NMLX_DT_BF16},          /* NoPE, odd HD */
        {130, 4, 1, 64, 64, 200, 3, 3, false, false, NMLX_DT_BF16},     /* plain append */
        {64, 14, 2, 64, 64, 600, 500, 500, true, true, NMLX_DT_BF16},   /* prefill chunk */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_rope_kv(&cases[i]);
    EXPECT(gpu->ops->rope_kv_rows != NULL, "cuda backend has rope_kv_rows");
    if (gpu->ops->rope_kv_rows) {
        test_rope_kv_rows(8, 32, 8, 128, false, true); /* Llama 8B, 8 sessions */
        test_rope_kv_rows(3, 16, 8, 128, true, true);  /* Qwen3: q/k norms */
        test_rope_kv_rows(64, 8, 1, 64, true, false);  /* most rows, NoPE */
        test_rope_kv_rows(5, 4, 2, 256, false, true);  /* HD 256 */
        nmlx_rope_kv_args none = {.T = 1, .H = 1, .KVH = 1, .HD = 64};
        EXPECT(!gpu->ops->rope_kv_rows(gpu, &none, NULL, 65), "rope_kv_rows takes 65 rows");
    }
    test_gate_up_act(4, 64, NMLX_DT_BF16, 517, 1024, 1, true, NMLX_ACT_SILU);  /* 2 rows a warp */
    test_gate_up_act(4, 128, NMLX_DT_F32, 8200, 512, 1, false, NMLX_ACT_SILU); /* 4 rows */
    test_gate_up_act(8, 32, NMLX_DT_F16, 1000, 768, 1, true, NMLX_ACT_GELU_TANH);
    test_gate_up_act(8, 64, NMLX_DT_BF16, 9001, 256, 1, false, NMLX_ACT_GELU_ERF);
    test_gate_up_act(3, 32, NMLX_DT_BF16, 333, 512, 1, true, NMLX_ACT_SILU);  /* fallback */
    test_gate_up_act(4, 64, NMLX_DT_BF16, 257, 512, 3, false, NMLX_ACT_SILU); /* T > 1 */
    /* prefill (T > 64): gemm1's GEMMs, with act(g) u in its join
     * (nmlx_cuda_set_qmm_act) and without; several row chunks (I over the
     * 32M-element chunk at N = 4096), odd shapes, every act */
    for (int on = 1; on >= 0; on--) {
        nmlx_cuda_set_qmm_act(on);
        const unsigned long long before = nmlx_cuda_qmm_act_calls();
        test_gate_up_act(4, 64, NMLX_DT_BF16, 9000, 4096, 65, true, NMLX_ACT_SILU);
        test_gate_up_act(8, 32, NMLX_DT_F16, 1000, 768, 130, false, NMLX_ACT_GELU_TANH);
        test_gate_up_act(4, 128, NMLX_DT_F32, 333, 512, 97, true, NMLX_ACT_GELU_ERF);
        test_gate_up_act(3, 32, NMLX_DT_BF16, 200, 256, 70, true, NMLX_ACT_SILU);
        test_gate_up_act(6, 64, NMLX_DT_BF16, 129, 640, 300, false, NMLX_ACT_SILU);
        EXPECT(nmlx_cuda_qmm_act_calls() - before == (on ? 5u : 0u),
               "gate_up_act prefill through the gemm join (on=%d): %llu calls", on,
               nmlx_cuda_qmm_act_calls() - before);
    }
    nmlx_cuda_set_qmm_act(-1);
    const char *nm = getenv("NMLX_CUDA_NORM_MATMUL");
    if (nm && !strcmp(nm, "0")) {
        printf("add_rmsnorm_matmul: off (NMLX_CUDA_NORM_MATMUL=0), not tested\n");
    } else {
        EXPECT(gpu->ops->add_rmsnorm_matmul != NULL, "cuda backend has add_rmsnorm_matmul");
        if (gpu->ops->add_rmsnorm_matmul) test_norm_matmuls(), test_norm_ropes();
    }
    test_resids();
    test_fused_env();
    test_graph("tests/fixtures/llama3_tied", true);
    test_graph("tests/fixtures/qwen3", true);                 /* q/k norms in rope_kv */
    test_graph("tests/fixtures/quant_llama_q4g64_f16", true); /* quantized, gate_up pairs */
    test_graph("tests/fixtures/phi3_longrope", true);         /* its table switches once */
    test_graph("tests/fixtures/mistral_window", false);       /* rotating cache: no replay */
    test_norm_model("tests/fixtures/quant_llama_q4g64_f16", false);
    test_norm_model("tests/fixtures/quant_qwen3_q8g64_bf16", false); /* q/k norms, 8-bit */
    test_norm_model("tests/fixtures/llama3_tied", true);             /* dense f32, rope folded */
    test_norm_model("tests/fixtures/qwen2", true);                   /* dense, q/k/v biases */
    printf("add_rmsnorm  worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[0],
           worst_gpu[0]);
    printf("rope_kv      worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[1],
           worst_gpu[1]);
    printf("gate_up_act  worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[2],
           worst_gpu[2]);
    printf("add_rmsnorm_matmul y   worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[3],
           worst_gpu[3]);
    printf("add_rmsnorm_matmul ys  worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[4],
           worst_gpu[4]);
    nmlx_backend_free(gpu);
    nmlx_backend_free(cpu);
    test_free_kept();
    return test_summary();
}
