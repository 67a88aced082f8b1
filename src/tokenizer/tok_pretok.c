/* Pre-tokenizers: Split, ByteLevel, Metaspace, Digits, Punctuation,
 * Whitespace, WhitespaceSplit. Each maps the piece list w->a to w->b (then
 * swapped); pieces that are already tokens pass through. The split
 * behaviours reproduce the reference's NormalizedString::split folds. */
#include "tokenizer_internal.h"

#include <string.h>

/* Events of a per-character predicate (one match event per matching char). */
static nmlx_status find_chars(int (*pred)(uint32_t), const char *s, size_t n, tok_spans *out) {
    nmlx_status st;
    if (n == 0) return tok_spans_push(out, 0, 0, 0);
    size_t last = 0, i = 0;
    while (i < n) {
        int len;
        uint32_t cp = tok_utf8_decode(s + i, n - i, &len);
        if (pred(cp)) {
            if (last < i && (st = tok_spans_push(out, (uint32_t)last, (uint32_t)i, 0))) return st;
            if ((st = tok_spans_push(out, (uint32_t)i, (uint32_t)(i + len), 1))) return st;
            last = i + (size_t)len;
        }
        i += (size_t)len;
    }
    if (last < n) return tok_spans_push(out, (uint32_t)last, (uint32_t)n, 0);
    return NMLX_OK;
}

/* Applies `behavior` to the events in w->spans, writing kept ranges (is_match
 * reused as "remove") to w->spans2. */
static nmlx_status fold(tok_work *w, split_behavior behavior) {
    nmlx_status st;
    tok_spans *in = &w->spans, *out = &w->spans2;
    out->n = 0;
    int prev = 0;
    switch (behavior) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < in->n; i++)
            if ((st = tok_spans_push(out, in->v[i].start, in->v[i].end, 0))) return st;
        break;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < in->n; i++)
            if ((st = tok_spans_push(out, in->v[i].start, in->v[i].end, in->v[i].is_match)))
                return st;
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < in->n; i++) {
            int m = in->v[i].is_match;
            if (m == prev && out->n)
                out->v[out->n - 1].end = in->v[i].end;
            else if ((st = tok_spans_push(out, in->v[i].start, in->v[i].end, 0)))
                return st;
            prev = m;
        }
        break;
    case SPLIT_MERGED_PREV:
        for (size_t i = 0; i < in->n; i++) {
            int m = in->v[i].is_match;
            if (m && !prev && out->n)
                out->v[out->n - 1].end = in->v[i].end;
            else if ((st = tok_spans_push(out, in->v[i].start, in->v[i].end, 0)))
                return st;
            prev = m;
        }
        break;
    case SPLIT_MERGED_NEXT:
        for (size_t k = in->n; k-- > 0;) {
            int m = in->v[k].is_match;
            if (m && !prev && out->n)
                out->v[out->n - 1].start = in->v[k].start;
            else if ((st = tok_spans_push(out, in->v[k].start, in->v[k].end, 0)))
                return st;
            prev = m;
        }
        for (size_t i = 0, j = out->n ? out->n - 1 : 0; i < j; i++, j--) {
            tok_span t = out->v[i];
            out->v[i] = out->v[j];
            out->v[j] = t;
        }
        break;
    }
    return NMLX_OK;
}

/* Emits the kept, non-empty ranges of w->spans2 relative to piece `p`. */
static nmlx_status emit(tok_work *w, const tok_piece *p) {
    nmlx_status st;
    for (size_t i = 0; i < w->spans2.n; i++) {
        const tok_span *sp = &w->spans2.v[i];
        if (sp->is_match || sp->end == sp->start) continue;
        if ((st = tok_pieces_push(&w->b, p->off + sp->start, sp->end - sp->start, -1,
                                  p->at_start && sp->start == 0)))
            return st;
    }
    return NMLX_OK;
}

static nmlx_status split_pattern(tok_work *w, const tok_piece *p, const tok_pattern *pat,
                                 split_behavior behavior, int invert) {
    nmlx_status st;
    w->spans.n = 0;
    if ((st = tok_pattern_find(pat, &w->mc, w->arena.p + p->off, p->len, &w->spans))) return st;
    if (invert)
        for (size_t i = 0; i < w->spans.n; i++)
            w->spans.v[i].is_match = !w->spans.v[i].is_match;
    if (behavior == SPLIT_ISOLATED) { /* the common case, without the fold */
        for (size_t i = 0; i < w->spans.n; i++) {
            const tok_span *sp = &w->spans.v[i];
            if (sp->end == sp->start) continue;
            if ((st = tok_pieces_push(&w->b, p->off + sp->start, sp->end - sp->start, -1,
                                      p->at_start && sp->start == 0)))
                return st;
        }
        return NMLX_OK;
    }
    if ((st = fold(w, behavior))) return st;
    return emit(w, p);
}

static nmlx_status split_chars(tok_work *w, const tok_piece *p, int (*pred)(uint32_t),
                               split_behavior behavior) {
    nmlx_status st;
    w->spans.n = 0;
    if ((st = find_chars(pred, w->arena.p + p->off, p->len, &w->spans))) return st;
    if ((st = fold(w, behavior))) return st;
    return emit(w, p);
}

/* Whitespace pre-tokenizer: the reference's Rust-regex `\w+|[^\w\s]+`,
 * keeping the matches; done with the same character classes directly. */
static nmlx_status whitespace_words(tok_work *w, const tok_piece *p) {
    nmlx_status st;
    const char *s = w->arena.p + p->off;
    size_t n = p->len, i = 0;
    while (i < n) {
        int len;
        uint32_t cp = tok_utf8_decode(s + i, n - i, &len);
        int word = tok_is_word(cp);
        if (!word && tok_is_whitespace(cp)) {
            i += (size_t)len;
            continue;
        }
        size_t start = i;
        i += (size_t)len;
        while (i < n) {
            cp = tok_utf8_decode(s + i, n - i, &len);
            int wd = tok_is_word(cp);
            if (word ? !wd : (wd || tok_is_whitespace(cp))) break;
            i += (size_t)len;
        }
        if ((st = tok_pieces_push(&w->b, p->off + (uint32_t)start, (uint32_t)(i - start), -1,
                                  p->at_start && start == 0)))
            return st;
    }
    return NMLX_OK;
}

/* Copies piece `p` into the arena with a prefix; returns the new piece. */
static nmlx_status too_long(void) {
    return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_tokenize: pre-tokenized text is too long");
}

static nmlx_status with_prefix(tok_work *w, tok_piece *p, const char *pre, size_t pre_n) {
    if (w->arena.len + pre_n + p->len > UINT32_MAX) return too_long();
    nmlx_status st = tok_buf_reserve(&w->arena, pre_n + p->len);
    if (st != NMLX_OK) return st;
    uint32_t off = (uint32_t)w->arena.len;
    memcpy(w->arena.p + w->arena.len, pre, pre_n);
    memcpy(w->arena.p + w->arena.len + pre_n, w->arena.p + p->off, p->len);
    w->arena.len += pre_n + p->len;
    p->off = off;
    p->len += (uint32_t)pre_n;
    return NMLX_OK;
}

static nmlx_status metaspace(const tok_pretok *pt, tok_work *w, tok_piece p) {
    nmlx_status st;
    /* replace ' ' by the replacement, prepend it per the scheme */
    size_t spaces = 0;
    const char *s = w->arena.p + p.off;
    for (size_t i = 0; i < p.len; i++)
        spaces += s[i] == ' ';
    int starts_rep = p.len >= (size_t)pt->rep_len && !memcmp(s, pt->rep, (size_t)pt->rep_len);
    /* after the replacement, a leading ' ' becomes the replacement too */
    if (p.len && s[0] == ' ') starts_rep = 1;
    int prepend = (pt->prepend_scheme == PREPEND_ALWAYS ||
                   (pt->prepend_scheme == PREPEND_FIRST && p.at_start)) &&
                  !starts_rep && p.len > 0;
    size_t need = p.len + spaces * (size_t)pt->rep_len + (size_t)pt->rep_len;
    if (w->arena.len + need > UINT32_MAX) return too_long();
    if ((st = tok_buf_reserve(&w->arena, need))) return st;
    s = w->arena.p + p.off;
    char *o = w->arena.p + w->arena.len;
    char *o0 = o;
    if (prepend) {
        memcpy(o, pt->rep, (size_t)pt->rep_len);
        o += pt->rep_len;
    }
    for (size_t i = 0; i < p.len; i++) {
        if (s[i] == ' ') {
            memcpy(o, pt->rep, (size_t)pt->rep_len);
            o += pt->rep_len;
        } else {
            *o++ = s[i];
        }
    }
    tok_piece q = {(uint32_t)w->arena.len, (uint32_t)(o - o0), -1, p.at_start};
    w->arena.len += (size_t)(o - o0);
    if (!pt->split) return tok_pieces_push(&w->b, q.off, q.len, -1, q.at_start);
    /* split before each replacement (MergedWithNext on the replacement char) */
    w->spans.n = 0;
    const char *t = w->arena.p + q.off;
    size_t last = 0;
    for (size_t i = 0; i + (size_t)pt->rep_len <= q.len;) {
        if (!memcmp(t + i, pt->rep, (size_t)pt->rep_len)) {
            if (last < i && (st = tok_spans_push(&w->spans, (uint32_t)last, (uint32_t)i, 0)))
                return st;
            if ((st = tok_spans_push(&w->spans, (uint32_t)i, (uint32_t)(i + pt->rep_len), 1)))
                return st;
            i += (size_t)pt->rep_len;
            last = i;
        } else {
            i += (size_t)tok_utf8_len((unsigned char)t[i]);
        }
    }
    if (last < q.len && (st = tok_spans_push(&w->spans, (uint32_t)last, q.len, 0))) return st;
    if (q.len == 0 && (st = tok_spans_push(&w->spans, 0, 0, 0))) return st;
    if ((st = fold(w, SPLIT_MERGED_NEXT))) return st;
    return emit(w, &q);
}

static nmlx_status run_one(const tok_pretok *pt, tok_work *w) {
    nmlx_status st = NMLX_OK;
    w->b.n = 0;
    for (size_t i = 0; i < w->a.n && st == NMLX_OK; i++) {
        tok_piece p = w->a.v[i];
        if (p.id >= 0) {
            st = tok_pieces_push(&w->b, p.off, p.len, p.id, p.at_start);
            continue;
        }
        switch (pt->kind) {
        case PT_SPLIT: st = split_pattern(w, &p, &pt->pat, pt->behavior, pt->invert); break;
        case PT_BYTELEVEL:
            if (pt->add_prefix_space && (p.len == 0 || w->arena.p[p.off] != ' ') &&
                (st = with_prefix(w, &p, " ", 1)))
                break;
            if (pt->use_regex)
                st = split_pattern(w, &p, &pt->pat, SPLIT_ISOLATED, 0);
            else if (p.len)
                st = tok_pieces_push(&w->b, p.off, p.len, -1, p.at_start);
            break;
        case PT_METASPACE: st = metaspace(pt, w, p); break;
        case PT_DIGITS:
            st = split_chars(w, &p, tok_is_numeric,
                             pt->individual_digits ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS);
            break;
        case PT_PUNCTUATION: st = split_chars(w, &p, tok_is_punctuation, pt->behavior); break;
        case PT_WHITESPACE: st = whitespace_words(w, &p); break;
        case PT_WHITESPACE_SPLIT: st = split_chars(w, &p, tok_is_whitespace, SPLIT_REMOVED); break;
        }
    }
    tok_pieces t = w->a;
    w->a = w->b;
    w->b = t;
    return st;
}

nmlx_status tok_pretokenize(const nmlx_tokenizer *tok, tok_work *w) {
    nmlx_status st;
    for (size_t i = 0; i < tok->n_pretoks; i++)
        if ((st = run_one(&tok->pretoks[i], w)) != NMLX_OK) return st;
    return NMLX_OK;
}
