/* nmlx_tokenize: the encode pipeline, and the vocabulary queries.
 *
 * Invalid UTF-8 input is not rejected: each maximal invalid subsequence is
 * replaced by U+FFFD first, which is what a JS caller of the reference gets
 * (Buffer/TextDecoder conversion to a string does exactly that). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static nmlx_status normalize_pieces(const nmlx_tokenizer *tok, tok_work *w, const char *src) {
    nmlx_status st;
    w->b.n = 0;
    for (size_t i = 0; i < w->a.n; i++) {
        tok_piece p = w->a.v[i];
        if (p.id >= 0) {
            if ((st = tok_pieces_push(&w->b, p.off, p.len, p.id, p.at_start))) return st;
            continue;
        }
        size_t before = w->arena.len;
        if ((st = tok_normalize(tok, w, src + p.off, p.len, &w->arena))) return st;
        size_t n = w->arena.len - before;
        if (w->arena.len > UINT32_MAX)
            return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_tokenize: normalized text is too long");
        if (n && (st = tok_pieces_push(&w->b, (uint32_t)before, (uint32_t)n, -1, p.at_start)))
            return st;
    }
    tok_pieces t = w->a;
    w->a = w->b;
    w->b = t;
    return NMLX_OK;
}

static nmlx_status encode(const nmlx_tokenizer *tok, tok_work *w, const char *src, size_t len) {
    nmlx_status st;
    /* piece offsets are 32-bit; normalizers may grow the text a few times */
    if (len > UINT32_MAX / 8)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_tokenize: text of %zu bytes is too long", len);
    if ((st = tok_buf_append(&w->arena, src, len))) return st;
    if (len && (st = tok_pieces_push(&w->a, 0, (uint32_t)len, -1, 1))) return st;
    if (tok->has_raw_added && (st = tok_split_added(tok, w, 0))) return st;
    if (tok->n_norms && (st = normalize_pieces(tok, w, src))) return st;
    if (tok->has_norm_added && (st = tok_split_added(tok, w, 1))) return st;
    if ((st = tok_pretokenize(tok, w))) return st;
    for (size_t i = 0; i < w->a.n; i++) {
        const tok_piece *p = &w->a.v[i];
        if (p->id >= 0)
            st = tok_work_push_id(w, p->id);
        else
            st = tok_bpe_word(tok, w, w->arena.p + p->off, p->len);
        if (st) return st;
    }
    return NMLX_OK;
}

nmlx_status nmlx_tokenize(const nmlx_tokenizer *tok, const char *text, size_t len, int add_special,
                          int32_t **ids, size_t *n_ids) {
    if (!tok || !ids || !n_ids || (!text && len))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_tokenize: NULL argument");
    nmlx_status st;
    tok_work w = {0};
    tok_buf fixed = {0};
    int32_t *out = NULL;
    const char *src = text ? text : "";
    if (!tok_utf8_valid(src, len)) {
        TRY(tok_utf8_repair(src, len, &fixed));
        src = fixed.p;
        len = fixed.len;
    }
    nmlx_tokenizer *mut = (nmlx_tokenizer *)tok; /* the cache is internally locked */
    if (mut->cache.ready && pthread_mutex_trylock(&mut->cache.lock) == 0) w.cache = &mut->cache;
    st = encode(tok, &w, src, len);
    if (w.cache) pthread_mutex_unlock(&mut->cache.lock);
    if (st != NMLX_OK) goto cleanup;
    size_t n = w.n_ids + (add_special ? tok->n_post_prefix + tok->n_post_suffix : 0);
    out = nmlx_malloc((n ? n : 1) * sizeof *out);
    CHECK(out, NMLX_ERR_NOMEM, "nmlx_tokenize: out of memory");
    size_t k = 0;
    if (add_special)
        for (size_t i = 0; i < tok->n_post_prefix; i++)
            out[k++] = tok->post_prefix[i];
    if (w.n_ids) memcpy(out + k, w.ids, w.n_ids * sizeof *out);
    k += w.n_ids;
    if (add_special)
        for (size_t i = 0; i < tok->n_post_suffix; i++)
            out[k++] = tok->post_suffix[i];
    *ids = out;
    *n_ids = k;
    out = NULL;
cleanup:
    free(out);
    tok_buf_free(&fixed);
    tok_work_free(&w);
    return st;
}

int32_t nmlx_tokenizer_vocab_size(const nmlx_tokenizer *tok) { return tok ? tok->n_ids : 0; }

const char *nmlx_tokenizer_id_to_token(const nmlx_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_ids || tok->tok_len[id] == UINT32_MAX) return NULL;
    return tok->pool + tok->tok_off[id];
}

int32_t nmlx_tokenizer_token_to_id(const nmlx_tokenizer *tok, const char *token) {
    if (!tok || !token) return -1;
    size_t n = strlen(token);
    int32_t id = tok_map_get(&tok->added_map, token, n);
    return id >= 0 ? id : tok_map_get(&tok->bpe.vocab, token, n);
}

int32_t nmlx_tokenizer_bos_id(const nmlx_tokenizer *tok) { return tok ? tok->bos_id : -1; }
int32_t nmlx_tokenizer_eos_id(const nmlx_tokenizer *tok) { return tok ? tok->eos_id : -1; }

int nmlx_tokenizer_is_special(const nmlx_tokenizer *tok, int32_t id) {
    return tok && id >= 0 && id < tok->n_ids && tok->special[id];
}
