/* Sampler tests: each filter against the distribution it must produce,
 * measured over many seeded draws; determinism per seed; validation. */
#include "harness.h"
#include "shared/sampling.h"

#include <math.h>
#include <string.h>

enum { V = 8, DRAWS = 40000 };

static void softmax_ref(const float *logits, double temp, double *p) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++) mx = fmax(mx, logits[i] / temp);
    for (int i = 0; i < V; i++) sum += (p[i] = exp(logits[i] / temp - mx));
    for (int i = 0; i < V; i++) p[i] /= sum;
}

/* Draws DRAWS samples and checks the frequencies against `want` (already
 * normalised; zeros must never be drawn). */
static void check_freq(nmlx_sampler *s, const nmlx_sampler_params *p, const float *logits,
                       const double *want, const char *what) {
    int count[V] = {0}, bad = 0;
    for (int i = 0; i < DRAWS; i++) {
        int32_t id = nmlx_sampler_sample(s, p, logits, NULL, 0);
        if (id >= 0 && id < V) count[id]++;
        else bad++;
    }
    EXPECT(bad == 0, "%s: %d ids out of range", what, bad);
    for (int i = 0; i < V; i++) {
        double f = (double)count[i] / DRAWS;
        if (want[i] == 0) EXPECT(count[i] == 0, "%s: token %d drawn %d times, want never", what, i, count[i]);
        else EXPECT(fabs(f - want[i]) < 4 * sqrt(want[i] * (1 - want[i]) / DRAWS) + 1e-3,
                    "%s: token %d freq %.4f want %.4f", what, i, f, want[i]);
    }
}

/* The filters on a large vocabulary (the fast paths: heap top-k, banded
 * top-p), checked for the properties that define them on distributions that
 * are flat, peaked, full of ties, or nearly one-hot:
 *  - top-k keeps exactly the tokens >= the k-th largest probability;
 *  - top-p keeps a set no dropped token beats, whose mass reaches top_p, and
 *    that falls short of top_p without its least likely member. */
static void test_filters_large(void) {
    enum { LV = 50000 };
    nmlx_sampler s;
    EXPECT(nmlx_sampler_init(&s, LV) == NMLX_OK, "init large");
    float *logits = malloc(LV * sizeof(float)), *probs = malloc(LV * sizeof(float));
    for (int kind = 0; kind < 4; kind++)
        for (int rep = 0; rep < 3; rep++) {
            for (int i = 0; i < LV; i++) {
                float u = test_randf(-1.0f, 1.0f);
                logits[i] = kind == 0   ? 4 * u                                  /* flat */
                            : kind == 1 ? 4 * u + (i % 997 == 0 ? 14.0f : 0.0f) /* peaked */
                            : kind == 2 ? (float)((int)(3 * u))                 /* ties */
                                        : 2 * u + (i == 12345 ? 40.0f : 0.0f);  /* one-hot */
            }
            const int ks[] = {1, 20, 256, 1000};
            const float ps[] = {0.5f, 0.9f, 0.95f, 0.999f};
            for (int c = 0; c < 4; c++) {
                nmlx_sampler_params p = nmlx_sampler_default_params();
                p.temperature = 0.8f;
                /* reference probabilities: the unfiltered softmax */
                memcpy(probs, nmlx_sampler_probs(&s, &p, logits, NULL, 0), LV * sizeof(float));
                /* top-k alone */
                p.top_k = ks[c];
                const float *q = nmlx_sampler_probs(&s, &p, logits, NULL, 0);
                float qmax = 0, pmax = 0;
                for (int i = 0; i < LV; i++) qmax = fmaxf(qmax, q[i]), pmax = fmaxf(pmax, probs[i]);
                int kept = 0, bad = 0;
                float min_kept = INFINITY, max_dropped = 0;
                for (int i = 0; i < LV; i++) {
                    if (q[i] > 0) kept++, min_kept = fminf(min_kept, probs[i]);
                    else max_dropped = fmaxf(max_dropped, probs[i]);
                    /* kept probabilities keep their ratios (their normalisation
                     * is the sampler's business) */
                    if (q[i] > 0 && fabs(q[i] / qmax - probs[i] / pmax) > 1e-5 * (probs[i] / pmax))
                        bad++;
                }
                int above = 0; /* tokens strictly above the smallest kept one */
                for (int i = 0; i < LV; i++) above += probs[i] > min_kept;
                EXPECT(bad == 0 && kept >= ks[c] && above < ks[c] && max_dropped < min_kept,
                       "top_k %d (kind %d): kept %d, %d above the cut, dropped max %g vs kept "
                       "min %g",
                       ks[c], kind, kept, above, max_dropped, min_kept);
                /* top-p alone */
                p.top_k = 0;
                p.top_p = ps[c];
                q = nmlx_sampler_probs(&s, &p, logits, NULL, 0);
                double mass = 0;
                min_kept = INFINITY, max_dropped = 0;
                for (int i = 0; i < LV; i++) {
                    if (q[i] > 0) mass += probs[i], min_kept = fminf(min_kept, probs[i]);
                    else max_dropped = fmaxf(max_dropped, probs[i]);
                }
                EXPECT(max_dropped <= min_kept && mass >= ps[c] * (1 - 1e-5) &&
                           mass - min_kept < ps[c] * (1 + 1e-5),
                       "top_p %g (kind %d): mass %.6f, least kept %g, most dropped %g",
                       (double)ps[c], kind, mass, min_kept, max_dropped);
            }
        }
    free(logits), free(probs);
    nmlx_sampler_free(&s);
}

int main(void) {
    test_filters_large();
    nmlx_sampler s;
    EXPECT(nmlx_sampler_init(&s, V) == NMLX_OK, "init");
    nmlx_sampler_params p = nmlx_sampler_default_params();
    float logits[V];
    test_seed(7);
    for (int i = 0; i < V; i++) logits[i] = test_randf(-2.0f, 2.0f);

    /* greedy: argmax, first index on ties */
    int32_t best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    EXPECT(nmlx_sampler_sample(&s, &p, logits, NULL, 0) == best, "greedy picks argmax");
    float tie[V] = {1, 3, 3, 0, 0, 0, 0, 0};
    EXPECT(nmlx_argmax(tie, V) == 1, "argmax takes the first of equal maxima");

    /* temperature: frequencies follow softmax(logits / T) */
    double want[V];
    p.temperature = 0.7f;
    softmax_ref(logits, 0.7, want);
    nmlx_sampler_seed(&s, 1);
    check_freq(&s, &p, logits, want, "temperature 0.7");

    /* same seed -> same tokens; another seed -> another sequence */
    int32_t a[64], b[64], c[64];
    nmlx_sampler_seed(&s, 42);
    for (int i = 0; i < 64; i++) a[i] = nmlx_sampler_sample(&s, &p, logits, NULL, 0);
    nmlx_sampler_seed(&s, 42);
    for (int i = 0; i < 64; i++) b[i] = nmlx_sampler_sample(&s, &p, logits, NULL, 0);
    nmlx_sampler_seed(&s, 43);
    for (int i = 0; i < 64; i++) c[i] = nmlx_sampler_sample(&s, &p, logits, NULL, 0);
    EXPECT(!memcmp(a, b, sizeof a), "same seed gives the same tokens");
    EXPECT(memcmp(a, c, sizeof a), "another seed gives other tokens");

    /* top-k: only the k most likely, renormalised */
    float lk[V] = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, -0.5f, 1.0f, -2.0f};
    p = nmlx_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 3;
    softmax_ref(lk, 1.0, want);
    double keep3 = want[1] + want[3] + want[6];
    double wk[V] = {0};
    wk[1] = want[1] / keep3; wk[3] = want[3] / keep3; wk[6] = want[6] / keep3;
    check_freq(&s, &p, lk, wk, "top_k 3");

    /* top-p: the smallest most-likely set whose mass reaches top_p */
    float lp[V];
    double probs[V] = {0.5, 0.3, 0.12, 0.05, 0.01, 0.01, 0.005, 0.005};
    for (int i = 0; i < V; i++) lp[i] = (float)log(probs[i]);
    p = nmlx_sampler_default_params();
    p.temperature = 1.0f;
    p.top_p = 0.75f;
    double wp[V] = {0.5 / 0.8, 0.3 / 0.8, 0, 0, 0, 0, 0, 0};
    check_freq(&s, &p, lp, wp, "top_p 0.75");
    p.top_p = 0.85f;
    double wp2[V] = {0.5 / 0.92, 0.3 / 0.92, 0.12 / 0.92, 0, 0, 0, 0, 0};
    check_freq(&s, &p, lp, wp2, "top_p 0.85");

    /* min-p: drop tokens below min_p * p(top) */
    p = nmlx_sampler_default_params();
    p.temperature = 1.0f;
    p.min_p = 0.2f; /* floor 0.1 */
    double wm[V] = {0.5 / 0.92, 0.3 / 0.92, 0.12 / 0.92, 0, 0, 0, 0, 0};
    check_freq(&s, &p, lp, wm, "min_p 0.2");

    /* repetition penalty: divides positive, multiplies negative logits of
     * tokens in the last repetition_context_size tokens, once per token */
    float lr[V] = {2.0f, 1.9f, -0.1f, -0.2f, -3, -3, -3, -3};
    p = nmlx_sampler_default_params();
    p.repetition_penalty = 1.5f;
    int32_t hist[] = {0, 0, 0};
    EXPECT(nmlx_sampler_sample(&s, &p, lr, hist, 3) == 1, "penalised token 0 loses to token 1");
    float lr2[V] = {-5, -5, -0.1f, -0.12f, -6, -6, -6, -6};
    int32_t hist2[] = {2};
    EXPECT(nmlx_sampler_sample(&s, &p, lr2, hist2, 1) == 3, "negative logit is multiplied");
    p.repetition_context_size = 1;
    int32_t hist3[] = {0, 4};
    EXPECT(nmlx_sampler_sample(&s, &p, lr, hist3, 2) == 0, "only the last context_size tokens count");

    /* validation names the field */
    nmlx_sampler_params bad = nmlx_sampler_default_params();
    bad.temperature = -1;
    EXPECT(nmlx_sampler_validate(&bad) == NMLX_ERR_INVALID_ARG && strstr(nmlx_last_error(), "temperature"), "negative temperature");
    bad = nmlx_sampler_default_params();
    bad.top_p = 0;
    EXPECT(nmlx_sampler_validate(&bad) == NMLX_ERR_INVALID_ARG && strstr(nmlx_last_error(), "top_p"), "top_p 0");
    bad = nmlx_sampler_default_params();
    bad.top_k = -3;
    EXPECT(nmlx_sampler_validate(&bad) == NMLX_ERR_INVALID_ARG && strstr(nmlx_last_error(), "top_k"), "top_k < 0");
    bad = nmlx_sampler_default_params();
    bad.repetition_penalty = NAN;
    EXPECT(nmlx_sampler_validate(&bad) == NMLX_ERR_INVALID_ARG, "NaN penalty");
    EXPECT(nmlx_sampler_validate(&p) == NMLX_OK, "valid params pass");

    nmlx_sampler_free(&s);
    return test_summary();
}
