/* Containers of the tokenizer: byte buffers, hash maps, span and piece
 * lists, the added-token trie, regex/literal patterns. */
#define _GNU_SOURCE /* memmem */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- buffers ------------------------------------------------------------ */

nmlx_status tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return NMLX_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = nmlx_realloc(b->p, cap);
    if (!p) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    b->p = p;
    b->cap = cap;
    return NMLX_OK;
}

nmlx_status tok_buf_append(tok_buf *b, const void *s, size_t n) {
    nmlx_status st = tok_buf_reserve(b, n);
    if (st != NMLX_OK) return st;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return NMLX_OK;
}

bool tok_grow(void **v, size_t n, size_t *cap, size_t elem, size_t first) {
    if (n < *cap) return true;
    size_t c = *cap ? *cap * 2 : first;
    void *p = nmlx_realloc(*v, c * elem);
    if (!p) return false;
    *v = p;
    *cap = c;
    return true;
}

void tok_buf_free(tok_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- string map ----------------------------------------------------------- */

uint32_t tok_hash(const char *s, size_t n) {
    /* 8 bytes at a time, multiply-xorshift mixing */
    uint64_t h = 0x243F6A8885A308D3ull ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (uint32_t)h;
}

nmlx_status tok_map_init(tok_map *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2)
        cap *= 2;
    m->slots = nmlx_calloc(cap, sizeof *m->slots);
    if (!m->slots) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    m->cap = cap;
    m->n = 0;
    return NMLX_OK;
}

static tok_map_slot *map_find(const tok_map *m, const char *s, size_t n, uint32_t h) {
    size_t mask = m->cap - 1, i = h & mask;
    for (;;) {
        tok_map_slot *sl = &m->slots[i];
        if (!sl->s) return sl;
        if (sl->hash == h && sl->len == n && !memcmp(sl->s, s, n)) return sl;
        i = (i + 1) & mask;
    }
}

static nmlx_status map_grow(tok_map *m) {
    tok_map bigger;
    nmlx_status st = tok_map_init(&bigger, m->cap);
    if (st != NMLX_OK) return st;
    for (size_t i = 0; i < m->cap; i++) {
        tok_map_slot *sl = &m->slots[i];
        if (sl->s) *map_find(&bigger, sl->s, sl->len, sl->hash) = *sl;
    }
    bigger.n = m->n;
    free(m->slots);
    *m = bigger;
    return NMLX_OK;
}

nmlx_status tok_map_put(tok_map *m, const char *s, size_t n, int32_t value) {
    if ((m->n + 1) * 2 > m->cap) {
        nmlx_status st = map_grow(m);
        if (st != NMLX_OK) return st;
    }
    uint32_t h = tok_hash(s, n);
    tok_map_slot *sl = map_find(m, s, n, h);
    if (!sl->s) {
        sl->s = s ? s : "";
        sl->len = (uint32_t)n;
        sl->hash = h;
        m->n++;
    }
    sl->value = value;
    return NMLX_OK;
}

int32_t tok_map_get(const tok_map *m, const char *s, size_t n) {
    if (!m->cap) return -1;
    tok_map_slot *sl = map_find(m, s, n, tok_hash(s, n));
    return sl->s ? sl->value : -1;
}

void tok_map_clear(tok_map *m) {
    if (m->slots) memset(m->slots, 0, m->cap * sizeof *m->slots);
    m->n = 0;
}

void tok_map_free(tok_map *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ---- pair map ------------------------------------------------------------- */

nmlx_status tok_pair_map_init(tok_pair_map *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2)
        cap *= 2;
    m->slots = nmlx_malloc(cap * sizeof *m->slots);
    if (!m->slots) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < cap; i++)
        m->slots[i].rank = UINT32_MAX;
    m->cap = cap;
    m->n = 0;
    return NMLX_OK;
}

/* The map is sized for all merges up front, so it never fills. */
void tok_pair_map_put(tok_pair_map *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t mask = m->cap - 1, i = (size_t)(h >> 32) & mask;
    for (;;) {
        tok_pair_slot *s = &m->slots[i];
        if (s->rank == UINT32_MAX || s->key == key) {
            if (s->rank == UINT32_MAX) m->n++;
            s->key = key;
            s->rank = rank;
            s->new_id = new_id;
            return;
        }
        i = (i + 1) & mask;
    }
}

void tok_pair_map_free(tok_pair_map *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ---- spans and pieces ----------------------------------------------------- */

nmlx_status tok_spans_push(tok_spans *s, uint32_t start, uint32_t end, int is_match) {
    if (!tok_grow((void **)&s->v, s->n, &s->cap, sizeof *s->v, 64))
        return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    s->v[s->n++] = (tok_span){start, end, is_match};
    return NMLX_OK;
}

nmlx_status tok_pieces_push(tok_pieces *p, uint32_t off, uint32_t len, int32_t id, int at_start) {
    if (!tok_grow((void **)&p->v, p->n, &p->cap, sizeof *p->v, 64))
        return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    p->v[p->n++] = (tok_piece){off, len, id, (uint8_t)at_start};
    return NMLX_OK;
}

nmlx_status tok_work_push_id(tok_work *w, int32_t id) {
    if (!tok_grow((void **)&w->ids, w->n_ids, &w->cap_ids, sizeof *w->ids, 256))
        return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    w->ids[w->n_ids++] = id;
    return NMLX_OK;
}

void tok_work_free(tok_work *w) {
    tok_buf_free(&w->arena);
    tok_buf_free(&w->tmp);
    tok_buf_free(&w->tmp2);
    free(w->a.v);
    free(w->b.v);
    free(w->spans.v);
    free(w->spans2.v);
    free(w->ids);
    free(w->sym);
    free(w->heap);
    tok_match_ctx_free(&w->mc);
    memset(w, 0, sizeof *w);
}

/* ---- trie ----------------------------------------------------------------- */

static nmlx_status trie_new_node(tok_trie *t, uint8_t byte, int32_t *idx) {
    if (!tok_grow((void **)&t->nodes, t->n, &t->cap, sizeof *t->nodes, 256))
        return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    t->nodes[t->n] = (tok_trie_node){-1, -1, -1, byte};
    *idx = (int32_t)t->n++;
    return NMLX_OK;
}

nmlx_status tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t added_index) {
    nmlx_status st;
    int32_t node;
    if (t->n == 0 && (st = trie_new_node(t, 0, &node)) != NMLX_OK) return st; /* root */
    node = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        int32_t ch = t->nodes[node].child, found = -1;
        while (ch >= 0) {
            if (t->nodes[ch].byte == c) {
                found = ch;
                break;
            }
            ch = t->nodes[ch].sibling;
        }
        if (found < 0) {
            if ((st = trie_new_node(t, c, &found)) != NMLX_OK) return st;
            t->nodes[found].sibling = t->nodes[node].child;
            t->nodes[node].child = found;
        }
        node = found;
    }
    if (n) t->first_byte[(uint8_t)s[0]] = 1;
    /* the first token with this content wins, like the reference's map */
    if (t->nodes[node].added < 0) t->nodes[node].added = added_index;
    return NMLX_OK;
}

void tok_trie_free(tok_trie *t) {
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

/* ---- patterns ------------------------------------------------------------- */

/* The reference compiles these regexes with Oniguruma, whose Unicode \s is
 * the White_Space property and \w is Letter|Mark|Decimal_Number|
 * Connector_Punctuation; PCRE2 10.42 (UCP) differs (\s takes U+180E, \w
 * lacks marks). Rewrite \s \S \w \W into explicit classes so both agree;
 * everything else is passed through as written. */
static const char ONIG_WS[] =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
static const char ONIG_WORD[] = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

static nmlx_status onig_compat(const char *p, size_t n, tok_buf *out) {
    nmlx_status st = tok_buf_reserve(out, n * 2);
    int in_class = 0;
    for (size_t i = 0; i < n && st == NMLX_OK; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[++i];
            const char *set = d == 's' || d == 'S'   ? ONIG_WS
                              : d == 'w' || d == 'W' ? ONIG_WORD
                                                     : NULL;
            int neg = d == 'S' || d == 'W';
            if (set && in_class && !neg) {
                st = tok_buf_append(out, set, strlen(set));
            } else if (set && !in_class) {
                if ((st = tok_buf_append(out, neg ? "[^" : "[", neg ? 2 : 1))) break;
                if ((st = tok_buf_append(out, set, strlen(set)))) break;
                st = tok_buf_append(out, "]", 1);
            } else {
                char esc[2] = {'\\', d};
                st = tok_buf_append(out, esc, 2);
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            st = tok_buf_append(out, "[", 1);
            /* "[^" and a leading ']' are part of the class */
            if (st == NMLX_OK && i + 1 < n && p[i + 1] == '^') st = tok_buf_append(out, &p[++i], 1);
            if (st == NMLX_OK && i + 1 < n && p[i + 1] == ']') st = tok_buf_append(out, &p[++i], 1);
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') { /* [:alpha:] */
            const char *end = strstr(p + i, ":]");
            size_t k = end && (size_t)(end - p) < n ? (size_t)(end - p) + 2 : n;
            st = tok_buf_append(out, p + i, k - i);
            i = k - 1;
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        st = tok_buf_append(out, &c, 1);
    }
    return st;
}

nmlx_status tok_pattern_compile(tok_pattern *p, const char *src, size_t len, int is_regex,
                                const char *what) {
    memset(p, 0, sizeof *p);
    if (!is_regex) {
        p->literal = nmlx_malloc(len + 1);
        if (!p->literal) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
        memcpy(p->literal, src, len);
        p->literal[len] = '\0';
        p->literal_len = len;
        return NMLX_OK;
    }
    int err;
    PCRE2_SIZE erroff;
    tok_buf re = {0};
    nmlx_status st = onig_compat(src, len, &re);
    if (st != NMLX_OK) {
        tok_buf_free(&re);
        return st;
    }
    p->re = pcre2_compile((PCRE2_SPTR)re.p, re.len, PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    tok_buf_free(&re);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return nmlx_fail(NMLX_ERR_UNSUPPORTED, "%s: regex '%.*s' does not compile at %zu: %s", what,
                         (int)(len > 200 ? 200 : len), src, (size_t)erroff, (char *)msg);
    }
    /* JIT is an optimisation: without it (no JIT on this CPU) matching still works */
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE);
    return NMLX_OK;
}

void tok_pattern_free(tok_pattern *p) {
    if (p->re) pcre2_code_free(p->re);
    free(p->literal);
    memset(p, 0, sizeof *p);
}

void tok_match_ctx_free(tok_match_ctx *c) {
    if (c->md) pcre2_match_data_free(c->md);
    if (c->mctx) pcre2_match_context_free(c->mctx);
    if (c->stack) pcre2_jit_stack_free(c->stack);
    memset(c, 0, sizeof *c);
}

/* One regex search from `start`; returns 1 and the match, 0 if none. */
static nmlx_status regex_search(const tok_pattern *pat, tok_match_ctx *mc, const char *s, size_t n,
                                size_t start, size_t *ms, size_t *me, int *found) {
    if (!mc->md) {
        mc->md = pcre2_match_data_create(4, NULL);
        if (!mc->md) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    }
    for (;;) {
        int rc =
            pcre2_match(pat->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, mc->md, mc->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) {
            *found = 0;
            return NMLX_OK;
        }
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !mc->stack) {
            /* a long run exhausted the default 32 KiB JIT stack: retry bigger */
            mc->mctx = pcre2_match_context_create(NULL);
            mc->stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
            if (!mc->mctx || !mc->stack)
                return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory (regex stack)");
            pcre2_jit_stack_assign(mc->mctx, NULL, mc->stack);
            continue;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return nmlx_fail(NMLX_ERR_INVALID_ARG, "tokenizer: regex match failed: %s",
                             (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(mc->md);
        *ms = ov[0];
        *me = ov[1];
        *found = 1;
        return NMLX_OK;
    }
}

nmlx_status tok_pattern_find(const tok_pattern *pat, tok_match_ctx *mc, const char *s, size_t n,
                             tok_spans *out) {
    nmlx_status st;
    if (n == 0) return tok_spans_push(out, 0, 0, 0);
    size_t prev = 0, pos = 0;
    if (!pat->re) {
        if (pat->literal_len == 0) return tok_spans_push(out, 0, (uint32_t)n, 0);
        while (pos <= n) {
            const char *hit = memmem(s + pos, n - pos, pat->literal, pat->literal_len);
            if (!hit) break;
            size_t ms = (size_t)(hit - s), me = ms + pat->literal_len;
            if (ms > prev && (st = tok_spans_push(out, (uint32_t)prev, (uint32_t)ms, 0))) return st;
            if ((st = tok_spans_push(out, (uint32_t)ms, (uint32_t)me, 1))) return st;
            prev = pos = me;
        }
    } else {
        size_t last_match_end = (size_t)-1;
        while (pos <= n) {
            size_t ms, me;
            int found;
            if ((st = regex_search(pat, mc, s, n, pos, &ms, &me, &found))) return st;
            if (!found) break;
            if (ms == me) {
                /* empty match: skipped right after a match, then step one char */
                size_t step = ms < n ? (size_t)tok_utf8_len((unsigned char)s[ms]) : 1;
                if (ms != last_match_end) {
                    if (ms > prev && (st = tok_spans_push(out, (uint32_t)prev, (uint32_t)ms, 0)))
                        return st;
                    if ((st = tok_spans_push(out, (uint32_t)ms, (uint32_t)me, 1))) return st;
                    prev = me;
                }
                last_match_end = me;
                pos = ms + step;
                continue;
            }
            if (ms > prev && (st = tok_spans_push(out, (uint32_t)prev, (uint32_t)ms, 0))) return st;
            if ((st = tok_spans_push(out, (uint32_t)ms, (uint32_t)me, 1))) return st;
            prev = pos = me;
            last_match_end = me;
        }
    }
    if (prev < n) return tok_spans_push(out, (uint32_t)prev, (uint32_t)n, 0);
    return NMLX_OK;
}
