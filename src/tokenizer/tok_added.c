/* Added tokens: leftmost-longest matching over a byte trie, then the
 * single_word / lstrip / rstrip rules of the reference's AddedVocabulary. */
#include "tokenizer_internal.h"

#include <string.h>

/* Longest token starting at s[0..n): its added index and length, or -1. */
static int32_t longest_at(const tok_trie *t, const char *s, size_t n, size_t *len) {
    int32_t node = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t ch = t->nodes[node].child;
        uint8_t c = (uint8_t)s[i];
        while (ch >= 0 && t->nodes[ch].byte != c)
            ch = t->nodes[ch].sibling;
        if (ch < 0) break;
        node = ch;
        if (t->nodes[node].added >= 0) {
            best = t->nodes[node].added;
            *len = i + 1;
        }
    }
    return best;
}

static uint32_t last_cp(const char *s, size_t n) {
    size_t p = n - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80)
        p--;
    int len;
    return tok_utf8_decode(s + p, n - p, &len);
}

/* Start of the whitespace run that ends at n. */
static size_t ws_run_start(const char *s, size_t n) {
    size_t p = n;
    while (p > 0) {
        size_t q = p - 1;
        while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80)
            q--;
        int len;
        if (!tok_is_whitespace(tok_utf8_decode(s + q, p - q, &len))) break;
        p = q;
    }
    return p;
}

/* Length of the whitespace run at the start of s[0..n). */
static size_t ws_run_len(const char *s, size_t n) {
    size_t p = 0;
    while (p < n) {
        int len;
        if (!tok_is_whitespace(tok_utf8_decode(s + p, n - p, &len))) break;
        p += (size_t)len;
    }
    return p;
}

static nmlx_status split_piece(const nmlx_tokenizer *tok, tok_work *w, const tok_trie *t,
                               const tok_piece *p, int normalized) {
    nmlx_status st;
    const char *s = w->arena.p + p->off;
    size_t n = p->len, i = 0, start_offset = 0;
    while (i < n) {
        if (!t->first_byte[(uint8_t)s[i]]) {
            i++;
            continue;
        }
        size_t mlen = 0;
        int32_t a = longest_at(t, s + i, n - i, &mlen);
        if (a < 0) {
            i++;
            continue;
        }
        const tok_added *ad = &tok->added[a];
        size_t start = i, stop = i + mlen;
        i = stop;
        if (ad->single_word) {
            int start_ok = start == 0 || !tok_is_word(last_cp(s, start));
            int len;
            int stop_ok = stop == n || !tok_is_word(tok_utf8_decode(s + stop, n - stop, &len));
            if (!start_ok || !stop_ok) continue;
        }
        if (ad->lstrip) {
            size_t ns = ws_run_start(s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (ad->rstrip) {
            stop += ws_run_len(s + stop, n - stop);
            i = stop;
        }
        if (start_offset < start && (st = tok_pieces_push(&w->b, p->off + (uint32_t)start_offset,
                                                          (uint32_t)(start - start_offset), -1,
                                                          p->at_start && start_offset == 0)))
            return st;
        if ((st = tok_pieces_push(&w->b, p->off + (uint32_t)start, (uint32_t)(stop - start), ad->id,
                                  0)))
            return st;
        start_offset = stop;
    }
    (void)normalized;
    if (start_offset < n)
        return tok_pieces_push(&w->b, p->off + (uint32_t)start_offset, (uint32_t)(n - start_offset),
                               -1, p->at_start && start_offset == 0);
    return NMLX_OK;
}

nmlx_status tok_split_added(const nmlx_tokenizer *tok, tok_work *w, int normalized) {
    const tok_trie *t = normalized ? &tok->trie_norm : &tok->trie_raw;
    nmlx_status st = NMLX_OK;
    w->b.n = 0;
    for (size_t i = 0; i < w->a.n && st == NMLX_OK; i++) {
        tok_piece p = w->a.v[i];
        if (p.id >= 0 || t->n == 0)
            st = tok_pieces_push(&w->b, p.off, p.len, p.id, p.at_start);
        else
            st = split_piece(tok, w, t, &p, normalized);
    }
    tok_pieces tmp = w->a;
    w->a = w->b;
    w->b = tmp;
    return st;
}
