/* The two ends of a text model (see embed_head.h). */
#include "embed_head.h"

#include <stdio.h>
#include <string.h>

void nmlx_text_weight_prefix(const nmlx_weights *ws, const char **prefix, const char **head) {
    static const char *const prefixes[][2] = {
        {"model", "lm_head"},
        {"language_model.model", "language_model.lm_head"},
        {"model.language_model", "lm_head"},
    };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s.embed_tokens.weight", prefixes[i][0]);
        if (nmlx_weights_find(ws, name)) {
            *prefix = prefixes[i][0];
            *head = prefixes[i][1];
            return;
        }
    }
    *prefix = "model";
    *head = "lm_head";
}

nmlx_status nmlx_embed_head_load(nmlx_backend *be, const nmlx_weights *ws, const char *prefix,
                                 const char *head_name, int64_t vocab, int64_t hidden, bool tied,
                                 nmlx_weight *embed, nmlx_linear *lm_head) {
    char name[192];
    nmlx_status st;
    snprintf(name, sizeof name, "%s.embed_tokens", prefix);
    if ((st = nmlx_weight_load(embed, ws, name, vocab, hidden))) return st;
    if ((st = nmlx_weight_prepare(be, embed))) return st;
    if (tied) {
        lm_head->w = *embed;
        lm_head->bias = NULL;
        return NMLX_OK;
    }
    if ((st = nmlx_linear_load(lm_head, ws, head_name, vocab, hidden, false))) return st;
    return nmlx_linear_prepare(be, lm_head);
}

void nmlx_chunk_logits(nmlx_backend *be, const nmlx_text_head *h, const float *x, float *xn,
                       bool normed, float *dev, int64_t c0, int64_t C, int64_t T,
                       float *last_logits, float *all_logits) {
    int64_t D = h->hidden, V = h->vocab;
    bool last_chunk = c0 + C == T;
    if (all_logits) {
        if (!normed) nmlx_rmsnorm_forward(be, h->norm, x, xn, C, D);
        nmlx_lm_head_rows(be, h->lm_head, xn, C, D, V, h->softcap, dev, all_logits + c0 * V);
        if (last_chunk) memcpy(last_logits, all_logits + (T - 1) * V, (size_t)V * sizeof(float));
    } else if (last_chunk) {
        if (!normed) nmlx_rmsnorm_forward(be, h->norm, x + (C - 1) * D, xn, 1, D);
        nmlx_lm_head_rows(be, h->lm_head, xn, 1, D, V, h->softcap, dev, last_logits);
    }
}
