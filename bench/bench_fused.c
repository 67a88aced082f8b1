/* CPU fused ops against the op sequences they replace, at one decode
 * token of Llama-3.1-8B's shapes (hidden 4096, 32 q heads, 8 KV heads, head
 * dim 128): microseconds of the calling thread's CPU time per call (the
 * ops run on the caller thread at these sizes; CPU time, so other load on
 * the machine counts less), min over `rounds` rounds of `n` calls each,
 * the two forms alternated within a round:
 *   add + rmsnorm          vs add_rmsnorm
 *   rope q + rope k + 16 row copies         vs rope_kv
 *   q/k rmsnorm + the same                  vs rope_kv with qk_norm
 * Build like bench_kernels (bench/kernels.md):
 *   bench_fused [n=5000] [rounds=21] */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { D = 4096, H = 32, KVH = 8, HD = 128, CAP = 1024, POS = 500 };

static float *floats(size_t n, float scale) {
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = scale * (float)((int)(i % 13) - 6);
    return v;
}

int main(int argc, char **argv) {
    const int n = argc > 1 ? atoi(argv[1]) : 5000, rounds = argc > 2 ? atoi(argv[2]) : 21;
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create_isa(2, NULL, &be) != NMLX_OK) return 1;
    float *x = floats(D, 0.1f), *d = floats(D, 0.001f), *y = floats(D, 0), *wv = floats(D, 0.1f);
    float *q = floats(H * HD, 0.1f), *k = floats(KVH * HD, 0.1f), *v = floats(KVH * HD, 0.1f);
    float *kc = floats(KVH * CAP * HD, 0), *vc = floats(KVH * CAP * HD, 0), *fr = floats(HD / 2, 0);
    for (int i = 0; i < HD / 2; i++)
        fr[i] = 1.0f / (float)(i + 1);
    nmlx_tensor w = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {D}, .data = wv};
    nmlx_tensor nw = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {HD}, .data = wv};
    nmlx_rope_kv_args a = {.q = q,
                           .k = k,
                           .v = v,
                           .k_cache = kc,
                           .v_cache = vc,
                           .T = 1,
                           .H = H,
                           .KVH = KVH,
                           .HD = HD,
                           .cap = CAP,
                           .row0 = POS,
                           .q_norm = &nw,
                           .k_norm = &nw,
                           .q_norm_eps = 1e-6f,
                           .k_norm_eps = 1e-6f,
                           .rot = HD,
                           .pos0 = POS,
                           .freqs = fr,
                           .mscale = 1.0f};
    double best[6] = {1e9, 1e9, 1e9, 1e9, 1e9, 1e9};
    for (int r = 0; r < rounds; r++) {
        double t[7];
        t[0] = bench_cpu_seconds();
        for (int i = 0; i < n; i++) {
            be->ops->add(be, x, d, x, D);
            be->ops->rmsnorm(be, x, &w, 0, 1e-5f, y, 1, D);
        }
        t[1] = bench_cpu_seconds();
        for (int i = 0; i < n; i++)
            be->ops->add_rmsnorm(be, x, d, &w, 0, 1e-5f, y, 1, D);
        t[2] = bench_cpu_seconds();
        for (int norm = 0; norm < 2; norm++) {
            for (int i = 0; i < n; i++) {
                if (norm) {
                    be->ops->rmsnorm(be, q, &nw, 0, 1e-6f, q, H, HD);
                    be->ops->rmsnorm(be, k, &nw, 0, 1e-6f, k, KVH, HD);
                }
                be->ops->rope(be, q, 1, H, HD, HD, POS, fr, 1.0f);
                be->ops->rope(be, k, 1, KVH, HD, HD, POS, fr, 1.0f);
                for (int h = 0; h < KVH; h++) {
                    be->ops->copy(be, kc + (h * CAP + POS) * HD, k + h * HD, HD * sizeof(float));
                    be->ops->copy(be, vc + (h * CAP + POS) * HD, v + h * HD, HD * sizeof(float));
                }
            }
            t[3 + 2 * norm] = bench_cpu_seconds();
            a.qk_norm = norm;
            for (int i = 0; i < n; i++)
                be->ops->rope_kv(be, &a);
            t[4 + 2 * norm] = bench_cpu_seconds();
        }
        for (int j = 0; j < 6; j++) {
            double us = (t[j + 1] - t[j]) / n * 1e6;
            if (us < best[j]) best[j] = us;
        }
    }
    printf("isa %s, us per call (min of %d x %d):\n", nmlx_backend_cpu_isa(be), rounds, n);
    printf("  add + rmsnorm %.3f | add_rmsnorm %.3f\n", best[0], best[1]);
    printf("  rope x2 + copies %.3f | rope_kv %.3f\n", best[2], best[3]);
    printf("  q/k norms + rope x2 + copies %.3f | rope_kv (qk_norm) %.3f\n", best[4], best[5]);
    nmlx_backend_free(be);
    return 0;
}
