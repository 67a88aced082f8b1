/* CUDA quantized matmul benchmark (GPU machine): for Llama-3.1-8B shapes,
 * the decode mat-vec (T = 1) in GB/s of weight bytes read (packed codes +
 * scales + biases; bf16 dense for comparison) and the prefill mat-mat (T =
 * 512) in TFLOP/s: qmm_kernel exact (hi+lo) and bf16-x, and the cuBLAS
 * path (NMLX_CUDA_QMM=gemm: W dequantized per row chunk to f16 hi + lo; and
 * gemm16, W hi only; both with the dequantization included, after a first
 * call on each weight copy), gemm1 (the default: x and W rounded once to
 * f16, one GEMM a chunk) and fused (NMLX_CUDA_QMM=fused, cuda_qmm_fused.cu:
 * codes decoded inside one kernel; "-" where it declines the format). gemm's line also says how
 * many weight copies were found exact in f16 (lo half zero: one GEMM instead of two). Weights are
 * cycled over >= 256 MiB of copies so the 60 MB L2 cannot hold them; each time is the wall time of
 * many back-to-back launches over a sync (launch overhead included, as in decode). Values are
 * random codes, valid bf16 scales. Then the decode step's residual add + norm with the mat-vec that
 * reads it: add_rmsnorm + matmul_multi (q/k/v) or gate_up_act against one add_rmsnorm_matmul
 * (backend.h; the norm staged by the int16 mat-vec). Last, the int16 mat-vec's kernels v1
 * and v2 per configuration (bench_q16). build-cuda/bench_cuda_quant [reps=200] [q16 [cfg...]]
 * (built with -DNMLX_CUDA=ON; "q16": that sweep alone). Then the few-rows mat-mat of batched
 * decode (v1 / v2 / v3, bench_rows below; v3 written without a GPU: its first measurement);
 * build-cuda/bench_cuda_quant 200 rows: that table only. */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "compute/cuda/cuda_backend.h"
#include "compute/quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

typedef struct {
    const char *name;
    nmlx_quant_mode mode;
    int bits; /* 0 = dense bf16 */
} fmt;

/* a host weight [D, N] of format f; returns bytes */
static size_t make_weight(const fmt *f, int64_t D, int64_t N, nmlx_weight *w) {
    const int gs = f->mode == NMLX_QUANT_MXFP4 ? 32 : 64;
    memset(w, 0, sizeof *w);
    w->rows = D, w->cols = N, w->mode = f->mode, w->bits = f->bits, w->group_size = gs;
    if (!f->bits) {
        size_t n = (size_t)(D * N);
        uint16_t *p = malloc(n * 2);
        for (size_t i = 0; i < n; i++)
            p[i] = nmlx_f32_to_bf16(((float)(next32() & 0xffff) - 32768.0f) * 6e-7f);
        w->w = (nmlx_tensor){
            .dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, N}, .data = p, .name = "w"};
        return n * 2;
    }
    const int64_t words = nmlx_quant_row_words(N, f->bits), G = N / gs;
    uint32_t *q = malloc((size_t)(D * words) * 4);
    for (int64_t i = 0; i < D * words; i++)
        q[i] = next32();
    w->w =
        (nmlx_tensor){.dtype = NMLX_DT_U32, .ndim = 2, .shape = {D, words}, .data = q, .name = "q"};
    size_t bytes = (size_t)(D * words) * 4;
    if (f->mode == NMLX_QUANT_MXFP4) {
        uint8_t *s = malloc((size_t)(D * G));
        for (int64_t i = 0; i < D * G; i++)
            s[i] = (uint8_t)(120 + next32() % 4);
        w->scales =
            (nmlx_tensor){.dtype = NMLX_DT_U8, .ndim = 2, .shape = {D, G}, .data = s, .name = "s"};
        return bytes + (size_t)(D * G);
    }
    uint16_t *s = malloc((size_t)(D * G) * 2), *b = malloc((size_t)(D * G) * 2);
    for (int64_t i = 0; i < D * G; i++) {
        s[i] = nmlx_f32_to_bf16(0.04f / (float)((1 << f->bits) - 1));
        b[i] = nmlx_f32_to_bf16(-0.02f);
    }
    w->scales =
        (nmlx_tensor){.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, G}, .data = s, .name = "s"};
    w->biases =
        (nmlx_tensor){.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, G}, .data = b, .name = "b"};
    return bytes + (size_t)(D * G) * 4;
}

static void free_weight(nmlx_weight *w) {
    free(w->w.data), free(w->scales.data), free(w->biases.data);
}

static int prepare(nmlx_backend *be, nmlx_tensor *t) {
    const nmlx_tensor *p = NULL;
    if (!t->data) return 0;
    if (be->ops->prepare_tensor(be, t, &p) != NMLX_OK) return -1;
    t->data = p->data;
    return 0;
}

/* Llama-3.1-8B's q/k/v (4096, 1024, 1024 rows) and gate/up (14336 each)
 * over N = 4096, copies cycled over >= 256 MiB: add_rmsnorm then
 * matmul_multi / gate_up_act, against add_rmsnorm_matmul; wall time of
 * back-to-back launches over a sync (no graph: launch gaps included). */
static int bench_norm(int reps) {
    const fmt fmts[] = {{"q4g64", NMLX_QUANT_AFFINE, 4}, {"q8g64", NMLX_QUANT_AFFINE, 8}};
    const int64_t N = 4096;
    enum { MAXC = 64 };
    printf("\nadd_rmsnorm + mat-vec against add_rmsnorm_matmul (one token, N = %lld; "
           "back-to-back launches, wall time over a sync)\n",
           (long long)N);
    printf("%-6s %-24s %12s %12s %8s\n", "format", "weights", "unfused us", "fused us", "ratio");
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++)
        for (int pair = 0; pair < 2; pair++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cuda_create(0, &be) != NMLX_OK) {
                printf("SKIP: %s\n", nmlx_last_error());
                return 77;
            }
            if (!be->ops->add_rmsnorm_matmul) {
                printf("add_rmsnorm_matmul is off (NMLX_FUSED=0 or NMLX_CUDA_NORM_MATMUL=0)\n");
                nmlx_backend_free(be);
                return 0;
            }
            const int n = pair ? 2 : 3;
            const int64_t rows[3] = {pair ? 14336 : 4096, pair ? 14336 : 1024, 1024};
            nmlx_weight *hw = calloc((size_t)MAXC * 3, sizeof *hw);
            nmlx_weight *dw = calloc((size_t)MAXC * 3, sizeof *dw);
            size_t bytes = 0;
            int nc = 0;
            do {
                bytes = 0;
                for (int i = 0; i < n; i++) {
                    nmlx_weight *h = &hw[nc * 3 + i], *d = &dw[nc * 3 + i];
                    bytes += make_weight(&fmts[fi], rows[i], N, h);
                    *d = *h;
                    if (prepare(be, &d->w) || prepare(be, &d->scales) || prepare(be, &d->biases)) {
                        printf("prepare failed: %s\n", nmlx_last_error());
                        return 1;
                    }
                }
                nc++;
            } while (nc < MAXC && (size_t)nc * bytes < (256u << 20));
            uint16_t *nwh = malloc((size_t)N * 2);
            float *hx = malloc((size_t)N * sizeof(float));
            for (int64_t i = 0; i < N; i++) {
                nwh[i] = nmlx_f32_to_bf16(1.0f + ((float)(next32() & 0xff) - 128.0f) / 1024.0f);
                hx[i] = ((float)(next32() & 0xffff) - 32768.0f) / 32768.0f;
            }
            nmlx_tensor nwt = {.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {N}, .data = nwh};
            const nmlx_tensor *nw = NULL;
            if (be->ops->prepare_tensor(be, &nwt, &nw) != NMLX_OK) return 1;
            float *x = be->ops->alloc(be, (size_t)N * sizeof(float));
            float *d = be->ops->alloc(be, (size_t)N * sizeof(float));
            float *y = be->ops->alloc(be, (size_t)N * sizeof(float));
            float *ys[3];
            for (int i = 0; i < 3; i++)
                ys[i] = be->ops->alloc(be, (size_t)rows[0] * sizeof(float));
            be->ops->upload(be, x, hx, (size_t)N * sizeof(float));
            be->ops->upload(be, d, hx, (size_t)N * sizeof(float));
            double t[2] = {0, 0};
            bool fused_ok = true;
            for (int v = 0; v < 2; v++)
                for (int round = 0; round < 2; round++) { /* warm-up, then timed */
                    const int r = round ? reps : 10;
                    be->ops->upload(be, x, hx, (size_t)N * sizeof(float));
                    be->ops->sync(be);
                    double t0 = now();
                    for (int k = 0; k < r; k++) {
                        const nmlx_weight *ws[3] = {&dw[(k % nc) * 3], &dw[(k % nc) * 3 + 1],
                                                    &dw[(k % nc) * 3 + 2]};
                        if (v) {
                            fused_ok = fused_ok &&
                                       be->ops->add_rmsnorm_matmul(be, x, d, nw, 0.0f, 1e-5f, y, N,
                                                                   pair ? NMLX_ACT_SILU : -1, n, ws,
                                                                   NULL, ys, NULL);
                            continue;
                        }
                        be->ops->add_rmsnorm(be, x, d, nw, 0.0f, 1e-5f, y, 1, N);
                        if (pair)
                            be->ops->gate_up_act(be, NMLX_ACT_SILU, ws[0], ws[1], NULL, NULL, y,
                                                 ys[0], ys[1], 1);
                        else
                            be->ops->matmul_multi(be, n, ws, NULL, y, ys, 1);
                    }
                    be->ops->sync(be);
                    t[v] = (now() - t0) / r;
                }
            nmlx_status st = nmlx_backend_cuda_check(be);
            char wn[40];
            snprintf(wn, sizeof wn, pair ? "gate/up 2x%lld" : "q/k/v %lld+%lld+%lld",
                     (long long)rows[0], (long long)rows[1], (long long)rows[2]);
            printf("%-6s %-24s %12.2f %12.2f %7.2fx%s%s\n", fmts[fi].name, wn, t[0] * 1e6,
                   t[1] * 1e6, t[1] > 0 ? t[0] / t[1] : 0.0, fused_ok ? "" : "  DECLINED",
                   st == NMLX_OK ? "" : "  CUDA ERROR");
            be->ops->free(be, x), be->ops->free(be, d), be->ops->free(be, y);
            for (int i = 0; i < 3; i++)
                be->ops->free(be, ys[i]);
            nmlx_backend_free(be);
            for (int i = 0; i < nc * 3; i++)
                if (hw[i].w.data) free_weight(&hw[i]);
            free(hw), free(dw), free(nwh), free(hx);
        }
    return 0;
}

/* The int16 decode mat-vec (cuda_qgemv16.cu) kernel by kernel: v1 and v2
 * in each configuration (NMLX_CUDA_QGEMV16_CFG syntax; argv[3..] replace
 * the list) on Llama-3.1-8B's decode shapes: one weight (matmul), q/k/v in
 * one launch (matmul_multi), gate/up pairs (gate_up_act, SiLU). Weights
 * cycled over >= 256 MiB, back-to-back launches over a sync (launch
 * included). Each variant's outputs on the first copy are compared with
 * v1's, bit for bit ("DIFFERS" if not; v1 declines an 8-bit LM head: its
 * line is the f32 kernel's, not compared). */
static int bench_q16(int reps, int ncfg, const char *const *cfgs) {
    const fmt fmts[] = {{"q4g64", NMLX_QUANT_AFFINE, 4}, {"q8g64", NMLX_QUANT_AFFINE, 8}};
    typedef struct {
        const char *name;
        int kind; /* 0 matmul, 1 matmul_multi, 2 gate_up_act */
        int n;
        int64_t rows[3], N;
    } shape;
    const shape shapes[] = {{"4096x4096", 0, 1, {4096}, 4096},
                            {"qkv 6144x4096", 1, 3, {4096, 1024, 1024}, 4096},
                            {"gate/up 2x14336x4096", 2, 2, {14336, 14336}, 4096},
                            {"4096x14336", 0, 1, {4096}, 14336},
                            {"128256x4096", 0, 1, {128256}, 4096}};
    enum { MAXC = 64 };
    printf("\nint16 mat-vec kernels (NMLX_CUDA_QGEMV16=v1 / v2 with NMLX_CUDA_QGEMV16_CFG; "
           "back-to-back launches, wall time over a sync)\n");
    printf("%-6s %-22s %-12s %9s %9s %8s\n", "format", "shape", "kernel", "us", "GB/s", "vs v1");
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const shape *sh = &shapes[si];
            nmlx_backend *be = NULL;
            if (nmlx_backend_cuda_create(0, &be) != NMLX_OK) {
                printf("SKIP: %s\n", nmlx_last_error());
                return 77;
            }
            const int n = sh->n;
            nmlx_weight *hw = calloc((size_t)MAXC * 3, sizeof *hw);
            nmlx_weight *dw = calloc((size_t)MAXC * 3, sizeof *dw);
            size_t bytes = 0;
            int nc = 0;
            do {
                bytes = 0;
                for (int i = 0; i < n; i++) {
                    nmlx_weight *h = &hw[nc * 3 + i], *d = &dw[nc * 3 + i];
                    bytes += make_weight(&fmts[fi], sh->rows[i], sh->N, h);
                    *d = *h;
                    if (prepare(be, &d->w) || prepare(be, &d->scales) || prepare(be, &d->biases)) {
                        printf("prepare failed: %s\n", nmlx_last_error());
                        return 1;
                    }
                }
                nc++;
            } while (nc < MAXC && (size_t)nc * bytes < (256u << 20));
            float *hx = malloc((size_t)sh->N * sizeof(float));
            for (int64_t i = 0; i < sh->N; i++)
                hx[i] = ((float)(next32() & 0xffff) - 32768.0f) / 32768.0f;
            float *x = be->ops->alloc(be, (size_t)sh->N * sizeof(float));
            be->ops->upload(be, x, hx, (size_t)sh->N * sizeof(float));
            float *ys[3];
            for (int i = 0; i < 3; i++)
                ys[i] = be->ops->alloc(be, (size_t)sh->rows[0] * sizeof(float));
            const size_t outb = (size_t)sh->rows[0] * sizeof(float);
            float *ref = malloc(outb), *got = malloc(outb);
            double t1 = 0;
            for (int v = -1; v < ncfg; v++) { /* -1: v1 */
                if (v < 0)
                    nmlx_cuda_set_qgemv16_version(1);
                else {
                    nmlx_cuda_set_qgemv16_version(2);
                    if (nmlx_cuda_set_qgemv16_cfg(cfgs[v])) {
                        printf("bad config %s\n", cfgs[v]);
                        continue;
                    }
                }
                double t = 0;
                for (int round = 0; round < 3; round++) { /* check, warm-up, timed */
                    const int r = round == 0 ? 1 : round == 1 ? 10 : reps;
                    be->ops->sync(be);
                    double t0 = now();
                    for (int k = 0; k < r; k++) {
                        const int c = round == 0 ? 0 : k % nc;
                        const nmlx_weight *ws[3] = {&dw[c * 3], &dw[c * 3 + 1], &dw[c * 3 + 2]};
                        if (sh->kind == 0)
                            be->ops->matmul(be, ws[0], NULL, x, ys[0], 1);
                        else if (sh->kind == 1)
                            be->ops->matmul_multi(be, n, ws, NULL, x, ys, 1);
                        else
                            be->ops->gate_up_act(be, NMLX_ACT_SILU, ws[0], ws[1], NULL, NULL, x,
                                                 ys[0], ys[1], 1);
                    }
                    be->ops->sync(be);
                    t = (now() - t0) / r;
                    if (round == 0) be->ops->download(be, v < 0 ? ref : got, ys[0], outb);
                }
                if (v < 0) t1 = t;
                const bool v1_f32 = fmts[fi].bits == 8 && sh->kind == 0 && sh->rows[0] >= 16384;
                const bool differs = v >= 0 && !v1_f32 && memcmp(ref, got, outb) != 0;
                printf("%-6s %-22s %-12s %9.2f %9.0f %7.2fx%s%s\n", fmts[fi].name, sh->name,
                       v < 0 ? (v1_f32 ? "v1(f32)" : "v1") : cfgs[v], t * 1e6,
                       (double)bytes / t / 1e9, t > 0 ? t1 / t : 0.0, differs ? "  DIFFERS" : "",
                       nmlx_backend_cuda_check(be) == NMLX_OK ? "" : "  CUDA ERROR");
            }
            nmlx_cuda_set_qgemv16_version(-1);
            nmlx_cuda_set_qgemv16_cfg(NULL);
            be->ops->free(be, x);
            for (int i = 0; i < 3; i++)
                be->ops->free(be, ys[i]);
            nmlx_backend_free(be);
            for (int i = 0; i < nc * 3; i++)
                if (hw[i].w.data) free_weight(&hw[i]);
            free(hw), free(dw), free(hx), free(ref), free(got);
        }
    return 0;
}

/* The few-rows mat-mat of a batched decode step (cuda_qrows_mma.cu): T =
 * 2..64 rows of x against Llama-3.1-8B's fused q/k/v (6144), o (4096),
 * fused gate/up (28672) over 4096 inputs and down (4096 x 14336), q4/q8
 * g64: v1, v2 as configured by default, and each v2 form of
 * NMLX_BENCH_QROWS_CFGS ("mt=4,wr=2,bps=2;mt=2,bps=4;...": m16 tiles a
 * warp, row groups a block (0 or absent: by T), blocks per SM of the
 * split-K (0 = none; default 2), split=S a fixed split);
 * us a call (x split included; copies cycled over >= 256 MiB) and GB/s of
 * weight bytes; then per T the four shapes' sum times 32 layers (the
 * step's matmuls but the head). */
static int bench_rows(int reps) {
    const fmt fmts[] = {{"q4g64", NMLX_QUANT_AFFINE, 4}, {"q8g64", NMLX_QUANT_AFFINE, 8}};
    const int64_t shapes[4][2] = {{4096, 4096}, {6144, 4096}, {28672, 4096}, {4096, 14336}};
    const int Ts[6] = {2, 4, 8, 16, 32, 64};
    enum { MAXCFG = 12 };
    /* version, mt, wr, bps, split; v3 (cuda_qrows3.h: x staged in the
     * kernel, no x split launch) gives v2's bits in the same form */
    int cv[MAXCFG][5] = {{1, 0, 0, 2, 0}, {2, 0, 0, 2, 0}, {3, 0, 0, 2, 0}};
    char cn[MAXCFG][40] = {"v1", "v2", "v3"};
    int ncfg = 3;
    const char *e = getenv("NMLX_BENCH_QROWS_CFGS");
    while (e && *e && ncfg < MAXCFG) {
        int ver = 2, mt = 0, wr = 0, bps = 2, split = 0; /* "v=3,wr=2": v3's forms */
        const char *end = strchr(e, ';');
        const size_t len = end ? (size_t)(end - e) : strlen(e);
        char item[64];
        snprintf(item, sizeof item, "%.*s", (int)(len < 63 ? len : 63), e);
        for (char *t = strtok(item, ","); t; t = strtok(NULL, ",")) {
            if (sscanf(t, "v=%d", &ver) != 1 && sscanf(t, "mt=%d", &mt) != 1 &&
                sscanf(t, "wr=%d", &wr) != 1 && sscanf(t, "bps=%d", &bps) != 1 &&
                sscanf(t, "split=%d", &split) != 1)
                printf("NMLX_BENCH_QROWS_CFGS: %s?\n", t);
        }
        ver = ver == 3 ? 3 : 2;
        cv[ncfg][0] = ver, cv[ncfg][1] = mt, cv[ncfg][2] = wr, cv[ncfg][3] = bps;
        cv[ncfg][4] = split;
        snprintf(cn[ncfg], sizeof cn[ncfg], "v%d mt%d wr%d bps%d%s%.0d", ver, mt, wr, bps,
                 split ? " split" : "", split);
        ncfg++;
        e = end ? end + 1 : NULL;
    }
    /* NMLX_BENCH_ROWS_ONLY="F,S,T[,C]": format, shape, T and config indices
     * (-1: all), to profile one launch form under ncu */
    int only[4] = {-1, -1, -1, -1};
    const char *oe = getenv("NMLX_BENCH_ROWS_ONLY");
    if (oe && sscanf(oe, "%d,%d,%d,%d", &only[0], &only[1], &only[2], &only[3]) < 3)
        printf("NMLX_BENCH_ROWS_ONLY: %s? (want F,S,T[,C] indices)\n", oe);
    printf("\nfew-rows mat-mat (batched decode; T rows of x, v1 / v2's x split launch included, "
           "copies cycled over >= 256 MiB)\n");
    printf("%-6s %-12s %3s %-22s %9s %8s\n", "format", "D x N", "T", "kernel", "us", "GB/s");
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
        if (only[0] >= 0 && (int)fi != only[0]) continue;
        double tsum[6][MAXCFG];
        memset(tsum, 0, sizeof tsum);
        for (int si = 0; si < 4; si++) {
            if (only[1] >= 0 && si != only[1]) continue;
            const int64_t D = shapes[si][0], N = shapes[si][1];
            nmlx_backend *be = NULL;
            if (nmlx_backend_cuda_create(0, &be) != NMLX_OK) {
                printf("SKIP: %s\n", nmlx_last_error());
                return 77;
            }
            nmlx_weight hw[64], dw[64];
            size_t bytes = 0;
            int nc = 0;
            do {
                bytes = make_weight(&fmts[fi], D, N, &hw[nc]);
                dw[nc] = hw[nc];
                if (prepare(be, &dw[nc].w) || prepare(be, &dw[nc].scales) ||
                    prepare(be, &dw[nc].biases)) {
                    printf("prepare failed: %s\n", nmlx_last_error());
                    return 1;
                }
                nc++;
            } while (nc < 64 && (size_t)nc * bytes < (256u << 20));
            float *x = be->ops->alloc(be, (size_t)(64 * N) * sizeof(float));
            float *y = be->ops->alloc(be, (size_t)(64 * D) * sizeof(float));
            float *hx = malloc((size_t)(64 * N) * sizeof(float));
            for (int64_t i = 0; i < 64 * N; i++)
                hx[i] = ((float)(next32() & 0xffff) - 32768.0f) / 32768.0f;
            be->ops->upload(be, x, hx, (size_t)(64 * N) * sizeof(float));
            char sh[32];
            snprintf(sh, sizeof sh, "%lldx%lld", (long long)D, (long long)N);
            for (int ti = 0; ti < 6; ti++)
                for (int ci = 0; ci < ncfg; ci++) {
                    if ((only[2] >= 0 && ti != only[2]) || (only[3] >= 0 && ci != only[3]))
                        continue;
                    const int T = Ts[ti];
                    nmlx_cuda_set_qrows_kernel(cv[ci][0], cv[ci][1], cv[ci][2], cv[ci][3],
                                               cv[ci][4]);
                    for (int i = 0; i < nc; i++) /* warm-up; scratch grown */
                        be->ops->matmul(be, &dw[i], NULL, x, y, T);
                    be->ops->sync(be);
                    double t0 = now();
                    for (int i = 0; i < reps; i++)
                        be->ops->matmul(be, &dw[i % nc], NULL, x, y, T);
                    be->ops->sync(be);
                    const double t = (now() - t0) / reps;
                    tsum[ti][ci] += t;
                    nmlx_status st = nmlx_backend_cuda_check(be);
                    printf("%-6s %-12s %3d %-22s %9.2f %8.0f%s\n", fmts[fi].name, sh, T, cn[ci],
                           t * 1e6, (double)bytes / t / 1e9, st == NMLX_OK ? "" : "  CUDA ERROR");
                    fflush(stdout);
                }
            nmlx_cuda_set_qrows_kernel(-1, 0, 0, 0, 0);
            be->ops->free(be, x), be->ops->free(be, y);
            free(hx);
            nmlx_backend_free(be);
            for (int i = 0; i < nc; i++)
                free_weight(&hw[i]);
        }
        printf("%-6s step matmuls (4 shapes x 32 layers), ms:", fmts[fi].name);
        for (int ci = 0; ci < ncfg; ci++)
            printf(" | %s", cn[ci]);
        printf("\n");
        for (int ti = 0; ti < 6; ti++) {
            printf("%-6s step T=%-2d", fmts[fi].name, Ts[ti]);
            for (int ci = 0; ci < ncfg; ci++)
                printf(" %8.3f", tsum[ti][ci] * 32 * 1e3);
            printf("   (v2/v1 %.2fx faster, v3/v2 %.2fx)\n",
                   tsum[ti][1] > 0 ? tsum[ti][0] / tsum[ti][1] : 0.0,
                   tsum[ti][2] > 0 ? tsum[ti][1] / tsum[ti][2] : 0.0);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 200;
    if (argc > 2 && !strcmp(argv[2], "rows")) return bench_rows(reps); /* that table only */
    /* argv[2] = q16: only the int16 mat-vec sweep (argv[3..]: its configs) */
    static const char *const q16_cfgs[] = {
        "d8b2,d4b2", "d8b1,d4b1",  "d4b2,d2b2",  "d4b0,d4b0",   "d2b0,d2b0",   "a16b2,a8b2",
        "a8b2,a8b2", "a16b0,a8b0", "a16b1,a8b1", "d4b2r2,d4b2", "d2b0r2,d2b0", "a8b2r2,a8b2"};
    const int nq16 = (int)(sizeof q16_cfgs / sizeof q16_cfgs[0]);
    if (argc > 2 && !strcmp(argv[2], "q16"))
        return argc > 3 ? bench_q16(reps, argc - 3, (const char *const *)argv + 3)
                        : bench_q16(reps, nq16, q16_cfgs);
    const fmt fmts[] = {{"bf16", NMLX_QUANT_NONE, 0},
                        {"q4g64", NMLX_QUANT_AFFINE, 4},
                        {"q8g64", NMLX_QUANT_AFFINE, 8},
                        {"mxfp4", NMLX_QUANT_MXFP4, 4},
                        {"q3g64", NMLX_QUANT_AFFINE, 3}};
    const int64_t shapes[][2] = {
        {1024, 4096}, {4096, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
    const int64_t TP = 512;
    printf("%-6s %-13s %10s %9s %9s %8s | %10s %9s %10s %9s | %8s %9s %8s %9s | %8s %9s %8s "
           "%9s\n",
           "format", "D x N", "gemv us", "GB/s", "f32x GB/s", "copies", "mm ms", "TFLOP/s",
           "mm-bf16x", "TFLOP/s", "gemm ms", "TFLOP/s", "gemm16", "TFLOP/s", "gemm1 ms", "TFLOP/s",
           "fused ms", "TFLOP/s");
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t D = shapes[si][0], N = shapes[si][1];
            nmlx_backend *be = NULL;
            if (nmlx_backend_cuda_create(0, &be) != NMLX_OK) {
                printf("SKIP: %s\n", nmlx_last_error());
                return 77;
            }
            nmlx_weight hw[64], dw[64];
            size_t bytes = 0;
            int nc = 0;
            do {
                bytes = make_weight(&fmts[fi], D, N, &hw[nc]);
                dw[nc] = hw[nc];
                if (prepare(be, &dw[nc].w) || prepare(be, &dw[nc].scales) ||
                    prepare(be, &dw[nc].biases)) {
                    printf("prepare failed: %s\n", nmlx_last_error());
                    return 1;
                }
                nc++;
            } while (nc < 64 && (size_t)nc * bytes < (256u << 20));
            float *x = be->ops->alloc(be, (size_t)(TP * N) * sizeof(float));
            float *y = be->ops->alloc(be, (size_t)(TP * D) * sizeof(float));
            float *hx = malloc((size_t)(TP * N) * sizeof(float));
            for (int64_t i = 0; i < TP * N; i++)
                hx[i] = ((float)(next32() & 0xffff) - 32768.0f) / 32768.0f;
            be->ops->upload(be, x, hx, (size_t)(TP * N) * sizeof(float));
            for (int i = 0; i < 10; i++)
                be->ops->matmul(be, &dw[i % nc], NULL, x, y, 1);
            be->ops->sync(be);
            double t0 = now();
            for (int i = 0; i < reps; i++)
                be->ops->matmul(be, &dw[i % nc], NULL, x, y, 1);
            be->ops->sync(be);
            double tv = (now() - t0) / reps, tv32 = 0;
            if (fmts[fi].bits) { /* the f32-x mat-vec (NMLX_CUDA_QGEMV=f32) */
                nmlx_cuda_set_qgemv16(0);
                be->ops->matmul(be, &dw[0], NULL, x, y, 1);
                be->ops->sync(be);
                t0 = now();
                for (int i = 0; i < reps; i++)
                    be->ops->matmul(be, &dw[i % nc], NULL, x, y, 1);
                be->ops->sync(be);
                tv32 = (now() - t0) / reps;
                nmlx_cuda_set_qgemv16(1);
            }
            /* qmm exact, qmm bf16-x, gemm, gemm16, gemm1, fused (quantized only
             * but the first; fused only where it takes the format) */
            enum { NV = 6 };
            double tm[NV] = {0, 0, 0, 0, 0, 0};
            const int vsplit[NV] = {1, 0, 1, 1, 1, 1}, vgemm[NV] = {0, 0, 1, 3, 19, 51};
            for (int vi = 0; vi < NV; vi++) {
                if (!fmts[fi].bits && vi) continue;
                if (vi == 5) { /* fused: skip (print "-") where it declines */
                    const unsigned long long l0 = nmlx_cuda_qmm_fused_launches();
                    nmlx_cuda_set_qmm_gemm(51);
                    be->ops->matmul(be, &dw[0], NULL, x, y, TP);
                    nmlx_cuda_set_qmm_gemm(0);
                    if (nmlx_cuda_qmm_fused_launches() == l0) continue;
                }
                nmlx_cuda_set_qmm_split(vsplit[vi]);
                nmlx_cuda_set_qmm_gemm(vgemm[vi]);
                int mr = reps / 10 < 3 ? 3 : reps / 10;
                /* every copy once first: gemm's first call on a weight records
                 * whether its f16 lo half is zero (a sync, lo written) */
                for (int i = 0; i < (vgemm[vi] ? nc : 1); i++)
                    be->ops->matmul(be, &dw[i], NULL, x, y, TP);
                be->ops->sync(be);
                t0 = now();
                for (int i = 0; i < mr; i++)
                    be->ops->matmul(be, &dw[i % nc], NULL, x, y, TP);
                be->ops->sync(be);
                tm[vi] = (now() - t0) / mr;
            }
            nmlx_cuda_set_qmm_split(1);
            nmlx_cuda_set_qmm_gemm(0);
            nmlx_status st = nmlx_backend_cuda_check(be);
            double fl = 2.0 * (double)D * (double)N * (double)TP;
            char sh[32];
            snprintf(sh, sizeof sh, "%lldx%lld", (long long)D, (long long)N);
            long ex = 0, inex = 0;
            nmlx_cuda_qgemm_seen(be, &ex, &inex);
            char exs[48] = "";
            if (ex + inex) snprintf(exs, sizeof exs, "  f16-exact %ld/%ld", ex, ex + inex);
            double tf[NV];
            for (int vi = 0; vi < NV; vi++)
                tf[vi] = tm[vi] > 0 ? fl / tm[vi] / 1e12 : 0.0;
            printf("%-6s %-13s %10.2f %9.0f %9.0f %8d | %10.3f %9.1f %10.3f %9.1f | %8.3f %9.1f "
                   "%8.3f %9.1f | %8.3f %9.1f %8.3f %9.1f%s%s\n",
                   fmts[fi].name, sh, tv * 1e6, (double)bytes / tv / 1e9,
                   tv32 > 0 ? (double)bytes / tv32 / 1e9 : 0.0, nc, tm[0] * 1e3, tf[0], tm[1] * 1e3,
                   tf[1], tm[2] * 1e3, tf[2], tm[3] * 1e3, tf[3], tm[4] * 1e3, tf[4], tm[5] * 1e3,
                   tf[5], exs, st == NMLX_OK ? "" : "  CUDA ERROR");
            be->ops->free(be, x), be->ops->free(be, y);
            free(hx);
            nmlx_backend_free(be);
            for (int i = 0; i < nc; i++)
                free_weight(&hw[i]);
        }
    int rc = bench_norm(reps);
    return rc ? rc : bench_q16(reps, nq16, q16_cfgs);
}
