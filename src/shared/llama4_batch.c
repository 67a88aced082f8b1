/* Batched decode for the Llama 4 model (llama4_model.h): B sessions advance
 * by one token each in one pass. The projections, MLPs, the router and the
 * LM head run over the B rows together (each weight read once per step); the
 * routed experts run once per expert over the rows that chose it; RoPE,
 * temperature, the cache append and attention are per row, on that session's
 * own cache. On the CPU a matmul of fewer than 16 rows runs as per-row
 * mat-vecs, so a session's logits in a batch of up to 15 equal its logits
 * alone bit for bit. */
#include "llama4_model_impl.h"

typedef struct l4_batch {
    int64_t max_batch;
    float *x, *xn, *tmp, *gate, *up; /* [B, hidden], [B, widest MLP] */
    float *dev_logits;               /* [NMLX_LOGIT_ROWS, vocab] backend */
    nmlx_l4_buffers ab;              /* B rows; attention scratch is each session's */
    nmlx_l4_moe_buffers mb;
    bool has_mb;
    nmlx_l4_cache **caches; /* [B] one layer's cache of each session */
    float **scratch;        /* [B] each session's attention scratch */
} l4_batch;

void nmlx_l4_batch_free(void *batchp, nmlx_backend *be) {
    l4_batch *b = batchp;
    if (!b) return;
    if (b->has_mb) nmlx_l4_moe_buffers_free(&b->mb, be);
    void *bufs[] = {b->x,    b->xn,   b->tmp,  b->gate,   b->up,
                    b->ab.q, b->ab.k, b->ab.v, b->ab.ctx, b->dev_logits};
    nmlx_backend_free_bufs(be, bufs, sizeof bufs / sizeof bufs[0]);
    nmlx_free(b->caches);
    nmlx_free(b->scratch);
    nmlx_free(b);
}

nmlx_status nmlx_l4_batch_create(const void *archp, nmlx_backend *be, int64_t max_batch,
                                 void **batchp) {
    const l4_model *m = archp;
    nmlx_status st = NMLX_OK;
    l4_batch *b = nmlx_calloc(1, sizeof *b);
    CHECK(b, NMLX_ERR_NOMEM, "out of memory creating a batch");
    b->max_batch = max_batch;
    size_t B = (size_t)max_batch, f = sizeof(float), D = (size_t)m->hidden;
    size_t qdim = (size_t)(m->heads * m->head_dim), kvdim = (size_t)(m->kv_heads * m->head_dim);
    size_t inter = (size_t)(m->inter > m->inter_mlp ? m->inter : m->inter_mlp);
    b->x = be->ops->alloc(be, B * D * f);
    b->xn = be->ops->alloc(be, B * D * f);
    b->tmp = be->ops->alloc(be, B * D * f);
    b->gate = be->ops->alloc(be, B * inter * f);
    b->up = be->ops->alloc(be, B * inter * f);
    b->ab.q = be->ops->alloc(be, B * qdim * f);
    b->ab.k = be->ops->alloc(be, B * kvdim * f);
    b->ab.v = be->ops->alloc(be, B * kvdim * f);
    b->ab.ctx = be->ops->alloc(be, B * qdim * f);
    b->dev_logits = be->ops->alloc(be, NMLX_LOGIT_ROWS * (size_t)m->vocab * f);
    b->caches = nmlx_calloc(B, sizeof *b->caches);
    b->scratch = nmlx_calloc(B, sizeof *b->scratch);
    CHECK(b->x && b->xn && b->tmp && b->gate && b->up && b->ab.q && b->ab.k && b->ab.v &&
              b->ab.ctx && b->dev_logits && b->caches && b->scratch,
          NMLX_ERR_NOMEM, "out of memory for the buffers of a batch of %lld", (long long)max_batch);
    if (m->has_moe) {
        TRY(nmlx_l4_moe_buffers_alloc(&b->mb, be, max_batch, &m->moe));
        b->has_mb = true;
    }
    *batchp = b;
    b = NULL;
cleanup:
    nmlx_l4_batch_free(b, be);
    return st;
}

nmlx_status nmlx_l4_forward_batch(const void *archp, void *batchp, void *const *states,
                                  nmlx_backend *be, const int32_t *ids, int64_t B,
                                  float *const *logits) {
    const l4_model *m = archp;
    l4_batch *b = batchp;
    nmlx_status st = NMLX_OK;
    int64_t D = m->hidden;
    CHECK(B >= 1 && B <= b->max_batch, NMLX_ERR_INVALID_ARG,
          "batched decode of %lld sessions: the batch holds 1 to %lld", (long long)B,
          (long long)b->max_batch);
    TRY(nmlx_check_ids(ids, B, m->vocab));
    /* every cache checked first, so a failure leaves every session as it was */
    for (int64_t r = 0; r < B; r++) {
        l4_state *s = states[r];
        for (int64_t i = 0; i < m->n_layers; i++)
            TRY(nmlx_l4_cache_reserve(&s->caches[i], be, 1));
        b->scratch[r] = s->ab.scratch;
    }
    be->ops->embed(be, &m->embed, ids, B, 1.0f, b->x);
    for (int64_t i = 0; i < m->n_layers; i++) {
        const l4_layer *l = &m->layers[i];
        for (int64_t r = 0; r < B; r++)
            b->caches[r] = &((l4_state *)states[r])->caches[i];
        nmlx_rmsnorm_forward(be, &l->input_norm, b->x, b->xn, B, D);
        nmlx_l4_attention_forward_rows(be, &l->attn, b->caches, b->scratch, &b->ab, b->xn, b->tmp,
                                       B);
        be->ops->add(be, b->x, b->tmp, b->x, B * D);
        nmlx_rmsnorm_forward(be, &l->post_attn_norm, b->x, b->xn, B, D);
        if (l->is_moe)
            nmlx_l4_moe_forward(be, &l->moe, &b->mb, b->xn, b->gate, b->up, b->tmp, B);
        else
            nmlx_mlp_forward(be, &l->mlp, b->xn, b->gate, b->up, b->tmp, B);
        be->ops->add(be, b->x, b->tmp, b->x, B * D);
    }
    nmlx_rmsnorm_forward(be, &m->norm, b->x, b->xn, B, D);
    nmlx_lm_head_scatter(be, &m->lm_head, b->xn, B, D, m->vocab, 0.0f, b->dev_logits, logits);
cleanup:
    return st;
}
