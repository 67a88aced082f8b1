/* BPE model: a word (one pre-tokenized piece) -> ids.
 *
 * Initial symbols are the word's characters (raw bytes in byte mode, where
 * the vocabulary is keyed by the bytes a byte-level token stands for), with
 * byte_fallback and unk handling as the reference does; then the lowest-rank
 * adjacent pair is merged until none is left (ties: leftmost), with a binary
 * min-heap of (rank, position) and lazy invalidation. Words already seen are
 * served from a cache. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

enum { CACHE_SLOTS = 1 << 16, CACHE_KEYS = 1 << 20, CACHE_IDS = 1 << 18, CACHE_MAX_WORD = 64 };

typedef struct sym {
    int32_t id, prev, next;
    uint32_t len; /* bytes; 0 = merged away */
} sym;

typedef struct hent {
    uint32_t rank, pos;
    int32_t new_id;
} hent;

nmlx_status tok_cache_init(tok_cache *c) {
    memset(c, 0, sizeof *c);
    if (pthread_mutex_init(&c->lock, NULL))
        return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: cannot create the cache lock");
    c->ready = 1;
    return NMLX_OK;
}

void tok_cache_free(tok_cache *c) {
    if (!c->ready) return;
    pthread_mutex_destroy(&c->lock);
    tok_map_free(&c->map);
    free(c->keys);
    free(c->ids);
    memset(c, 0, sizeof *c);
}

static int cache_alloc(tok_cache *c) {
    if (c->keys) return 1;
    c->keys = malloc(CACHE_KEYS);
    c->ids = malloc(CACHE_IDS * sizeof(int32_t));
    if (!c->keys || !c->ids || tok_map_init(&c->map, CACHE_SLOTS / 2) != NMLX_OK) {
        free(c->keys);
        free(c->ids);
        c->keys = NULL;
        c->ids = NULL;
        nmlx_clear_error();
        return 0;
    }
    c->keys_cap = CACHE_KEYS;
    c->ids_cap = CACHE_IDS;
    return 1;
}

static void cache_put(tok_cache *c, const char *s, size_t n, const int32_t *ids, size_t k) {
    if (n > CACHE_MAX_WORD || !cache_alloc(c)) return;
    if (c->keys_len + n > c->keys_cap || c->ids_len + k + 1 > c->ids_cap ||
        (c->map.n + 1) * 2 > c->map.cap) {
        tok_map_clear(&c->map); /* full: start over */
        c->keys_len = c->ids_len = 0;
    }
    char *key = c->keys + c->keys_len;
    memcpy(key, s, n);
    c->keys_len += n;
    int32_t off = (int32_t)c->ids_len;
    c->ids[c->ids_len++] = (int32_t)k;
    memcpy(c->ids + c->ids_len, ids, k * sizeof *ids);
    c->ids_len += k;
    tok_map_put(&c->map, n ? key : "", n, off); /* cannot grow: checked above */
}

static int32_t vocab_get(const tok_bpe *m, const char *s, size_t n) {
    return tok_map_get(m->byte_mode ? &m->raw_vocab : &m->vocab, s, n);
}

static void heap_push(hent *h, size_t *n, hent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < e.rank || (h[p].rank == e.rank && h[p].pos < e.pos)) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static hent heap_pop(hent *h, size_t *n) {
    hent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n &&
            (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static nmlx_status grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (*cap >= need) return NMLX_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = nmlx_realloc(*p, c * elem);
    if (!q) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
    *p = q;
    *cap = c;
    return NMLX_OK;
}

/* Appends the initial symbols of the word; returns their count in *n_sym. */
static nmlx_status initial_symbols(const nmlx_tokenizer *tok, tok_work *w, const char *s, size_t n,
                                   size_t *n_sym) {
    const tok_bpe *m = &tok->bpe;
    nmlx_status st;
    /* at most one symbol per byte (byte fallback) plus one pending unk */
    if ((st = grow(&w->sym, &w->sym_cap, n + 2, sizeof(sym)))) return st;
    sym *sy = w->sym;
    size_t k = 0;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    int plain = !m->byte_mode && !m->prefix_len && !m->suffix_len;
    char small[64];
    for (size_t i = 0; i < n;) {
        int len;
        int32_t id;
        if (m->byte_mode) {
            len = 1;
            id = m->byte_ids[(unsigned char)s[i]];
        } else {
            len = tok_utf8_len((unsigned char)s[i]);
            if ((size_t)len > n - i) len = (int)(n - i);
            if (plain && len == 1 && (unsigned char)s[i] < 128) {
                id = m->ascii_ids[(unsigned char)s[i]];
            } else if (plain) {
                id = tok_map_get(&m->vocab, s + i, (size_t)len);
            } else {
                /* continuing_subword_prefix / end_of_word_suffix */
                size_t pl = i > 0 ? m->prefix_len : 0;
                size_t sl = i + (size_t)len == n ? m->suffix_len : 0;
                if (pl + (size_t)len + sl > sizeof small) {
                    id = -1;
                } else {
                    if (pl) memcpy(small, m->prefix, pl);
                    memcpy(small + pl, s + i, (size_t)len);
                    if (sl) memcpy(small + pl + len, m->suffix, sl);
                    id = tok_map_get(&m->vocab, small, pl + (size_t)len + sl);
                }
            }
        }
        if (id >= 0) {
            if (unk >= 0) {
                sy[k++] = (sym){unk, 0, 0, unk_len};
                unk = -1;
            }
            sy[k++] = (sym){id, 0, 0, (uint32_t)len};
        } else {
            int done = 0;
            if (m->byte_fallback) {
                int ok = 1;
                for (int b = 0; b < len; b++)
                    if (m->fallback_ids[(unsigned char)s[i + b]] < 0) ok = 0;
                /* like the reference, a pending unk is not flushed here */
                if (ok) {
                    for (int b = 0; b < len; b++)
                        sy[k++] = (sym){m->fallback_ids[(unsigned char)s[i + b]], 0, 0, 1};
                    done = 1;
                }
            }
            if (!done && m->unk_id >= 0) {
                if (unk >= 0 && m->fuse_unk) {
                    unk_len += (uint32_t)len;
                } else {
                    if (unk >= 0) sy[k++] = (sym){unk, 0, 0, unk_len};
                    unk = m->unk_id;
                    unk_len = (uint32_t)len;
                }
            }
            if (k + 2 > w->sym_cap) { /* byte fallback may outgrow n + 2 with unk pending */
                if ((st = grow(&w->sym, &w->sym_cap, k + 8 + n - i, sizeof(sym)))) return st;
                sy = w->sym;
            }
        }
        i += (size_t)len;
    }
    if (unk >= 0) sy[k++] = (sym){unk, 0, 0, unk_len};
    *n_sym = k;
    return NMLX_OK;
}

nmlx_status tok_bpe_word(const nmlx_tokenizer *tok, tok_work *w, const char *s, size_t n) {
    const tok_bpe *m = &tok->bpe;
    nmlx_status st;
    if (n == 0) return NMLX_OK;
    if (m->ignore_merges) {
        int32_t id = vocab_get(m, s, n);
        if (id >= 0) return tok_work_push_id(w, id);
    }
    tok_cache *c = w->cache;
    if (c && c->keys && n <= CACHE_MAX_WORD) {
        int32_t off = tok_map_get(&c->map, s, n);
        if (off >= 0) {
            int32_t k = c->ids[off];
            for (int32_t i = 0; i < k; i++)
                if ((st = tok_work_push_id(w, c->ids[off + 1 + i]))) return st;
            return NMLX_OK;
        }
    }
    size_t k;
    if ((st = initial_symbols(tok, w, s, n, &k))) return st;
    sym *sy = w->sym;
    for (size_t i = 0; i < k; i++) {
        sy[i].prev = (int32_t)i - 1;
        sy[i].next = i + 1 < k ? (int32_t)i + 1 : -1;
    }
    if (k > 1) {
        if ((st = grow(&w->heap, &w->heap_cap, 2 * k + 4, sizeof(hent)))) return st;
        hent *h = w->heap;
        size_t hn = 0;
        for (size_t i = 0; i + 1 < k; i++) {
            const tok_pair_slot *ps = tok_pair_map_get(&m->merges, sy[i].id, sy[i + 1].id);
            if (ps) heap_push(h, &hn, (hent){ps->rank, (uint32_t)i, ps->new_id});
        }
        while (hn) {
            hent top = heap_pop(h, &hn);
            sym *a = &sy[top.pos];
            if (a->len == 0 || a->next < 0) continue;
            sym *b = &sy[a->next];
            const tok_pair_slot *ps = tok_pair_map_get(&m->merges, a->id, b->id);
            if (!ps || ps->new_id != top.new_id) continue; /* stale entry */
            a->id = top.new_id;
            a->len += b->len;
            b->len = 0;
            a->next = b->next;
            if (a->next >= 0) sy[a->next].prev = (int32_t)top.pos;
            /* each merge adds at most two entries; the heap holds <= 2k + k */
            if (hn + 2 > w->heap_cap) {
                if ((st = grow(&w->heap, &w->heap_cap, hn + 2, sizeof(hent)))) return st;
                h = w->heap;
            }
            if (a->prev >= 0) {
                ps = tok_pair_map_get(&m->merges, sy[a->prev].id, a->id);
                if (ps) heap_push(h, &hn, (hent){ps->rank, (uint32_t)a->prev, ps->new_id});
            }
            if (a->next >= 0) {
                ps = tok_pair_map_get(&m->merges, a->id, sy[a->next].id);
                if (ps) heap_push(h, &hn, (hent){ps->rank, top.pos, ps->new_id});
            }
        }
    }
    size_t first = w->n_ids;
    for (int32_t i = k ? 0 : -1; i >= 0; i = sy[i].next)
        if ((st = tok_work_push_id(w, sy[i].id))) return st;
    /* a word may give no ids at all (no unk token): w->ids can still be NULL */
    if (c && n <= CACHE_MAX_WORD && w->n_ids > first)
        cache_put(c, s, n, w->ids + first, w->n_ids - first);
    return NMLX_OK;
}
