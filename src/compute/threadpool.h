/* A persistent pthread worker pool: threads are created once and reused for
 * every op (no thread creation in the decode loop). */
#ifndef NMLX_THREADPOOL_H
#define NMLX_THREADPOOL_H

typedef struct nmlx_pool nmlx_pool;

/* fn(ctx, ith, nth) runs once on each of nth threads (the caller is thread
 * 0); each call computes its own share (ggml style). */
typedef void (*nmlx_pool_fn)(void *ctx, int ith, int nth);

/* NULL on failure (message recorded). n_threads >= 1. */
nmlx_pool *nmlx_pool_create(int n_threads);
void nmlx_pool_free(nmlx_pool *pool);
int nmlx_pool_size(const nmlx_pool *pool);
/* Runs fn on all threads and returns when all are done. Calls from several
 * threads are serialised. n_threads may be lowered per call with
 * nmlx_pool_run_n (1 <= nth <= size). */
void nmlx_pool_run(nmlx_pool *pool, nmlx_pool_fn fn, void *ctx);
void nmlx_pool_run_n(nmlx_pool *pool, nmlx_pool_fn fn, void *ctx, int nth);

#endif
