/* Token sampling (see sampling.h). The filters follow mlx-lm's
 * sample_utils.py semantics: repetition penalty divides positive logits and
 * multiplies negative ones of recently seen tokens; top-k keeps the k most
 * likely; min-p drops tokens below min_p * p(top); top-p keeps the smallest
 * set of most likely tokens whose mass reaches top_p. */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

nmlx_sampler_params nmlx_sampler_default_params(void) {
    return (nmlx_sampler_params){.temperature = 0.0f,
                                 .top_p = 1.0f,
                                 .top_k = 0,
                                 .min_p = 0.0f,
                                 .repetition_penalty = 1.0f,
                                 .repetition_context_size = 20,
                                 .seed = 0};
}

nmlx_status nmlx_sampler_init(nmlx_sampler *s, int64_t vocab) {
    memset(s, 0, sizeof *s);
    s->vocab = vocab;
    s->work = nmlx_malloc((size_t)vocab * sizeof(float));
    s->cand = nmlx_malloc((size_t)vocab * sizeof(nmlx_candidate));
    if (!s->work || !s->cand) {
        nmlx_sampler_free(s);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for the sampler (vocab %lld)",
                         (long long)vocab);
    }
    nmlx_sampler_seed(s, 0);
    return NMLX_OK;
}

void nmlx_sampler_free(nmlx_sampler *s) {
    nmlx_free(s->work);
    nmlx_free(s->cand);
    s->work = NULL;
    s->cand = NULL;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void nmlx_sampler_seed(nmlx_sampler *s, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** -> uniform double in [0, 1) */
static double next_uniform(nmlx_sampler *s) {
    uint64_t *r = s->rng;
    uint64_t out = rotl(r[1] * 5, 7) * 9, t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = rotl(r[3], 45);
    return (double)(out >> 11) * (1.0 / 9007199254740992.0);
}

nmlx_status nmlx_sampler_validate(const nmlx_sampler_params *p) {
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "sampler: temperature must be >= 0 (got %g)",
                         (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "sampler: top_p must be in (0, 1] (got %g)",
                         (double)p->top_p);
    if (p->top_k < 0)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "sampler: top_k must be >= 0 (got %d)", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "sampler: min_p must be in [0, 1] (got %g)",
                         (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "sampler: repetition_penalty must be > 0 (got %g)",
                         (double)p->repetition_penalty);
    if (p->repetition_context_size < 0)
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "sampler: repetition_context_size must be >= 0 (got %d)",
                         p->repetition_context_size);
    return NMLX_OK;
}

int32_t nmlx_argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* k-th largest value of a[0..n) (1-based k), reordering a (quickselect). */
static float kth_largest(float *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot)
                i++;
            while (a[j] < pivot)
                j--;
            if (i <= j) {
                float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    return a[want];
}

/* k-th largest value of a[0..n) for a small k (1 <= k <= n): one pass with
 * a min-heap of the k largest so far (most values lose to its root), a[]
 * untouched. heap has room for k floats. */
static float kth_largest_small(const float *a, int64_t n, int64_t k, float *heap) {
    for (int64_t i = 0; i < k; i++) { /* heapify the first k */
        int64_t c = i;
        heap[c] = a[i];
        while (c > 0 && heap[(c - 1) / 2] > heap[c]) {
            float t = heap[c];
            heap[c] = heap[(c - 1) / 2];
            heap[(c - 1) / 2] = t;
            c = (c - 1) / 2;
        }
    }
    for (int64_t i = k; i < n; i++) {
        if (!(a[i] > heap[0])) continue;
        int64_t c = 0;
        heap[0] = a[i];
        for (;;) { /* sift down */
            int64_t l = 2 * c + 1, r = l + 1, m = c;
            if (l < k && heap[l] < heap[m]) m = l;
            if (r < k && heap[r] < heap[m]) m = r;
            if (m == c) break;
            float t = heap[c];
            heap[c] = heap[m];
            heap[m] = t;
            c = m;
        }
    }
    return heap[0];
}

static int by_prob_desc(const void *a, const void *b) {
    const nmlx_candidate *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/* Candidates p >= t, sorted most likely first (ties: lower id); *keep = how
 * many of them it takes for the cumulative mass to reach top_p (all if it
 * never does; returns false then). */
static bool nucleus(nmlx_sampler *s, const float *p, float t, double top_p, int64_t *keep) {
    int64_t n = 0;
    for (int64_t i = 0; i < s->vocab; i++)
        if (p[i] > 0.0f && p[i] >= t) s->cand[n++] = (nmlx_candidate){p[i], (int32_t)i};
    qsort(s->cand, (size_t)n, sizeof *s->cand, by_prob_desc);
    double cum = 0.0;
    *keep = n;
    for (int64_t j = 0; j < n; j++) {
        cum += s->cand[j].p;
        if (cum >= top_p) {
            *keep = j + 1;
            return true;
        }
    }
    return false;
}

/* Keeps the most likely tokens whose mass reaches top_p; p is normalised.
 * Only the tokens that can be in that set are sorted: one pass sums the mass
 * per power-of-two band of p (read off the float's exponent), the bands from
 * the top are taken until their mass reaches top_p, plus one band of margin
 * for rounding; if the sorted candidates still fall short, all tokens are. */
static void apply_top_p(nmlx_sampler *s, float *p, double top_p) {
    int64_t V = s->vocab;
    enum { BANDS = 128 }; /* band k holds p in [2^-k, 2^(1-k)); 127: subnormals */
    double band[BANDS] = {0};
    for (int64_t i = 0; i < V; i++) {
        uint32_t bits;
        memcpy(&bits, &p[i], sizeof bits);
        int e = (int)((bits >> 23) & 0xff); /* p in [0, 1]: e <= 127 */
        if (bits == 0 || e > 127) continue;
        band[127 - e] += p[i];
    }
    double mass = 0.0;
    int k = 0;
    for (; k < BANDS - 1; k++)
        if ((mass += band[k]) >= top_p) break;
    k++; /* margin */
    float t = k < BANDS - 1 ? ldexpf(1.0f, -k) : 0.0f;
    int64_t keep;
    if (!nucleus(s, p, t, top_p, &keep) && t > 0.0f) nucleus(s, p, 0.0f, top_p, &keep);
    float cut = keep > 0 ? s->cand[keep - 1].p : 0.0f;
    int64_t kept_at_cut = 0;
    for (int64_t j = 0; j < keep; j++)
        kept_at_cut += s->cand[j].p == cut;
    /* zero everything outside the kept prefix (ties at the cut beyond it too) */
    for (int64_t i = 0; i < V; i++) {
        if (p[i] > cut) continue;
        if (p[i] == cut && kept_at_cut > 0) {
            kept_at_cut--;
            continue;
        }
        p[i] = 0.0f;
    }
}

const float *nmlx_sampler_probs(nmlx_sampler *s, const nmlx_sampler_params *prm,
                                const float *logits, const int32_t *history, size_t n_history) {
    int64_t V = s->vocab;
    float *p = s->work;
    memcpy(p, logits, (size_t)V * sizeof(float));

    if (prm->repetition_penalty != 1.0f && prm->repetition_context_size > 0) {
        size_t ctx = (size_t)prm->repetition_context_size;
        size_t from = n_history > ctx ? n_history - ctx : 0;
        for (size_t i = from; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= V) continue;
            /* applied once per distinct id: re-penalising a repeated id again
             * would compound the penalty */
            bool seen = false;
            for (size_t j = from; j < i && !seen; j++)
                seen = history[j] == id;
            if (seen) continue;
            p[id] = p[id] < 0 ? p[id] * prm->repetition_penalty : p[id] / prm->repetition_penalty;
        }
    }
    if (prm->temperature <= 0.0f) return p;

    /* softmax(logits / T); with top-k, over the k largest only: the others
     * are dropped anyway, and the later filters and the draw depend only on
     * ratios of the kept probabilities, so their normalisation is free.
     * Skipping the vocabulary-wide exp is most of the sampler's time. */
    float inv_t = 1.0f / prm->temperature, mx = -INFINITY;
    for (int64_t i = 0; i < V; i++) {
        p[i] *= inv_t;
        if (p[i] > mx) mx = p[i];
    }
    float kth = -INFINITY; /* logits below it are dropped (top-k) */
    if (prm->top_k > 0 && prm->top_k < V) {
        float *tmp = (float *)s->cand; /* at least vocab floats; reused as scratch */
        if (prm->top_k <= 256) {
            kth = kth_largest_small(p, V, prm->top_k, tmp);
        } else {
            memcpy(tmp, p, (size_t)V * sizeof(float));
            kth = kth_largest(tmp, V, prm->top_k);
        }
    }
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++) {
        p[i] = p[i] < kth ? 0.0f : expf(p[i] - mx);
        sum += p[i];
    }
    float inv = (float)(1.0 / sum), pmax = 0.0f;
    for (int64_t i = 0; i < V; i++) {
        p[i] *= inv;
        if (p[i] > pmax) pmax = p[i];
    }

    if (prm->min_p > 0.0f) {
        float floor_p = prm->min_p * pmax;
        for (int64_t i = 0; i < V; i++)
            if (p[i] < floor_p) p[i] = 0.0f;
    }
    if (prm->top_p < 1.0f) {
        double mass = 0.0;
        for (int64_t i = 0; i < V; i++)
            mass += p[i];
        for (int64_t i = 0; i < V; i++)
            p[i] = (float)(p[i] / mass);
        apply_top_p(s, p, prm->top_p);
    }

    return p;
}

double nmlx_sampler_uniform(nmlx_sampler *s) { return next_uniform(s); }

int32_t nmlx_sampler_sample(nmlx_sampler *s, const nmlx_sampler_params *prm, const float *logits,
                            const int32_t *history, size_t n_history) {
    /* the one draw of a sample, taken first: the filters use no randomness */
    double u = prm->temperature > 0.0f ? next_uniform(s) : 0.0;
    return nmlx_sampler_sample_u(s, prm, logits, history, n_history, u);
}

int32_t nmlx_sampler_sample_u(nmlx_sampler *s, const nmlx_sampler_params *prm, const float *logits,
                              const int32_t *history, size_t n_history, double u) {
    int64_t V = s->vocab;
    const float *p = nmlx_sampler_probs(s, prm, logits, history, n_history);
    if (prm->temperature <= 0.0f) return nmlx_argmax(p, V);
    double total = 0.0;
    for (int64_t i = 0; i < V; i++)
        total += p[i];
    double r = u * total, acc = 0.0;
    int64_t last = 0;
    for (int64_t i = 0; i < V; i++) {
        if (p[i] <= 0.0f) continue;
        acc += p[i];
        last = i;
        if (r < acc) return (int32_t)i;
    }
    return (int32_t)last;
}
