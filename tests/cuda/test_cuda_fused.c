/* The CUDA fused ops (backend.h add_rmsnorm, rope_kv, gate_up_act) on
 * random inputs of odd sizes against (a) the CPU's fused op, which equals
 * the CPU's unfused sequence bit for bit (tests/test_fused.c), limit 1e-6
 * of max|ref| as test_cuda_ops's rmsnorm and rope (gate_up_act: 2e-3 on the
 * int16 mat-vec, whose outputs test_cuda_ops bounds at 2e-4, else 1e-5);
 * and (b) the CUDA unfused sequence (add + rmsnorm; rmsnorm + rope + rope +
 * row copies; matmul_multi + act_mul), which shares their
 * arithmetic: the worst difference is printed, and must stay within the
 * same limit (it is expected to be 0 or a few ulps: FMA contraction may
 * differ between the kernels). Every element is checked (outputs start as
 * NaN; cache rows start random and must change exactly where the append
 * writes). Exits 77 (ctest: skipped) when no GPU is usable. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cuda/cuda_backend.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "model.h"
#include "nmlx.h"
#include "qweight.h"

#include <math.h>
#include <string.h>

static nmlx_backend *cpu, *gpu;
static double worst_cpu[3], worst_gpu[3]; /* add_rmsnorm, rope_kv, gate_up_act */

static float *dev_of(const float *h, size_t n) {
    float *d = gpu->ops->alloc(gpu, n * sizeof(float));
    gpu->ops->upload(gpu, d, h, n * sizeof(float));
    return d;
}

/* a device buffer of n NaNs: outputs, so an element left unwritten shows */
static float *dev_nan(size_t n) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = dev_of(h, n);
    free(h);
    return d;
}

static float *host_of(const float *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    gpu->ops->download(gpu, h, d, n * sizeof(float));
    return h;
}

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
    float *dx = dev_of(x, n), *dd = dev_of(d, n), *dy = dev_nan(n);
    float *ux = dev_of(x, n), *uy = dev_nan(n);
    gpu->ops->add_rmsnorm(gpu, dx, dd, weight ? dw : NULL, off, 1e-6f, dy, R, D);
    gpu->ops->add(gpu, ux, dd, ux, (int64_t)n); /* the unfused sequence on the GPU */
    gpu->ops->rmsnorm(gpu, ux, weight ? dw : NULL, off, 1e-6f, uy, R, D);
    check_ok("add_rmsnorm");
    float *gx = host_of(dx, n), *gy = host_of(dy, n), *hx = host_of(ux, n), *hy = host_of(uy, n);
    double e = fmax(test_diff_over_max(gx, x_ref, n), test_diff_over_max(gy, y_ref, n));
    double u = fmax(test_diff_over_max(gx, hx, n), test_diff_over_max(gy, hy, n));
    EXPECT(e <= 1e-6 && u <= 1e-6, "add_rmsnorm R=%lld D=%lld: vs cpu %.2e, vs cuda unfused %.2e",
           (long long)R, (long long)D, e, u);
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
    float *dq = dev_of(q, nq), *dk = dev_of(k, nk), *dv = dev_of(v, nk), *dkc = dev_of(kc, nc);
    float *dvc = dev_of(vc, nc), *dfr = dev_of(fr, (size_t)(c->rot / 2 + 1));
    float *uq = dev_of(q, nq), *uk = dev_of(k, nk), *ukc = dev_of(kc, nc), *uvc = dev_of(vc, nc);
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
    float *gq = host_of(dq, nq), *gkc = host_of(dkc, nc), *gvc = host_of(dvc, nc);
    float *hq2 = host_of(uq, nq), *hkc = host_of(ukc, nc);
    float *hvc = host_of(uvc, nc);
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
    float *dx = dev_of(x, nx), *dg = dev_nan(ny), *du = dev_nan(ny);
    float *ug = dev_nan(ny), *uu = dev_nan(ny);
    gpu->ops->gate_up_act(gpu, act, &gg, &gu, db[0], db[1], dx, dg, du, T);
    const nmlx_weight *ws[2] = {&gg, &gu};
    float *ys[2] = {ug, uu};
    gpu->ops->matmul_multi(gpu, 2, ws, db, dx, ys, T);
    gpu->ops->act_mul(gpu, act, ug, uu, ug, (int64_t)ny);
    check_ok("gate_up_act");
    float *hg = host_of(dg, ny), *hu = host_of(ug, ny);
    double e = test_diff_over_max(hg, rg, ny), u = test_diff_over_max(hg, hu, ny);
    double lim = T == 1 && (bits == 4 || bits == 8) ? 2e-3 : 1e-5;
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

/* ---- recorded decode steps (backend.h step_graph; NMLX_CUDA_GRAPH=0 turns them off) ----
 * The same greedy decode on the GPU with and without graphs (the ids of the
 * run without fed to both): the logits of every step within 1e-6 of their
 * range (the recorded step's kernels read the same positions from device
 * memory: expected equal), and where the model's steps repeat, the graph
 * replayed for all but a few steps (the first records; a cache growth at
 * 256 positions records again). */

enum { G_STEPS = 270, G_MAXV = 1 << 14 };

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
    nmlx_session_free(s);
    nmlx_model_free(m);
    return ok;
}

static void test_graph(const char *dir, bool repeats) {
    size_t n = (size_t)G_STEPS * G_MAXV;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    int32_t fed[G_STEPS];
    int64_t Va = 0, Vb = 0;
    long ra = 0, rb = 0;
    if (graph_run(dir, false, fed, a, &Va, &ra) && graph_run(dir, true, fed, b, &Vb, &rb)) {
        double worst = 0;
        for (int st = 0; st < G_STEPS; st++) {
            const float *x = a + (size_t)st * (size_t)Va, *y = b + (size_t)st * (size_t)Va;
            double lo = INFINITY, hi = -INFINITY, d = 0;
            for (int64_t i = 0; i < Va; i++) {
                lo = fmin(lo, x[i]), hi = fmax(hi, x[i]);
                double e = fabs((double)x[i] - y[i]);
                d = e == e && e > d ? e : (e == e ? d : INFINITY);
            }
            worst = fmax(worst, d / fmax(hi - lo, 1e-30));
        }
        EXPECT(worst <= 1e-6, "%s: graph vs no graph: logits differ by %.2e of their range", dir,
               worst);
        EXPECT(repeats ? rb >= G_STEPS - 4 : rb == 0, "%s: %ld of %d steps replayed (%s)", dir, rb,
               G_STEPS, repeats ? "all but a few expected" : "none expected");
        printf("%-36s graph replays %ld of %d steps, logits within %.2e\n", dir, rb, G_STEPS,
               worst);
    }
    free(a), free(b);
}

int main(void) {
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
    test_gate_up_act(4, 64, NMLX_DT_BF16, 517, 1024, 1, true, NMLX_ACT_SILU);  /* 2 rows a warp */
    test_gate_up_act(4, 128, NMLX_DT_F32, 8200, 512, 1, false, NMLX_ACT_SILU); /* 4 rows */
    test_gate_up_act(8, 32, NMLX_DT_F16, 1000, 768, 1, true, NMLX_ACT_GELU_TANH);
    test_gate_up_act(8, 64, NMLX_DT_BF16, 9001, 256, 1, false, NMLX_ACT_GELU_ERF);
    test_gate_up_act(3, 32, NMLX_DT_BF16, 333, 512, 1, true, NMLX_ACT_SILU);  /* fallback */
    test_gate_up_act(4, 64, NMLX_DT_BF16, 257, 512, 3, false, NMLX_ACT_SILU); /* T > 1 */
    test_graph("tests/fixtures/llama3_tied", true);
    test_graph("tests/fixtures/qwen3", true);                 /* q/k norms in rope_kv */
    test_graph("tests/fixtures/quant_llama_q4g64_f16", true); /* quantized, gate_up pairs */
    test_graph("tests/fixtures/phi3_longrope", true);         /* its table switches once */
    test_graph("tests/fixtures/mistral_window", false);       /* rotating cache: no replay */
    printf("add_rmsnorm  worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[0],
           worst_gpu[0]);
    printf("rope_kv      worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[1],
           worst_gpu[1]);
    printf("gate_up_act  worst rel err vs cpu %.2e, vs cuda unfused %.2e\n", worst_cpu[2],
           worst_gpu[2]);
    nmlx_backend_free(gpu);
    nmlx_backend_free(cpu);
    test_free_kept();
    return test_summary();
}
