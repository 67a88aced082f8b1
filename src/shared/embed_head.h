/* The two ends of a text model that the standard and Llama 4 skeletons
 * share: where the checkpoint keeps the text model's weights, the token
 * embedding with the LM head (tied or not), and the logits of one chunk of
 * a forward pass (final norm + LM head over the rows asked for; Gemma 3n's
 * too). */
#ifndef NMLX_EMBED_HEAD_H
#define NMLX_EMBED_HEAD_H

#include "layers.h"

/* Where the text model's weights live: "model." (causal LM), or the
 * language model of a multimodal checkpoint (hub: "language_model.model.",
 * transformers 5 in memory: "model.language_model."), found by its
 * embed_tokens; *head names the LM head that goes with it. None found:
 * "model" / "lm_head" (the load then names the missing tensor). */
void nmlx_text_weight_prefix(const nmlx_weights *ws, const char **prefix, const char **head);

/* `<prefix>.embed_tokens` [vocab, hidden] (dense or quantized) and the LM
 * head: `<head_name>` [vocab, hidden] without bias, or the embedding itself
 * when tied; each handed to the backend (layers.h *_prepare) as loaded. */
nmlx_status nmlx_embed_head_load(nmlx_backend *be, const nmlx_weights *ws, const char *prefix,
                                 const char *head_name, int64_t vocab, int64_t hidden, bool tied,
                                 nmlx_weight *embed, nmlx_linear *lm_head);

/* A model's output end: final norm, LM head, soft-cap (0 = none). */
typedef struct nmlx_text_head {
    const nmlx_rmsnorm *norm;
    const nmlx_linear *lm_head;
    int64_t hidden, vocab;
    float softcap;
} nmlx_text_head;

/* Logits of the chunk of C tokens at c0 of a T-token forward, whose last
 * hidden states are x [C, hidden]: with all_logits, every row's into
 * all_logits [T, vocab] (and, in the last chunk, the last row's into
 * last_logits too); without, only the last row of the last chunk, into
 * last_logits. The rows read are normed into xn [C, hidden] first, unless
 * `normed` (the layer chain's closing norm wrote them there:
 * decoder_layer.h). dev: the backend logits buffer (nmlx_lm_head_rows). */
void nmlx_chunk_logits(nmlx_backend *be, const nmlx_text_head *h, const float *x, float *xn,
                       bool normed, float *dev, int64_t c0, int64_t C, int64_t T,
                       float *last_logits, float *all_logits);

#endif
