/* KV cache of a chunked-attention layer (Llama 4): a query at position p
 * sees the keys at positions [p - p % chunk, p], so only the chunk in
 * progress (the "live" chunk) is ever read. The cache holds exactly that
 * chunk: rows [0, offset - start) are positions [start, offset), with
 * start = the live chunk's first position; a token that starts a new chunk
 * empties it. Memory: min(chunk, max_context) rows, allocated once.
 *
 * mlx-lm's ChunkedKVCache (mlx_lm/models/cache.py) keeps the last `chunk`
 * tokens and masks by chunk; this one keeps the live chunk only, so callers
 * must split a call at chunk boundaries (nmlx_chunked_kv_cache_room tells
 * how many tokens fit before the next one) and attend with no extra mask.
 *
 * Trim: exact within the live chunk. Trimming to a position before it drops
 * rows this cache no longer has: the state is then "lost" (reserve fails
 * with a clear message) until a trim or reset lands on a chunk boundary
 * (position 0 included), from where nothing earlier is needed. */
#ifndef NMLX_CHUNKED_KV_CACHE_H
#define NMLX_CHUNKED_KV_CACHE_H

#include "ported/rotating_kv_cache.h" /* nmlx_kv_view */

typedef struct nmlx_chunked_kv_cache {
    float *keys, *values; /* [kv_heads, cap, head_dim], backend buffers */
    int64_t kv_heads, head_dim, chunk, cap, max_context;
    int64_t offset; /* tokens seen: position of the next token */
    int64_t start;  /* position held in row 0 (a multiple of chunk) */
    int64_t valid;  /* rows holding tokens: offset - start unless lost */
} nmlx_chunked_kv_cache;

nmlx_status nmlx_chunked_kv_cache_init(nmlx_chunked_kv_cache *c, nmlx_backend *be, int64_t kv_heads,
                                       int64_t head_dim, int64_t chunk, int64_t max_context);
void nmlx_chunked_kv_cache_free(nmlx_chunked_kv_cache *c, nmlx_backend *be);
/* Context check for n more tokens; fails if a trim lost rows (see above). */
nmlx_status nmlx_chunked_kv_cache_reserve(const nmlx_chunked_kv_cache *c, int64_t n);
/* Tokens that can be appended before the live chunk ends (1..chunk). */
int64_t nmlx_chunked_kv_cache_room(const nmlx_chunked_kv_cache *c);
/* Stores k, v [T, kv_heads, head_dim] at the next T positions, which must
 * lie in one chunk (T <= room). The view: query t sits at row q_row + t and
 * sees rows 0..q_row + t (window 0). */
void nmlx_chunked_kv_cache_update(nmlx_chunked_kv_cache *c, nmlx_backend *be, const float *k,
                                  const float *v, int64_t T, nmlx_kv_view *view);
/* Drops the last n positions (clamped to offset); returns how many. */
int64_t nmlx_chunked_kv_cache_trim(nmlx_chunked_kv_cache *c, int64_t n);

#endif
