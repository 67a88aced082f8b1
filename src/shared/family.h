/* The contract between generated model files and the rest of the library.
 * A generated file (src/generated/models/<family>.c) defines one
 * `const nmlx_family nmlx_family_<name>` that names its model_type strings
 * and binds implementation functions: the shared standard ones for simple
 * families, its own for complex ones. src/generated/registry.c lists them. */
#ifndef NMLX_FAMILY_H
#define NMLX_FAMILY_H

#include "common.h"
#include "compute/backend.h"
#include "io/config.h"
#include "io/safetensors.h"

#include <stdatomic.h>

/* What a family's implementation gets at load time. */
typedef struct nmlx_load_ctx {
    const nmlx_cfg *cfg;         /* config.json */
    const nmlx_weights *weights; /* all tensors of the checkpoint */
    nmlx_backend *be;
} nmlx_load_ctx;

/* Read-only facts every architecture reports after build. */
typedef struct nmlx_arch_info {
    int64_t vocab_size;
    int64_t max_position_embeddings;
    /* KV cache bytes one session needs per token held: layers with full
     * attention grow with the context, sliding layers up to kv_window
     * tokens (0 = none). Sessions check a context against memory with it. */
    int64_t kv_full_bytes_per_token, kv_sliding_bytes_per_token, kv_window;
} nmlx_arch_info;

/* Counts one layer's f32 KV cache (kv_heads x head_dim keys and values a
 * token) in info: a full one, or a sliding one holding up to `window`
 * tokens. */
static inline void nmlx_arch_info_add_kv(nmlx_arch_info *info, int64_t kv_heads, int64_t head_dim,
                                         bool sliding, int64_t window) {
    int64_t bpt = 2 * kv_heads * head_dim * (int64_t)sizeof(float);
    if (sliding) {
        info->kv_sliding_bytes_per_token += bpt;
        if (window > info->kv_window) info->kv_window = window;
    } else {
        info->kv_full_bytes_per_token += bpt;
    }
}

typedef struct nmlx_family {
    const char *name;               /* "llama" */
    const char *const *model_types; /* NULL-terminated config model_type strings */
    const void *def;                /* family constants (features, config defaults) */

    /* Validates config + weights and builds the architecture (weights
     * referenced, not copied). */
    nmlx_status (*build)(const void *def, const nmlx_load_ctx *ctx, void **arch,
                         nmlx_arch_info *info);
    void (*destroy)(void *arch, nmlx_backend *be);

    /* Per-session state: caches and activation buffers for max_context. */
    nmlx_status (*state_create)(const void *arch, nmlx_backend *be, int64_t max_context,
                                void **state);
    void (*state_free)(void *state, nmlx_backend *be);
    /* Tokens held in the state's caches. */
    int64_t (*state_position)(const void *state);
    /* Drops the last n positions. */
    void (*state_trim)(void *state, int64_t n);
    /* Optional: the state's per-layer caches (session kv_bits configures
     * them before the first forward). NULL: the family's KV cannot be
     * quantized and kv_bits fails. */
    struct nmlx_layer_cache *(*state_caches)(void *state, int64_t *n_layers);

    /* Runs T tokens from the current position. Writes logits of the last
     * token to last_logits[V], and if all_logits != NULL the logits of every
     * token to all_logits[T, V] (host memory). Checks *cancel between layers
     * and returns NMLX_ERR_CANCELLED if set (state then rolled back). */
    nmlx_status (*forward)(const void *arch, void *state, nmlx_backend *be, const int32_t *ids,
                           int64_t T, float *last_logits, float *all_logits, atomic_bool *cancel);

    /* Optional batched decode (NULL: sessions are advanced one at a time).
     * batch_create allocates work buffers for up to max_batch rows.
     * forward_batch runs ids[b] at states[b]'s position for B distinct
     * states of this architecture in one pass that reads each weight once,
     * writing each row's logits to logits[b] (host, V floats). It reserves
     * cache room first, so on failure no state has moved. It does not check
     * cancel flags: a step is one token. */
    nmlx_status (*batch_create)(const void *arch, nmlx_backend *be, int64_t max_batch,
                                void **batch);
    void (*batch_free)(void *batch, nmlx_backend *be);
    nmlx_status (*forward_batch)(const void *arch, void *batch, void *const *states,
                                 nmlx_backend *be, const int32_t *ids, int64_t B,
                                 float *const *logits);
} nmlx_family;

/* NULL-terminated list of all families (src/generated/registry.c). */
extern const nmlx_family *const nmlx_families[];

#endif
