/* Batched decode for the standard model (standard_model.h): B sessions
 * advance by one token each in one pass. Every matmul runs over the B rows
 * together, so each weight is read once per step instead of once per
 * session; RoPE, the cache append and attention are per row, on that
 * session's own cache (one rope_rows / attention_rows call for all rows on
 * a backend that has them: CUDA). Everything goes through backend ops on
 * backend buffers (ids staged by embed, logits downloaded per row), so the
 * pass runs on device backends too. On the CPU a matmul of fewer than 24
 * rows runs as few-token mat-vecs (cpu_ops.c), so a session's logits in a
 * batch of up to 23 equal its logits alone bit for bit; on CUDA they agree
 * to rounding (nmlx.h: nmlx_batch_eval). */
#include "standard_model_impl.h"

typedef struct std_batch {
    int64_t max_batch;
    std_buffers w;             /* B rows; attention scratch is each session's */
    nmlx_layer_cache **caches; /* [B] one layer's cache of each session */
    float **scratch;           /* [B] each session's attention scratch */
} std_batch;

void nmlx_std_batch_free(void *batchp, nmlx_backend *be) {
    std_batch *b = batchp;
    if (!b) return;
    std_buffers_free(&b->w, be);
    nmlx_free(b->caches);
    nmlx_free(b->scratch);
    nmlx_free(b);
}

nmlx_status nmlx_std_batch_create(const void *archp, nmlx_backend *be, int64_t max_batch,
                                  void **batchp) {
    const std_model *m = archp;
    nmlx_status st = NMLX_OK;
    std_batch *b = nmlx_calloc(1, sizeof *b);
    CHECK(b, NMLX_ERR_NOMEM, "out of memory creating a batch");
    b->max_batch = max_batch;
    b->caches = nmlx_calloc((size_t)max_batch, sizeof *b->caches);
    b->scratch = nmlx_calloc((size_t)max_batch, sizeof *b->scratch);
    CHECK(b->caches && b->scratch, NMLX_ERR_NOMEM, "out of memory creating a batch");
    TRY(std_buffers_alloc(m, be, max_batch, &b->w));
    *batchp = b;
    b = NULL;
cleanup:
    nmlx_std_batch_free(b, be);
    return st;
}

nmlx_status nmlx_std_forward_batch(const void *archp, void *batchp, void *const *states,
                                   nmlx_backend *be, const int32_t *ids, int64_t B,
                                   float *const *logits) {
    const std_model *m = archp;
    std_batch *b = batchp;
    nmlx_status st = NMLX_OK;
    TRY(nmlx_check_batch(ids, B, b->max_batch, m->vocab));
    /* Room in every cache first, so a failure leaves every session as it was
     * (reserving only grows capacity). */
    for (int64_t r = 0; r < B; r++) {
        std_state *s = states[r];
        for (int64_t i = 0; i < m->n_layers; i++)
            TRY(nmlx_layer_cache_reserve(&s->caches[i], be, 1));
        b->scratch[r] = s->w.buf.attn.scratch;
    }
    be->ops->embed(be, &m->embed, ids, B, m->embed_scale, b->w.x);
    for (int64_t i = 0; i < m->n_layers; i++) {
        for (int64_t r = 0; r < B; r++)
            b->caches[r] = &((std_state *)states[r])->caches[i];
        const nmlx_rmsnorm *next = i + 1 < m->n_layers ? &m->layers[i + 1].input_norm : &m->norm;
        nmlx_decoder_layer_forward_rows(be, &m->layers[i], b->caches, b->scratch, &b->w.buf, b->w.x,
                                        B, i > 0, next); /* chained: decoder_layer.h */
    }
    if (m->n_layers == 0) nmlx_rmsnorm_forward(be, &m->norm, b->w.x, b->w.buf.xn, B, m->hidden);
    nmlx_lm_head_scatter(be, &m->lm_head, b->w.buf.xn, B, m->hidden, m->vocab, m->final_softcap,
                         b->w.logits, logits);
cleanup:
    return st;
}
