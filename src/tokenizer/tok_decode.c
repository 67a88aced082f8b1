/* Decoding: ids -> token strings -> decoder chain (ByteLevel, ByteFallback,
 * Metaspace, Replace, Fuse, Strip) -> text; and the streaming detokenizer,
 * which re-decodes a short window of ids the way the reference's
 * DecodeStream does, so its pieces add up to the whole-sequence decode. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* A list of strings stored in one buffer. */
typedef struct slist {
    tok_buf buf;
    size_t *off, *len;
    size_t n, cap;
} slist;

static void slist_free(slist *l) {
    tok_buf_free(&l->buf);
    free(l->off);
    free(l->len);
    memset(l, 0, sizeof *l);
}

static nmlx_status slist_begin(slist *l) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *o = nmlx_realloc(l->off, cap * sizeof *o);
        if (!o) return nmlx_fail(NMLX_ERR_NOMEM, "detokenize: out of memory");
        l->off = o;
        size_t *n = nmlx_realloc(l->len, cap * sizeof *n);
        if (!n) return nmlx_fail(NMLX_ERR_NOMEM, "detokenize: out of memory");
        l->len = n;
        l->cap = cap;
    }
    l->off[l->n] = l->buf.len;
    l->len[l->n] = 0;
    l->n++;
    return NMLX_OK;
}

/* Appends bytes to the last string of the list. */
static nmlx_status slist_add(slist *l, const char *s, size_t n) {
    nmlx_status st = tok_buf_append(&l->buf, s, n);
    if (st == NMLX_OK) l->len[l->n - 1] += n;
    return st;
}

static nmlx_status slist_push(slist *l, const char *s, size_t n) {
    nmlx_status st = slist_begin(l);
    return st ? st : slist_add(l, s, n);
}

/* An all-empty list has no buffer yet: NULL + 0 is undefined. */
static const char *sl_str(const slist *l, size_t i) {
    return l->buf.p ? l->buf.p + l->off[i] : "";
}

static nmlx_status dec_bytelevel(const slist *in, slist *out) {
    nmlx_status st;
    tok_buf raw = {0};
    for (size_t i = 0; i < in->n; i++) {
        const char *s = sl_str(in, i);
        size_t n = in->len[i], start = raw.len;
        int ok = 1;
        if ((st = tok_buf_reserve(&raw, n))) goto done;
        for (size_t j = 0; j < n;) {
            int len;
            uint32_t cp = tok_utf8_decode(s + j, n - j, &len);
            int b = tok_cp_to_byte(cp);
            if (b < 0) {
                ok = 0;
                break;
            }
            raw.p[raw.len++] = (char)b;
            j += (size_t)len;
        }
        if (!ok) { /* a char outside the alphabet: the token's own bytes */
            raw.len = start;
            if ((st = tok_buf_append(&raw, s, n))) goto done;
        }
    }
    if ((st = slist_begin(out))) goto done;
    {
        size_t before = out->buf.len;
        if ((st = tok_utf8_repair(raw.p ? raw.p : "", raw.len, &out->buf))) goto done;
        out->len[out->n - 1] = out->buf.len - before;
    }
done:
    tok_buf_free(&raw);
    return st;
}

static int byte_token(const char *s, size_t n, uint8_t *b) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int h = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (h < 0) return 0;
        v = v * 16 + h;
    }
    *b = (uint8_t)v;
    return 1;
}

static nmlx_status flush_bytes(slist *out, tok_buf *pend) {
    nmlx_status st = NMLX_OK;
    if (!pend->len) return st;
    if (tok_utf8_valid(pend->p, pend->len)) {
        st = slist_push(out, pend->p, pend->len);
    } else {
        for (size_t i = 0; i < pend->len && !st; i++)
            st = slist_push(out, "\xEF\xBF\xBD", 3);
    }
    pend->len = 0;
    return st;
}

static nmlx_status dec_bytefallback(const slist *in, slist *out) {
    nmlx_status st = NMLX_OK;
    tok_buf pend = {0};
    for (size_t i = 0; i < in->n && !st; i++) {
        uint8_t b;
        if (byte_token(sl_str(in, i), in->len[i], &b)) {
            st = tok_buf_append(&pend, &b, 1);
            continue;
        }
        if ((st = flush_bytes(out, &pend))) break;
        st = slist_push(out, sl_str(in, i), in->len[i]);
    }
    if (!st) st = flush_bytes(out, &pend);
    tok_buf_free(&pend);
    return st;
}

static nmlx_status dec_metaspace(const tok_decoder *d, const slist *in, slist *out) {
    nmlx_status st;
    for (size_t i = 0; i < in->n; i++) {
        const char *s = sl_str(in, i);
        size_t n = in->len[i], j = 0;
        if ((st = slist_begin(out))) return st;
        while (j < n) {
            if (n - j >= (size_t)d->rep_len && !memcmp(s + j, d->rep, (size_t)d->rep_len)) {
                if (!(i == 0 && d->prepend_scheme != PREPEND_NEVER) &&
                    (st = slist_add(out, " ", 1)))
                    return st;
                j += (size_t)d->rep_len;
            } else {
                size_t l = (size_t)tok_utf8_len((unsigned char)s[j]);
                if (l > n - j) l = n - j;
                if ((st = slist_add(out, s + j, l))) return st;
                j += l;
            }
        }
    }
    return NMLX_OK;
}

static nmlx_status dec_replace(const tok_decoder *d, const slist *in, slist *out) {
    nmlx_status st;
    tok_match_ctx mc = {0};
    tok_spans sp = {0};
    for (size_t i = 0; i < in->n; i++) {
        const char *s = sl_str(in, i);
        sp.n = 0;
        if ((st = tok_pattern_find(&d->pat, &mc, s, in->len[i], &sp))) goto done;
        if ((st = slist_begin(out))) goto done;
        for (size_t k = 0; k < sp.n; k++) {
            if (sp.v[k].is_match)
                st = slist_add(out, d->content, d->content_len);
            else
                st = slist_add(out, s + sp.v[k].start, sp.v[k].end - sp.v[k].start);
            if (st) goto done;
        }
    }
    st = NMLX_OK;
done:
    free(sp.v);
    tok_match_ctx_free(&mc);
    return st;
}

static nmlx_status dec_fuse(const slist *in, slist *out) {
    nmlx_status st = slist_begin(out);
    for (size_t i = 0; i < in->n && !st; i++)
        st = slist_add(out, sl_str(in, i), in->len[i]);
    return st;
}

static nmlx_status dec_strip(const tok_decoder *d, const slist *in, slist *out) {
    nmlx_status st;
    for (size_t i = 0; i < in->n; i++) {
        const char *s = sl_str(in, i);
        size_t a = 0, b = in->len[i];
        for (int k = 0; k < d->start && b - a >= (size_t)d->rep_len &&
                        !memcmp(s + a, d->rep, (size_t)d->rep_len);
             k++)
            a += (size_t)d->rep_len;
        for (int k = 0; k < d->stop && b - a >= (size_t)d->rep_len &&
                        !memcmp(s + b - d->rep_len, d->rep, (size_t)d->rep_len);
             k++)
            b -= (size_t)d->rep_len;
        if ((st = slist_push(out, s + a, b - a))) return st;
    }
    return NMLX_OK;
}

nmlx_status tok_decode_ids(const nmlx_tokenizer *tok, const int32_t *ids, size_t n,
                           int skip_special, tok_buf *out) {
    nmlx_status st = NMLX_OK;
    slist l[2];
    memset(l, 0, sizeof l);
    int cur = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_ids || tok->tok_len[id] == UINT32_MAX) continue;
        if (skip_special && tok->special[id]) continue;
        if ((st = slist_push(&l[0], tok->pool + tok->tok_off[id], tok->tok_len[id]))) goto done;
    }
    if (!tok->has_decoder) {
        for (size_t i = 0; i < l[0].n; i++) {
            if (i && (st = tok_buf_append(out, " ", 1))) goto done;
            if ((st = tok_buf_append(out, sl_str(&l[0], i), l[0].len[i]))) goto done;
        }
        goto done;
    }
    for (size_t k = 0; k < tok->n_decs; k++) {
        const tok_decoder *d = &tok->decs[k];
        slist *in = &l[cur], *o = &l[!cur];
        o->n = 0;
        o->buf.len = 0;
        switch (d->kind) {
        case DEC_BYTELEVEL: st = dec_bytelevel(in, o); break;
        case DEC_BYTEFALLBACK: st = dec_bytefallback(in, o); break;
        case DEC_METASPACE: st = dec_metaspace(d, in, o); break;
        case DEC_REPLACE: st = dec_replace(d, in, o); break;
        case DEC_FUSE: st = dec_fuse(in, o); break;
        case DEC_STRIP: st = dec_strip(d, in, o); break;
        }
        if (st) goto done;
        cur = !cur;
    }
    for (size_t i = 0; i < l[cur].n; i++)
        if ((st = tok_buf_append(out, sl_str(&l[cur], i), l[cur].len[i]))) goto done;
done:
    if (!st && !out->p) st = tok_buf_append(out, "", 0); /* always NUL-terminated */
    slist_free(&l[0]);
    slist_free(&l[1]);
    return st;
}

nmlx_status nmlx_detokenize(const nmlx_tokenizer *tok, const int32_t *ids, size_t n_ids,
                            int skip_special, char **text, size_t *len) {
    if (!tok || !text || (!ids && n_ids))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_detokenize: NULL argument");
    tok_buf out = {0};
    nmlx_status st = tok_decode_ids(tok, ids, n_ids, skip_special, &out);
    if (st != NMLX_OK) {
        tok_buf_free(&out);
        return st;
    }
    *text = out.p;
    if (len) *len = out.len;
    return NMLX_OK;
}

/* ---- streaming ------------------------------------------------------------ */

struct nmlx_detokenizer {
    const nmlx_tokenizer *tok;
    int skip_special;
    int32_t *ids; /* window since the last emitted prefix point */
    size_t n, cap;
    size_t prefix_index; /* ids[0..prefix_index) decode to `prefix` */
    tok_buf prefix, cur, piece;
};

nmlx_status nmlx_detokenizer_create(const nmlx_tokenizer *tok, int skip_special,
                                    nmlx_detokenizer **out) {
    if (!tok || !out)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_detokenizer_create: NULL argument");
    nmlx_detokenizer *d = nmlx_calloc(1, sizeof *d);
    if (!d) return nmlx_fail(NMLX_ERR_NOMEM, "nmlx_detokenizer_create: out of memory");
    d->tok = tok;
    d->skip_special = skip_special;
    *out = d;
    return NMLX_OK;
}

void nmlx_detokenizer_free(nmlx_detokenizer *d) {
    if (!d) return;
    free(d->ids);
    tok_buf_free(&d->prefix);
    tok_buf_free(&d->cur);
    tok_buf_free(&d->piece);
    free(d);
}

void nmlx_detokenizer_reset(nmlx_detokenizer *d) {
    if (!d) return;
    d->n = 0;
    d->prefix_index = 0;
    d->prefix.len = 0;
}

static int ends_with_fffd(const tok_buf *b) {
    return b->len >= 3 && !memcmp(b->p + b->len - 3, "\xEF\xBF\xBD", 3);
}

static nmlx_status decode_into(nmlx_detokenizer *d, size_t n, tok_buf *out) {
    out->len = 0;
    return tok_decode_ids(d->tok, d->ids, n, d->skip_special, out);
}

nmlx_status nmlx_detokenizer_push(nmlx_detokenizer *d, int32_t id, const char **text, size_t *len) {
    if (!d || !text || !len)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_detokenizer_push: NULL argument");
    nmlx_status st;
    *text = "";
    *len = 0;
    if (!tok_grow((void **)&d->ids, d->n, &d->cap, sizeof *d->ids, 16))
        return nmlx_fail(NMLX_ERR_NOMEM, "nmlx_detokenizer_push: out of memory");
    d->ids[d->n++] = id;
    /* With ByteFallback, a run of <0xXX> tokens decodes as a group (all of
     * it becomes U+FFFD if any byte is bad), so nothing of it is final until
     * a non-byte token (or the flush) closes the run. */
    const nmlx_tokenizer *t = d->tok;
    uint8_t b;
    /* An id the decode skips (out of range, no token, a special one when
     * skipping them) adds no text and must not close a held byte run. */
    if (t->stream_hold_all || id < 0 || id >= t->n_ids || t->tok_len[id] == UINT32_MAX ||
        (d->skip_special && t->special[id]))
        return NMLX_OK;
    if (t->has_byte_fallback_decoder && byte_token(t->pool + t->tok_off[id], t->tok_len[id], &b))
        return NMLX_OK;
    if ((st = decode_into(d, d->n, &d->cur))) return st;
    if (d->cur.len <= d->prefix.len || ends_with_fffd(&d->cur)) return NMLX_OK;
    if (memcmp(d->cur.p, d->prefix.p ? d->prefix.p : "", d->prefix.len) != 0) {
        /* the window's decode changed its past (not seen with the supported
         * decoders): fall back to emitting nothing until the flush */
        return NMLX_OK;
    }
    d->piece.len = 0;
    if ((st = tok_buf_append(&d->piece, d->cur.p + d->prefix.len, d->cur.len - d->prefix.len)))
        return st;
    /* keep the ids of this piece as the next window's prefix */
    size_t keep = d->n - d->prefix_index;
    memmove(d->ids, d->ids + d->prefix_index, keep * sizeof *d->ids);
    d->n = keep;
    d->prefix_index = keep;
    if ((st = decode_into(d, d->n, &d->prefix))) return st;
    *text = d->piece.p;
    *len = d->piece.len;
    return NMLX_OK;
}

nmlx_status nmlx_detokenizer_flush(nmlx_detokenizer *d, const char **text, size_t *len) {
    if (!d || !text || !len)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_detokenizer_flush: NULL argument");
    nmlx_status st;
    *text = "";
    *len = 0;
    if ((st = decode_into(d, d->n, &d->cur))) return st;
    d->piece.len = 0;
    if (d->cur.len > d->prefix.len &&
        (st = tok_buf_append(&d->piece, d->cur.p + d->prefix.len, d->cur.len - d->prefix.len)))
        return st;
    nmlx_detokenizer_reset(d);
    *text = d->piece.p ? d->piece.p : "";
    *len = d->piece.len;
    return NMLX_OK;
}
