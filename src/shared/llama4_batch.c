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
    l4_buffers w;           /* B rows; attention scratch is each session's */
    nmlx_l4_cache **caches; /* [B] one layer's cache of each session */
    float **scratch;        /* [B] each session's attention scratch */
} l4_batch;

void nmlx_l4_batch_free(void *batchp, nmlx_backend *be) {
    l4_batch *b = batchp;
    if (!b) return;
    l4_buffers_free(&b->w, be);
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
    bool ok = l4_buffers_alloc(m, be, max_batch, &b->w);
    b->caches = nmlx_calloc((size_t)max_batch, sizeof *b->caches);
    b->scratch = nmlx_calloc((size_t)max_batch, sizeof *b->scratch);
    CHECK(ok && b->caches && b->scratch, NMLX_ERR_NOMEM,
          "out of memory for the buffers of a batch of %lld", (long long)max_batch);
    TRY(l4_moe_buffers_alloc(m, be, max_batch, &b->w));
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
    TRY(nmlx_check_batch(ids, B, b->max_batch, m->vocab));
    /* every cache checked first, so a failure leaves every session as it was */
    for (int64_t r = 0; r < B; r++) {
        l4_state *s = states[r];
        for (int64_t i = 0; i < m->n_layers; i++)
            TRY(nmlx_l4_cache_reserve(&s->caches[i], be, 1));
        b->scratch[r] = s->w.ab.scratch;
    }
    l4_buffers *w = &b->w;
    be->ops->embed(be, &m->embed, ids, B, 1.0f, w->x);
    for (int64_t i = 0; i < m->n_layers; i++) {
        const l4_layer *l = &m->layers[i];
        for (int64_t r = 0; r < B; r++)
            b->caches[r] = &((l4_state *)states[r])->caches[i];
        nmlx_rmsnorm_forward(be, &l->input_norm, w->x, w->xn, B, D);
        nmlx_l4_attention_forward_rows(be, &l->attn, b->caches, b->scratch, &w->ab, w->xn, w->tmp,
                                       B);
        be->ops->add(be, w->x, w->tmp, w->x, B * D);
        l4_ffn_residual(be, m, l, w, B);
    }
    nmlx_rmsnorm_forward(be, &m->norm, w->x, w->xn, B, D);
    nmlx_lm_head_scatter(be, &m->lm_head, w->xn, B, D, m->vocab, 0.0f, w->logits, logits);
cleanup:
    return st;
}
