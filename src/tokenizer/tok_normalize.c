/* Normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Replace, Prepend, Lowercase,
 * Strip, applied in order (Sequences are flattened at load). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static int all_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

static nmlx_status unicode_form(const tok_normalizer *nz, const char *s, size_t n, tok_buf *out) {
    if (all_ascii(s, n)) return tok_buf_append(out, s, n); /* every form is the identity */
    int opt = UTF8PROC_STABLE;
    switch (nz->kind) {
    case NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)opt);
    if (r < 0) {
        free(dst);
        return nmlx_fail(r == UTF8PROC_ERROR_NOMEM ? NMLX_ERR_NOMEM : NMLX_ERR_INVALID_ARG,
                         "tokenizer: unicode normalization failed: %s", utf8proc_errmsg(r));
    }
    nmlx_status st = tok_buf_append(out, dst, (size_t)r);
    free(dst);
    return st;
}

static nmlx_status lowercase(const char *s, size_t n, tok_buf *out) {
    nmlx_status st = tok_buf_reserve(out, n + 8);
    if (st != NMLX_OK) return st;
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            char l = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            if ((st = tok_buf_append(out, &l, 1)) != NMLX_OK) return st;
            i++;
            continue;
        }
        int len;
        uint32_t cp = tok_utf8_decode(s + i, n - i, &len);
        i += (size_t)len;
        char enc[8];
        int el;
        if (cp == 0x130) { /* the one code point whose lowercase is two */
            memcpy(enc, "i\xCC\x87", 3);
            el = 3;
        } else {
            el = tok_utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), enc);
        }
        if ((st = tok_buf_append(out, enc, (size_t)el)) != NMLX_OK) return st;
    }
    return NMLX_OK;
}

static nmlx_status strip(const tok_normalizer *nz, const char *s, size_t n, tok_buf *out) {
    size_t a = 0, b = n;
    int len;
    if (nz->left)
        while (a < b) {
            uint32_t cp = tok_utf8_decode(s + a, b - a, &len);
            if (!tok_is_whitespace(cp)) break;
            a += (size_t)len;
        }
    if (nz->right)
        while (b > a) {
            size_t p = b - 1;
            while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80)
                p--;
            uint32_t cp = tok_utf8_decode(s + p, b - p, &len);
            if (!tok_is_whitespace(cp)) break;
            b = p;
        }
    return tok_buf_append(out, s + a, b - a);
}

static nmlx_status replace(const tok_normalizer *nz, tok_work *w, const char *s, size_t n,
                           tok_buf *out) {
    nmlx_status st;
    w->spans.n = 0;
    if ((st = tok_pattern_find(&nz->pat, &w->mc, s, n, &w->spans)) != NMLX_OK) return st;
    for (size_t i = 0; i < w->spans.n; i++) {
        const tok_span *sp = &w->spans.v[i];
        if (sp->is_match)
            st = tok_buf_append(out, nz->content, nz->content_len);
        else
            st = tok_buf_append(out, s + sp->start, sp->end - sp->start);
        if (st != NMLX_OK) return st;
    }
    return NMLX_OK;
}

static nmlx_status apply_one(const tok_normalizer *nz, tok_work *w, const char *s, size_t n,
                             tok_buf *out) {
    nmlx_status st;
    switch (nz->kind) {
    case NORM_NFC:
    case NORM_NFD:
    case NORM_NFKC:
    case NORM_NFKD: return unicode_form(nz, s, n, out);
    case NORM_REPLACE: return replace(nz, w, s, n, out);
    case NORM_PREPEND:
        if (n && (st = tok_buf_append(out, nz->content, nz->content_len)) != NMLX_OK) return st;
        return tok_buf_append(out, s, n);
    case NORM_LOWERCASE: return lowercase(s, n, out);
    case NORM_STRIP: return strip(nz, s, n, out);
    }
    return nmlx_fail(NMLX_ERR_INTERNAL, "tokenizer: unknown normalizer");
}

nmlx_status tok_normalize(const nmlx_tokenizer *tok, tok_work *w, const char *s, size_t n,
                          tok_buf *out) {
    nmlx_status st;
    if (tok->n_norms == 0) return tok_buf_append(out, s, n);
    if (tok->n_norms == 1) return apply_one(&tok->norms[0], w, s, n, out);
    /* ping-pong between two scratch buffers, the last step writes to out */
    tok_buf *bufs[2] = {&w->tmp, &w->tmp2};
    const char *cur = s;
    size_t cur_n = n;
    for (size_t i = 0; i < tok->n_norms; i++) {
        tok_buf *dst = i + 1 == tok->n_norms ? out : bufs[i & 1];
        if (dst != out) dst->len = 0;
        if ((st = apply_one(&tok->norms[i], w, cur, cur_n, dst)) != NMLX_OK) return st;
        if (dst != out) {
            cur = dst->p ? dst->p : "";
            cur_n = dst->len;
        }
    }
    return NMLX_OK;
}
