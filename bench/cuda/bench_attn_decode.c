/* Decode attention benchmark (GPU machine): one query over n_kv cached keys
 * through the old one-block-per-head kernel (NMLX_CUDA_ATTN_DECODE=old),
 * the opt-in split kernel (NMLX_CUDA_ATTN_SPLIT=1), the flash-decoding
 * kernel (cuda_attention_decode.cu's dec_block, "new") and the phased
 * kernel (cuda_attention_phased.h, the default for one query), for the
 * Llama-3.1-8B layer (32 heads, 8 KV heads, HD 128) at n_kv = 16 .. 8192,
 * then the 1B's (HD 64), a gpt-oss-like (64 / 8, HD 64) and a Gemma-like
 * (16 / 8, HD 256) shape. NMLX_CUDA_ATTN_PHASED_RUN applies.
 * Each time is the wall time of back-to-back calls over a sync (launch
 * overhead included, as in a decode step without graphs), cycling over 32
 * layers' caches so the K/V come from DRAM as in a real step; GB/s = K/V
 * bytes read / time. "diff" = max|new - old| / max|old| (rounding: ~1e-7).
 *   build-cuda/bench_cuda_attn [rounds=20 [layers=32]]   (1 2: a quick run, e.g.
 *   under compute-sanitizer)
 * Predicted on an H100 (us, old / new; see cuda_attention_decode.cu):
 * 64: ~6 / ~4; 512: ~16 / ~5; 2048: ~60 / ~9; 8192: ~230 / ~28. */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "compute/cuda/cuda_backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int n_layers = 32; /* caches cycled (argv[2]; at most MAX_LAYERS) */
enum { MAX_LAYERS = 32 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static nmlx_backend *be;

/* us per call over `rounds` passes of the n_layers layers (after one pass) */
static double time_mode(nmlx_attn_args *a, float *const *k, float *const *v, int rounds) {
    double t0 = 0;
    for (int pass = -1; pass < rounds; pass++) {
        if (pass == 0) {
            be->ops->sync(be);
            t0 = now();
        }
        for (int l = 0; l < n_layers; l++) {
            a->k = k[l], a->v = v[l];
            be->ops->attention(be, a);
        }
    }
    be->ops->sync(be);
    return (now() - t0) * 1e6 / ((double)rounds * n_layers);
}

static double max_diff(const float *x, const float *ref, size_t n) {
    double mx = 0, e = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(ref[i]));
        const double d = fabs((double)x[i] - ref[i]);
        e = d > e || d != d ? d : e;
    }
    return mx > 0 ? e / mx : e;
}

static void run(int64_t H, int64_t KVH, int64_t HD, int64_t n_kv, int rounds) {
    const size_t nk = (size_t)(KVH * n_kv * HD), nq = (size_t)(H * HD);
    float *hk = malloc(nk * sizeof(float)), *hq = malloc(nq * sizeof(float));
    for (size_t i = 0; i < nk; i++)
        hk[i] = frand();
    for (size_t i = 0; i < nq; i++)
        hq[i] = frand();
    float *k[MAX_LAYERS], *v[MAX_LAYERS];
    for (int l = 0; l < n_layers; l++) {
        k[l] = be->ops->alloc(be, nk * sizeof(float));
        v[l] = be->ops->alloc(be, nk * sizeof(float));
        be->ops->upload(be, k[l], hk, nk * sizeof(float));
        for (size_t i = 0; i < 64; i++) /* v differs from k */
            hk[(i * 7919) % nk] = frand();
        be->ops->upload(be, v[l], hk, nk * sizeof(float));
    }
    float *q = be->ops->alloc(be, nq * sizeof(float)),
          *out = be->ops->alloc(be, nq * sizeof(float));
    be->ops->upload(be, q, hq, nq * sizeof(float));
    nmlx_attn_args a = {.q = q,
                        .out = out,
                        .T = 1,
                        .H = H,
                        .KVH = KVH,
                        .HD = HD,
                        .cap = n_kv,
                        .q_pos = n_kv - 1,
                        .n_kv = n_kv,
                        .scale = 1.0f / sqrtf((float)HD)};
    float *o_old = malloc(nq * sizeof(float)), *o_new = malloc(nq * sizeof(float)),
          *o_ph = malloc(nq * sizeof(float));
    double us[4];
    const unsigned long long launched = nmlx_cuda_attn_decode_launches(),
                             ph_launched = nmlx_cuda_attn_phased_launches();
    for (int mode = 0; mode < 4; mode++) { /* old, split, new (dec_block), phased */
        nmlx_cuda_set_attn_decode(mode >= 2);
        nmlx_cuda_set_attn_split(mode == 1);
        nmlx_cuda_set_attn_phased(mode == 3);
        us[mode] = time_mode(&a, k, v, rounds);
        a.k = k[0], a.v = v[0];
        be->ops->attention(be, &a);
        if (mode != 1)
            be->ops->download(be,
                              mode == 0   ? o_old
                              : mode == 2 ? o_new
                                          : o_ph,
                              out, nq * sizeof(float));
    }
    const int ran = nmlx_cuda_attn_decode_launches() > launched,
              ph_ran = nmlx_cuda_attn_phased_launches() > ph_launched;
    nmlx_cuda_set_attn_split(0);
    nmlx_cuda_set_attn_decode(1);
    nmlx_cuda_set_attn_phased(-1);
    const nmlx_status st = nmlx_backend_cuda_check(be);
    const double gb = 2.0 * (double)nk * sizeof(float) / 1e9;
    printf("%3lld/%-2lld HD %3lld n_kv %5lld | old %7.1f us | split %7.1f us | new %7.1f us %5.0f "
           "GB/s | phased %7.1f us %5.0f GB/s | new/phased x%4.2f | diff %.1e %.1e%s%s%s\n",
           (long long)H, (long long)KVH, (long long)HD, (long long)n_kv, us[0], us[1], us[2],
           gb / us[2] * 1e6, us[3], gb / us[3] * 1e6, us[2] / us[3], max_diff(o_new, o_old, nq),
           max_diff(o_ph, o_old, nq), ran ? "" : " (new kernel DID NOT RUN)",
           ph_ran ? "" : " (phased kernel DID NOT RUN)", st == NMLX_OK ? "" : " CUDA ERROR");
    if (st != NMLX_OK) fprintf(stderr, "%s\n", nmlx_last_error());
    for (int l = 0; l < n_layers; l++)
        be->ops->free(be, k[l]), be->ops->free(be, v[l]);
    be->ops->free(be, q), be->ops->free(be, out);
    free(hk), free(hq), free(o_old), free(o_new), free(o_ph);
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 && atoi(argv[1]) > 0 ? atoi(argv[1]) : 20;
    if (argc > 2 && atoi(argv[2]) > 0)
        n_layers = atoi(argv[2]) < MAX_LAYERS ? atoi(argv[2]) : MAX_LAYERS;
    if (nmlx_backend_cuda_create(0, &be) != NMLX_OK) {
        fprintf(stderr, "no CUDA device: %s\n", nmlx_last_error());
        return 1;
    }
    printf("decode attention, one query, %d layers' caches cycled, %d rounds\n", n_layers, rounds);
    const int64_t n[] = {16, 48, 100, 144, 512, 2048, 8192};
    for (int i = 0; i < 7; i++)
        run(32, 8, 128, n[i], rounds);
    run(32, 8, 64, 100, rounds);   /* Llama-3.2-1B: HD 64 */
    run(64, 8, 64, 100, rounds);   /* gpt-oss-like, a short context */
    run(64, 8, 64, 2048, rounds);  /* gpt-oss-like */
    run(16, 8, 256, 2048, rounds); /* Gemma-like */
    nmlx_backend_free(be);
    return 0;
}
