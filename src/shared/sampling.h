/* Token sampling: repetition penalty, temperature, top-k, top-p, min-p,
 * with a seeded xoshiro256** generator (same seed, same tokens). All work
 * buffers are allocated once (nmlx_sampler_init), none per token. */
#ifndef NMLX_SAMPLING_H
#define NMLX_SAMPLING_H

#include "common.h"

typedef struct nmlx_candidate {
    float p;
    int32_t id;
} nmlx_candidate;

typedef struct nmlx_sampler {
    int64_t vocab;
    float *work;           /* [vocab] */
    nmlx_candidate *cand;  /* [vocab] top-p candidates, also top-k scratch */
    uint64_t rng[4];
} nmlx_sampler;

nmlx_status nmlx_sampler_init(nmlx_sampler *s, int64_t vocab);
void nmlx_sampler_free(nmlx_sampler *s);
void nmlx_sampler_seed(nmlx_sampler *s, uint64_t seed);
/* Checks the parameters' ranges; message names the field. */
nmlx_status nmlx_sampler_validate(const nmlx_sampler_params *p);
/* Picks the next id from logits[vocab]. `history` (n_history ids, oldest
 * first) feeds the repetition penalty. */
int32_t nmlx_sampler_sample(nmlx_sampler *s, const nmlx_sampler_params *p, const float *logits,
                            const int32_t *history, size_t n_history);
/* The generator's next uniform in [0, 1): nmlx_sampler_sample takes one per
 * call at temperature > 0 (none when greedy), before anything else. */
double nmlx_sampler_uniform(nmlx_sampler *s);
/* nmlx_sampler_sample with that draw given: sample(s) equals sample_u(s,
 * u = uniform(s)) at temperature > 0, sample_u(s, 0) at 0. Device sampling
 * (backend.h sample) takes u from the session's generator, so a session's
 * random stream is the same wherever its logits lie. */
int32_t nmlx_sampler_sample_u(nmlx_sampler *s, const nmlx_sampler_params *p, const float *logits,
                              const int32_t *history, size_t n_history, double u);
/* What nmlx_sampler_sample draws from: the penalised logits when greedy
 * (temperature 0), else the filtered probabilities (zeros dropped, not
 * renormalised). Points into the sampler, valid until its next call. */
const float *nmlx_sampler_probs(nmlx_sampler *s, const nmlx_sampler_params *p,
                                const float *logits, const int32_t *history, size_t n_history);
/* Index of the largest logit (first one on ties, like torch.argmax). */
int32_t nmlx_argmax(const float *x, int64_t n);

#endif
