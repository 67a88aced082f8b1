/* KV cache of a chunked-attention layer (Llama 4): a query at position p
 * sees the keys at positions [p - p % chunk, p], so attention only ever
 * reads the chunk in progress (the "live" chunk). The cache keeps the live
 * chunk and the one before it, in two slots of `chunk` rows: chunk k lives
 * in slot k % 2, row p - k * chunk, so each chunk is contiguous and
 * attention reads it with no extra mask. The chunk before is kept only so
 * that trims (a cancelled or failed call rolled back, nmlx_session_trim,
 * a batch step undone) stay exact across one chunk boundary. Memory:
 * min(2 * chunk, max_context) rows, allocated once; with a context of at most
 * one chunk that is the context.
 *
 * mlx-lm's ChunkedKVCache (mlx_lm/models/cache.py) keeps the last `chunk`
 * tokens and masks by chunk; here callers split a call at chunk boundaries
 * (nmlx_chunked_kv_cache_room tells how many tokens fit before the next one).
 *
 * Trims back into the chunk before are exact. Trimming further back leaves
 * positions whose rows are gone: reserve then fails with a clear message
 * until a trim or reset lands on a chunk boundary (position 0 included),
 * from where nothing earlier is needed. */
#ifndef NMLX_CHUNKED_KV_CACHE_H
#define NMLX_CHUNKED_KV_CACHE_H

#include "ported/rotating_kv_cache.h" /* nmlx_kv_view */

typedef struct nmlx_chunked_kv_cache {
    float *keys, *values; /* [kv_heads, cap, head_dim], backend buffers */
    int64_t kv_heads, head_dim, chunk, cap, max_context;
    int64_t offset; /* tokens seen: position of the next token */
    int64_t lo;     /* positions [lo, offset) have their rows */
} nmlx_chunked_kv_cache;

nmlx_status nmlx_chunked_kv_cache_init(nmlx_chunked_kv_cache *c, nmlx_backend *be, int64_t kv_heads,
                                       int64_t head_dim, int64_t chunk, int64_t max_context);
void nmlx_chunked_kv_cache_free(nmlx_chunked_kv_cache *c, nmlx_backend *be);
/* Context check for n more tokens; fails if a trim lost the live chunk's
 * rows (see above). */
nmlx_status nmlx_chunked_kv_cache_reserve(const nmlx_chunked_kv_cache *c, int64_t n);
/* Tokens that can be appended before the live chunk ends (1..chunk). */
int64_t nmlx_chunked_kv_cache_room(const nmlx_chunked_kv_cache *c);
/* Stores k, v [T, kv_heads, head_dim] at the next T positions, which must
 * lie in one chunk (T <= room). The view holds the live chunk: query t
 * sits at row q_row + t and sees rows 0..q_row + t (window 0). */
void nmlx_chunked_kv_cache_update(nmlx_chunked_kv_cache *c, nmlx_backend *be, const float *k,
                                  const float *v, int64_t T, nmlx_kv_view *view);
/* Drops the last n positions (clamped to offset); returns how many. */
int64_t nmlx_chunked_kv_cache_trim(nmlx_chunked_kv_cache *c, int64_t n);

#endif
