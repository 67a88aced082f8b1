/* The CUDA sample op (cuda_sample.cu) against the host sampler
 * (nmlx_sampler_sample_u, shared/sampling.c) on random logits: vocab sizes
 * 1, 7, 32000, 151936; flat and peaked rows, with ties (a repeated maximum,
 * a plateau of equal values at the top); temperature 0 (argmax of the
 * penalised row), 0.7, 1.3; top_k 0, 1, 40, > vocab; top_p 0.1, 0.9, 1;
 * min_p 0, 0.05; repetition penalty 1 and 1.3 over a history with repeats
 * (and an id out of range, which both skip); many draws u each, taken from
 * a seeded host generator, as a session does.
 *
 * Tolerance: ids must be equal, except where the host's own numbers put the
 * decision within rounding of a boundary (TOL = 1e-6 relative): the draw r
 * within TOL x total of the device id's interval of the host's cumulative
 * distribution, a top-p cumulative sum within TOL of top_p, or a
 * probability within TOL of the min-p floor. Those are counted and printed
 * (and must stay rare: at most 1 in 1000 draws); any other difference is a
 * failure.
 *
 * Then the session plumbing on the GPU (batch.c keeps each row on the
 * device, session_sample.c samples it there): fixtures on device "cuda",
 * sessions in pairs with the same prompt and seed in one batch; one of a
 * pair samples where its row lies (argmax / sample op), the other reads its
 * logits first (downloaded: the host sampler). Both are fed the first one's
 * id, so the pair stays identical; their ids must be equal but for rare
 * boundary cases (counted, at most 1 in 50 here). Exits 77 (ctest:
 * skipped) when no GPU is usable. */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "compute/cuda/cuda_backend.h"
#include "harness.h"
#include "nmlx.h"
#include "shared/sampling.h"

#include <math.h>
#include <string.h>

#define TOL 1e-6
enum { DRAWS = 12, HIST = 48 };

static nmlx_backend *gpu;
static long n_draws, n_exact, n_draw_edge, n_filter_edge, n_bad;

/* a row: flat (uniform logits) or peaked (a few large ones), with ties */
static void make_row(float *x, int64_t V, int kind) {
    for (int64_t i = 0; i < V; i++)
        x[i] = kind == 0 ? test_randf(-3, 3) : test_randf(-8, 2);
    if (kind == 1)
        for (int j = 0; j < 5 && V > 1; j++)
            x[test_rand_u64() % (uint64_t)V] = test_randf(4, 9);
    if (V < 3) return;
    int64_t top = 0;
    for (int64_t i = 1; i < V; i++)
        if (x[i] > x[top]) top = i;
    x[(top + V / 2) % V] = x[top]; /* a tied maximum */
    if (kind == 2)                 /* a plateau of equal values at the top: ties at a top-p cut */
        for (int j = 0; j < 50; j++)
            x[test_rand_u64() % (uint64_t)V] = x[top];
}

static int by_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Is a difference explained by rounding at a boundary of the host's numbers?
 * 1: the draw, 2: a filter (min-p floor or top-p cut), 0: no. */
static int edge(nmlx_sampler *s, const nmlx_sampler_params *p, const float *x, int64_t V,
                const int32_t *hist, size_t nh, double u, int32_t got) {
    const float *q = nmlx_sampler_probs(s, p, x, hist, nh);
    double total = 0, before = 0;
    for (int64_t i = 0; i < V; i++) {
        if (i == got) before = total;
        total += q[i];
    }
    double r = u * total;
    if (got >= 0 && got < V && q[got] > 0 && r >= before - TOL * total &&
        r <= before + q[got] + TOL * total)
        return 1;
    /* the filters before min-p and top-p: the top-k softmax */
    nmlx_sampler_params open = *p;
    open.min_p = 0.0f, open.top_p = 1.0f;
    float *p0 = malloc((size_t)V * sizeof(float));
    memcpy(p0, nmlx_sampler_probs(s, &open, x, hist, nh), (size_t)V * sizeof(float));
    float pmax = 0;
    for (int64_t i = 0; i < V; i++)
        pmax = fmaxf(pmax, p0[i]);
    int hit = 0;
    for (int64_t i = 0; i < V && p->min_p > 0 && !hit; i++)
        hit = p0[i] > 0 && fabs((double)p0[i] - (double)p->min_p * pmax) <= TOL * pmax;
    if (!hit && p->top_p < 1.0f) { /* cumulative sums of the sorted kept mass */
        double mass = 0;
        for (int64_t i = 0; i < V; i++) {
            if (p->min_p > 0 && p0[i] < p->min_p * pmax) p0[i] = 0;
            mass += p0[i];
        }
        qsort(p0, (size_t)V, sizeof *p0, by_desc);
        double cum = 0;
        for (int64_t i = 0; i < V && p0[i] > 0 && cum <= p->top_p + TOL; i++) {
            cum += p0[i] / mass;
            if (fabs(cum - p->top_p) <= TOL) hit = 1;
        }
    }
    free(p0);
    return hit ? 2 : 0;
}

static void check_params(nmlx_sampler *host, nmlx_sampler *gen, const float *x, const float *dx,
                         int64_t V, const nmlx_sampler_params *p, const int32_t *hist, size_t nh) {
    for (int d = 0; d < DRAWS; d++) {
        double u = d == 0 ? 0.0 : d == 1 ? 0.9999999999 : nmlx_sampler_uniform(gen);
        int32_t want = nmlx_sampler_sample_u(host, p, x, hist, nh, u);
        int32_t got = gpu->ops->sample(gpu, dx, V, p, hist, nh, u);
        n_draws++;
        if (got == want) {
            n_exact++;
            continue;
        }
        int e = p->temperature > 0 ? edge(host, p, x, V, hist, nh, u, got) : 0;
        if (e == 1) n_draw_edge++;
        if (e == 2) n_filter_edge++;
        if (e) continue;
        n_bad++;
        EXPECT(0, "V=%lld T=%g top_k=%d top_p=%g min_p=%g pen=%g u=%.17g: cuda %d, host %d",
               (long long)V, (double)p->temperature, p->top_k, (double)p->top_p, (double)p->min_p,
               (double)p->repetition_penalty, u, got, want);
        if (d > 3) break; /* one row's failures are alike */
    }
}

static void check_vocab(int64_t V) {
    float *x = malloc((size_t)V * sizeof(float));
    float *dx = gpu->ops->alloc(gpu, (size_t)V * sizeof(float));
    nmlx_sampler host, gen;
    if (!x || !dx || nmlx_sampler_init(&host, V) != NMLX_OK || nmlx_sampler_init(&gen, 1)) {
        EXPECT(0, "V=%lld: setup", (long long)V);
        return;
    }
    int32_t hist[HIST];
    static const float temps[] = {0.0f, 0.7f, 1.3f};
    static const float top_ps[] = {0.1f, 0.9f, 1.0f}, min_ps[] = {0.0f, 0.05f};
    static const float pens[] = {1.0f, 1.3f};
    const int top_ks[] = {0, 1, 40, (int)V + 5};
    for (int kind = 0; kind < 3; kind++) {
        make_row(x, V, kind);
        gpu->ops->upload(gpu, dx, x, (size_t)V * sizeof(float));
        size_t nh = (size_t)(test_rand_u64() % HIST);
        for (size_t i = 0; i < nh; i++) /* repeats: ids from a small range */
            hist[i] = (int32_t)(test_rand_u64() % (uint64_t)(V < 30 ? V : 30));
        if (nh > 3) hist[nh / 2] = (int32_t)V; /* out of range: skipped by both */
        nmlx_sampler_seed(&gen, 77 + (uint64_t)kind);
        for (int t = 0; t < 3; t++)
            for (int k = 0; k < 4; k++)
                for (int tp = 0; tp < 3; tp++)
                    for (int mp = 0; mp < 2; mp++)
                        for (int pe = 0; pe < 2; pe++) {
                            if (temps[t] == 0 && (k || tp || mp)) continue; /* unused when greedy */
                            nmlx_sampler_params p = nmlx_sampler_default_params();
                            p.temperature = temps[t];
                            p.top_k = top_ks[k];
                            p.top_p = top_ps[tp];
                            p.min_p = min_ps[mp];
                            p.repetition_penalty = pens[pe];
                            p.repetition_context_size = (k + tp) % 2 ? 20 : 64;
                            check_params(&host, &gen, x, dx, V, &p, hist, nh);
                        }
    }
    EXPECT(nmlx_backend_cuda_check(gpu) == NMLX_OK, "V=%lld: %s", (long long)V, nmlx_last_error());
    nmlx_sampler_free(&host);
    nmlx_sampler_free(&gen);
    gpu->ops->free(gpu, dx);
    free(x);
}

enum { PAIRS = 6, SESSION_STEPS = 24 };

/* Pairs of identical sessions: one samples on the device, one on the host. */
static void check_sessions(const char *name) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", test_src_dir(), name);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.device = "cuda";
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    nmlx_batch *b = NULL;
    nmlx_session *ss[2 * PAIRS] = {0};
    nmlx_sampler_params sp[PAIRS];
    long steps = 0, differ = 0;
    if (nmlx_model_load(dir, &mp, &m) != NMLX_OK || nmlx_batch_create(m, 2 * PAIRS, &b)) {
        EXPECT(0, "%s on cuda: %s", name, nmlx_last_error());
        goto done;
    }
    int32_t V = nmlx_model_vocab_size(m), ids[2 * PAIRS];
    for (int i = 0; i < PAIRS; i++) {
        sp[i] = nmlx_sampler_default_params();
        sp[i].temperature = i == 0 ? 0.0f : 0.6f + 0.2f * (float)i;
        sp[i].top_k = i == 2 ? 20 : 0;
        sp[i].top_p = i == 3 || i == 5 ? 0.8f : 1.0f;
        sp[i].min_p = i == 4 ? 0.05f : 0.0f;
        sp[i].repetition_penalty = i == 1 || i == 5 ? 1.3f : 1.0f;
        int32_t prompt[8];
        for (int t = 0; t < 8; t++)
            prompt[t] = (int32_t)(test_rand_u64() % (uint64_t)V);
        for (int k = 0; k < 2; k++) {
            EXPECT(nmlx_session_create(m, NULL, &ss[2 * i + k]) == NMLX_OK, "session");
            if (!ss[2 * i + k]) goto done;
            nmlx_session_seed(ss[2 * i + k], 100 + (uint64_t)i);
            EXPECT(nmlx_session_eval(ss[2 * i + k], prompt, 8, 0) == NMLX_OK, "prefill");
        }
    }
    for (int step = 0; step < SESSION_STEPS; step++) {
        for (int i = 0; i < PAIRS; i++) {
            int32_t a = -1, h = -1;
            EXPECT(nmlx_session_sample(ss[2 * i], &sp[i], &a) == NMLX_OK, "sample");
            EXPECT(nmlx_session_logits(ss[2 * i + 1]) != NULL, "logits");
            EXPECT(nmlx_session_sample(ss[2 * i + 1], &sp[i], &h) == NMLX_OK, "sample");
            steps++;
            differ += a != h;
            ids[2 * i] = ids[2 * i + 1] = a;
        }
        EXPECT(nmlx_batch_eval(b, ss, ids, 2 * PAIRS) == NMLX_OK, "%s: batch: %s", name,
               nmlx_last_error());
    }
    printf("%s on cuda: %ld samples, %ld differ between the device and the host sampler\n", name,
           steps, differ);
    EXPECT(differ * 50 <= steps, "%s: device and host samplers differ in %ld of %ld samples", name,
           differ, steps);
done:
    for (int i = 0; i < 2 * PAIRS; i++)
        nmlx_session_free(ss[i]);
    nmlx_batch_free(b);
    nmlx_model_free(m);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    EXPECT(gpu->ops->sample != NULL, "the CUDA backend has a sample op");
    if (!gpu->ops->sample) return test_summary();
    test_seed(20261205);
    static const int64_t vocabs[] = {1, 7, 32000, 151936};
    for (size_t i = 0; i < sizeof vocabs / sizeof vocabs[0]; i++) {
        long before = n_draws;
        check_vocab(vocabs[i]);
        printf("V=%-7lld %ld draws\n", (long long)vocabs[i], n_draws - before);
    }
    printf("sample: %ld draws, %ld equal, %ld at a draw boundary, %ld at a filter boundary, "
           "%ld unexplained\n",
           n_draws, n_exact, n_draw_edge, n_filter_edge, n_bad);
    EXPECT((n_draw_edge + n_filter_edge) * 1000 <= n_draws,
           "boundary cases must stay rare: %ld of %ld draws", n_draw_edge + n_filter_edge, n_draws);
    check_sessions("qwen3");
    check_sessions("llama3_tied");
    nmlx_backend_free(gpu);
    return test_summary();
}
