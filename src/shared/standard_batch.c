/* Batched decode for the standard model (standard_model.h): B sessions
 * advance by one token each in one pass. Every matmul runs over the B rows
 * together, so each weight is read once per step instead of once per
 * session; RoPE, the cache append and attention are per row, on that
 * session's own cache. On the CPU a matmul of fewer than 24 rows runs as
 * few-token mat-vecs (cpu_ops.c), so a session's logits in a batch of up to
 * 23 equal its logits alone bit for bit. */
#include "standard_model_impl.h"

typedef struct std_batch {
    int64_t max_batch;
    float *x;                  /* [B, hidden] residual stream */
    float *dev_logits;         /* [NMLX_LOGIT_ROWS, vocab] backend */
    nmlx_decoder_buffers buf;  /* B rows; attention scratch is each session's */
    nmlx_layer_cache **caches; /* [B] one layer's cache of each session */
    float **scratch;           /* [B] each session's attention scratch */
} std_batch;

void nmlx_std_batch_free(void *batchp, nmlx_backend *be) {
    std_batch *b = batchp;
    if (!b) return;
    if (b->buf.moe) nmlx_moe_buffers_free(b->buf.moe, be);
    nmlx_free(b->buf.moe);
    float *bufs[] = {b->x,      b->dev_logits, b->buf.xn,     b->buf.tmp,    b->buf.gate,
                     b->buf.up, b->buf.attn.q, b->buf.attn.k, b->buf.attn.v, b->buf.attn.ctx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->ops->free(be, bufs[i]);
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
    size_t B = (size_t)max_batch, f = sizeof(float);
    size_t qdim = (size_t)(m->heads * m->head_dim), kvdim = (size_t)(m->kv_heads * m->head_dim);
    b->x = be->ops->alloc(be, B * (size_t)m->hidden * f);
    b->dev_logits = be->ops->alloc(be, NMLX_LOGIT_ROWS * (size_t)m->vocab * f);
    b->buf.xn = be->ops->alloc(be, B * (size_t)m->hidden * f);
    b->buf.tmp = be->ops->alloc(be, B * (size_t)m->hidden * f);
    b->buf.gate = be->ops->alloc(be, B * (size_t)m->intermediate * f);
    b->buf.up = be->ops->alloc(be, B * (size_t)m->intermediate * f);
    b->buf.attn.q = be->ops->alloc(be, B * qdim * f);
    b->buf.attn.k = be->ops->alloc(be, B * kvdim * f);
    b->buf.attn.v = be->ops->alloc(be, B * kvdim * f);
    b->buf.attn.ctx = be->ops->alloc(be, B * qdim * f);
    b->caches = nmlx_calloc(B, sizeof *b->caches);
    b->scratch = nmlx_calloc(B, sizeof *b->scratch);
    CHECK(b->x && b->dev_logits && b->buf.xn && b->buf.tmp && b->buf.gate && b->buf.up &&
              b->buf.attn.q && b->buf.attn.k && b->buf.attn.v && b->buf.attn.ctx && b->caches &&
              b->scratch,
          NMLX_ERR_NOMEM, "out of memory for the buffers of a batch of %lld", (long long)max_batch);
    if (m->has_moe) {
        b->buf.moe = nmlx_calloc(1, sizeof *b->buf.moe);
        CHECK(b->buf.moe, NMLX_ERR_NOMEM, "out of memory creating a batch");
        TRY(nmlx_moe_buffers_alloc(b->buf.moe, be, max_batch, &m->moe));
    }
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
    CHECK(B >= 1 && B <= b->max_batch, NMLX_ERR_INVALID_ARG,
          "batched decode of %lld sessions: the batch holds 1 to %lld", (long long)B,
          (long long)b->max_batch);
    TRY(nmlx_check_ids(ids, B, m->vocab));
    /* Room in every cache first, so a failure leaves every session as it was
     * (reserving only grows capacity). */
    for (int64_t r = 0; r < B; r++) {
        std_state *s = states[r];
        for (int64_t i = 0; i < m->n_layers; i++)
            TRY(nmlx_layer_cache_reserve(&s->caches[i], be, 1));
        b->scratch[r] = s->buf.attn.scratch;
    }
    be->ops->embed(be, &m->embed, ids, B, m->embed_scale, b->x);
    for (int64_t i = 0; i < m->n_layers; i++) {
        for (int64_t r = 0; r < B; r++)
            b->caches[r] = &((std_state *)states[r])->caches[i];
        nmlx_decoder_layer_forward_rows(be, &m->layers[i], b->caches, b->scratch, &b->buf, b->x, B);
    }
    nmlx_rmsnorm_forward(be, &m->norm, b->x, b->buf.xn, B, m->hidden);
    nmlx_lm_head_scatter(be, &m->lm_head, b->buf.xn, B, m->hidden, m->vocab, m->final_softcap,
                         b->dev_logits, logits);
cleanup:
    return st;
}
