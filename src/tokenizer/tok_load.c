/* nmlx_tokenizer_load: tokenizer.json (our own JSON DOM, for speed) plus
 * tokenizer_config.json / special_tokens_map.json (jansson) for BOS/EOS.
 * Builds the vocabulary maps, the merge map, the component arrays and the
 * added-token tries. Any component type we do not implement fails the load
 * with NMLX_ERR_UNSUPPORTED naming it. */
#define _POSIX_C_SOURCE 200809L
#include "tok_json.h"
#include "tokenizer_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Larger tokenizer.json files are not real (the largest known are ~35 MB);
 * the parser's node indices are 32-bit. */
enum { MAX_TOKENIZER_BYTES = 1024 * 1024 * 1024 };

#define TJ "tokenizer.json"

/* The pre-tokenizer regex of GPT-2 byte-level BPE (ByteLevel use_regex). */
static const char BYTELEVEL_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct loader {
    tj_doc doc;
    nmlx_tokenizer *tok;
    size_t src_len; /* bytes of tokenizer.json: bounds the id tables */
} loader;

/* Token ids index dense tables (9 bytes per id). A real tokenizer.json
 * spends at least 6 bytes on each token it defines, so its ids stay below
 * its size; ids past MAX_IDS_PER_BYTE x size + ID_SLACK would make the
 * tables outgrow the file and are refused before anything is allocated. */
enum { MAX_IDS_PER_BYTE = 1, ID_SLACK = 65536 };

/* Reads a whole regular file. O_NONBLOCK: a FIFO in place of the file must
 * fail, not wait for a writer; directories and other non-files are refused
 * (ftell on a directory gives nonsense sizes). */
static nmlx_status read_file(const char *path, char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return nmlx_fail(NMLX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    nmlx_status st = NMLX_OK;
    char *buf = NULL;
    struct stat sb;
    size_t got = 0, size;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = nmlx_fail(NMLX_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    if ((uint64_t)sb.st_size > MAX_TOKENIZER_BYTES) {
        st = nmlx_fail(NMLX_ERR_FORMAT, "%s: file is too large (%lld bytes)", path,
                       (long long)sb.st_size);
        goto done;
    }
    size = (size_t)sb.st_size;
    buf = nmlx_malloc(size + 1);
    if (!buf) {
        st = nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    while (got < size) {
        ssize_t r = nmlx_read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            st = nmlx_fail(NMLX_ERR_IO, "%s: read failed: %s", path,
                           r < 0 ? strerror(errno) : "the file shrank while being read");
            free(buf);
            buf = NULL;
            goto done;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    *out = buf;
    *len = size;
done:
    close(fd);
    return st;
}

enum { MAX_TOKEN_ID = 100000000 };

/* A token id: an integral JSON number in [0, MAX_TOKEN_ID] (the reference
 * reads ids as u32; NaN, fractions and huge values must not reach a cast). */
static int node_id(const tj_node *n, int32_t *out) {
    if (!n || n->type != TJ_NUMBER || !(n->num >= 0 && n->num <= MAX_TOKEN_ID)) return 0;
    int32_t v = (int32_t)n->num;
    if ((double)v != n->num) return 0;
    *out = v;
    return 1;
}

static const char *type_of(const tj_doc *d, const tj_node *n) {
    return tj_str(tj_get(d, n, "type"));
}

static nmlx_status unsupported(const char *what, const char *type) {
    return nmlx_fail(NMLX_ERR_UNSUPPORTED, TJ ": %s type '%s' is not supported", what,
                     type ? type : "(missing)");
}

/* "pattern": {"String": s} or {"Regex": r} */
static nmlx_status load_pattern(const tj_doc *d, const tj_node *n, tok_pattern *p,
                                const char *what) {
    const tj_node *pat = tj_get(d, n, "pattern");
    const tj_node *s = tj_get(d, pat, "String"), *r = tj_get(d, pat, "Regex");
    if (s && s->type == TJ_STRING) return tok_pattern_compile(p, s->str, s->len, 0, what);
    if (r && r->type == TJ_STRING) return tok_pattern_compile(p, r->str, r->len, 1, what);
    return nmlx_fail(NMLX_ERR_FORMAT, TJ ": %s has no String or Regex pattern", what);
}

static nmlx_status load_string(const tj_doc *d, const tj_node *n, const char *key, char **out,
                               size_t *len, const char *what) {
    const tj_node *v = tj_get(d, n, key);
    if (!v || v->type != TJ_STRING)
        return nmlx_fail(NMLX_ERR_FORMAT, TJ ": %s needs a string '%s'", what, key);
    *out = nmlx_malloc(v->len + 1);
    if (!*out) return nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
    memcpy(*out, v->str, v->len + 1);
    if (len) *len = v->len;
    return NMLX_OK;
}

/* One character (Metaspace replacement, Strip content) as UTF-8. */
static nmlx_status load_char(const tj_doc *d, const tj_node *n, const char *key, char rep[5],
                             int *rep_len, const char *what) {
    const tj_node *v = tj_get(d, n, key);
    if (!v || v->type != TJ_STRING || v->len == 0 || v->len > 4 ||
        (size_t)tok_utf8_len((unsigned char)v->str[0]) != v->len)
        return nmlx_fail(NMLX_ERR_FORMAT, TJ ": %s needs a one-character '%s'", what, key);
    memcpy(rep, v->str, v->len);
    rep[v->len] = '\0';
    *rep_len = (int)v->len;
    return NMLX_OK;
}

static int parse_behavior(const char *s, split_behavior *b) {
    if (!s) return 0;
    if (!strcmp(s, "Removed"))
        *b = SPLIT_REMOVED;
    else if (!strcmp(s, "Isolated"))
        *b = SPLIT_ISOLATED;
    else if (!strcmp(s, "MergedWithPrevious"))
        *b = SPLIT_MERGED_PREV;
    else if (!strcmp(s, "MergedWithNext"))
        *b = SPLIT_MERGED_NEXT;
    else if (!strcmp(s, "Contiguous"))
        *b = SPLIT_CONTIGUOUS;
    else
        return 0;
    return 1;
}

static nmlx_status parse_prepend_scheme(const tj_doc *d, const tj_node *n, int *scheme,
                                        const char *what) {
    const char *ps = tj_str(tj_get(d, n, "prepend_scheme"));
    int aps = tj_bool(d, n, "add_prefix_space", -2);
    *scheme = PREPEND_ALWAYS;
    if (ps) {
        if (!strcmp(ps, "always"))
            *scheme = PREPEND_ALWAYS;
        else if (!strcmp(ps, "first"))
            *scheme = PREPEND_FIRST;
        else if (!strcmp(ps, "never"))
            *scheme = PREPEND_NEVER;
        else
            return nmlx_fail(NMLX_ERR_FORMAT, TJ ": %s prepend_scheme '%s' is unknown", what, ps);
    }
    if (aps == 0) *scheme = PREPEND_NEVER; /* legacy add_prefix_space: false */
    return NMLX_OK;
}

/* Appends *elem (size bytes) to the component array *arr of *n. */
static nmlx_status append(void **arr, size_t *n, const void *elem, size_t size) {
    void *p = nmlx_realloc(*arr, (*n + 1) * size);
    if (!p) return nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
    *arr = p;
    memcpy((char *)p + *n * size, elem, size);
    (*n)++;
    return NMLX_OK;
}

/* A Replace normalizer or decoder: its pattern and `content` string. */
static nmlx_status load_replace(const tj_doc *d, const tj_node *n, tok_pattern *pat, char **content,
                                size_t *content_len, const char *what) {
    char where[64];
    snprintf(where, sizeof where, TJ ": %s", what);
    nmlx_status st = load_pattern(d, n, pat, where);
    if (st) return st;
    if ((st = load_string(d, n, "content", content, content_len, what))) tok_pattern_free(pat);
    return st;
}

typedef nmlx_status (*component_loader)(loader *L, const tj_node *n, int depth);

/* A "Sequence" component (nested at most 8 deep): every entry of its `key`
 * list loaded in turn by `load`. Returns 1, with their status in *st, if n
 * is one; 0 otherwise. */
static int load_sequence(loader *L, const tj_node *n, const char *type, const char *key, int depth,
                         component_loader load, nmlx_status *st) {
    const tj_doc *d = &L->doc;
    if (!type || strcmp(type, "Sequence") || depth >= 8) return 0;
    const tj_node *list = tj_get(d, n, key);
    *st = NMLX_OK;
    for (const tj_node *c = list ? tj_first(d, list) : NULL; c && !*st; c = tj_next(d, c))
        *st = load(L, c, depth + 1);
    return 1;
}

/* ---- normalizers ---------------------------------------------------------- */

static nmlx_status load_normalizer(loader *L, const tj_node *n, int depth) {
    const tj_doc *d = &L->doc;
    nmlx_tokenizer *t = L->tok;
    nmlx_status st;
    if (tj_is_null(n)) return NMLX_OK;
    const char *type = type_of(d, n);
    if (load_sequence(L, n, type, "normalizers", depth, load_normalizer, &st)) return st;
    if (!type) return unsupported("normalizer", type);
    tok_normalizer nz = {0};
    if (!strcmp(type, "NFC"))
        nz.kind = NORM_NFC;
    else if (!strcmp(type, "NFD"))
        nz.kind = NORM_NFD;
    else if (!strcmp(type, "NFKC"))
        nz.kind = NORM_NFKC;
    else if (!strcmp(type, "NFKD"))
        nz.kind = NORM_NFKD;
    else if (!strcmp(type, "Lowercase"))
        nz.kind = NORM_LOWERCASE;
    else if (!strcmp(type, "Strip")) {
        nz.kind = NORM_STRIP;
        nz.left = tj_bool(d, n, "strip_left", 1) == 1;
        nz.right = tj_bool(d, n, "strip_right", 1) == 1;
    } else if (!strcmp(type, "Prepend")) {
        nz.kind = NORM_PREPEND;
        if ((st = load_string(d, n, "prepend", &nz.content, &nz.content_len, "Prepend normalizer")))
            return st;
    } else if (!strcmp(type, "Replace")) {
        nz.kind = NORM_REPLACE;
        if ((st = load_replace(d, n, &nz.pat, &nz.content, &nz.content_len, "Replace normalizer")))
            return st;
    } else {
        return unsupported("normalizer", type);
    }
    if ((st = append((void **)&t->norms, &t->n_norms, &nz, sizeof nz))) {
        tok_pattern_free(&nz.pat);
        free(nz.content);
    }
    return st;
}

/* ---- pre-tokenizers ------------------------------------------------------- */

static nmlx_status load_pretok(loader *L, const tj_node *n, int depth) {
    const tj_doc *d = &L->doc;
    nmlx_tokenizer *t = L->tok;
    nmlx_status st;
    if (tj_is_null(n)) return NMLX_OK;
    const char *type = type_of(d, n);
    if (load_sequence(L, n, type, "pretokenizers", depth, load_pretok, &st)) return st;
    if (!type) return unsupported("pre_tokenizer", type);
    tok_pretok pt = {0};
    pt.behavior = SPLIT_ISOLATED;
    if (!strcmp(type, "Split")) {
        pt.kind = PT_SPLIT;
        if (!parse_behavior(tj_str(tj_get(d, n, "behavior")), &pt.behavior))
            return nmlx_fail(NMLX_ERR_FORMAT, TJ ": Split pre_tokenizer has an unknown behavior");
        pt.invert = tj_bool(d, n, "invert", 0) == 1;
        if ((st = load_pattern(d, n, &pt.pat, TJ ": Split pre_tokenizer"))) return st;
    } else if (!strcmp(type, "ByteLevel")) {
        pt.kind = PT_BYTELEVEL;
        pt.add_prefix_space = tj_bool(d, n, "add_prefix_space", 1) == 1;
        pt.use_regex = tj_bool(d, n, "use_regex", 1) == 1;
        if (pt.use_regex &&
            (st = tok_pattern_compile(&pt.pat, BYTELEVEL_RE, sizeof BYTELEVEL_RE - 1, 1,
                                      TJ ": ByteLevel pre_tokenizer")))
            return st;
    } else if (!strcmp(type, "Metaspace")) {
        pt.kind = PT_METASPACE;
        if ((st = load_char(d, n, "replacement", pt.rep, &pt.rep_len, "Metaspace pre_tokenizer")))
            return st;
        if ((st = parse_prepend_scheme(d, n, &pt.prepend_scheme, "Metaspace pre_tokenizer")))
            return st;
        pt.split = tj_bool(d, n, "split", 1) == 1;
    } else if (!strcmp(type, "Digits")) {
        pt.kind = PT_DIGITS;
        pt.individual_digits = tj_bool(d, n, "individual_digits", 0) == 1;
    } else if (!strcmp(type, "Punctuation")) {
        pt.kind = PT_PUNCTUATION;
        const char *b = tj_str(tj_get(d, n, "behavior"));
        if (b && !parse_behavior(b, &pt.behavior))
            return nmlx_fail(NMLX_ERR_FORMAT,
                             TJ ": Punctuation pre_tokenizer has an unknown behavior");
    } else if (!strcmp(type, "Whitespace")) {
        pt.kind = PT_WHITESPACE;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        pt.kind = PT_WHITESPACE_SPLIT;
    } else {
        return unsupported("pre_tokenizer", type);
    }
    if ((st = append((void **)&t->pretoks, &t->n_pretoks, &pt, sizeof pt)))
        tok_pattern_free(&pt.pat);
    return st;
}

/* ---- decoders ------------------------------------------------------------- */

static nmlx_status load_decoder(loader *L, const tj_node *n, int depth) {
    const tj_doc *d = &L->doc;
    nmlx_tokenizer *t = L->tok;
    nmlx_status st;
    if (tj_is_null(n)) return NMLX_OK;
    t->has_decoder = 1;
    const char *type = type_of(d, n);
    if (load_sequence(L, n, type, "decoders", depth, load_decoder, &st)) return st;
    if (!type) return unsupported("decoder", type);
    tok_decoder dc = {0};
    if (!strcmp(type, "ByteLevel"))
        dc.kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) {
        dc.kind = DEC_BYTEFALLBACK;
        t->has_byte_fallback_decoder = 1;
    } else if (!strcmp(type, "Fuse"))
        dc.kind = DEC_FUSE;
    else if (!strcmp(type, "Metaspace")) {
        dc.kind = DEC_METASPACE;
        if ((st = load_char(d, n, "replacement", dc.rep, &dc.rep_len, "Metaspace decoder")))
            return st;
        if ((st = parse_prepend_scheme(d, n, &dc.prepend_scheme, "Metaspace decoder"))) return st;
    } else if (!strcmp(type, "Strip")) {
        dc.kind = DEC_STRIP;
        if ((st = load_char(d, n, "content", dc.rep, &dc.rep_len, "Strip decoder"))) return st;
        const tj_node *a = tj_get(d, n, "start"), *b = tj_get(d, n, "stop");
        int32_t va = 0, vb = 0;
        if ((!tj_is_null(a) && !node_id(a, &va)) || (!tj_is_null(b) && !node_id(b, &vb)))
            return nmlx_fail(NMLX_ERR_FORMAT, TJ ": Strip decoder 'start'/'stop' must be counts");
        dc.start = va;
        dc.stop = vb;
    } else if (!strcmp(type, "Replace")) {
        dc.kind = DEC_REPLACE;
        if ((st = load_replace(d, n, &dc.pat, &dc.content, &dc.content_len, "Replace decoder")))
            return st;
    } else {
        return unsupported("decoder", type);
    }
    if ((st = append((void **)&t->decs, &t->n_decs, &dc, sizeof dc))) {
        tok_pattern_free(&dc.pat);
        free(dc.content);
    }
    return st;
}

/* ---- post-processors ------------------------------------------------------ */

static nmlx_status wrap_ids(nmlx_tokenizer *t, const int32_t *pre, size_t n_pre, const int32_t *suf,
                            size_t n_suf) {
    int32_t *p = nmlx_malloc((t->n_post_prefix + n_pre + 1) * sizeof *p);
    int32_t *s = nmlx_malloc((t->n_post_suffix + n_suf + 1) * sizeof *s);
    if (!p || !s) {
        free(p);
        free(s);
        return nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
    }
    memcpy(p, pre, n_pre * sizeof *p);
    if (t->n_post_prefix) memcpy(p + n_pre, t->post_prefix, t->n_post_prefix * sizeof *p);
    if (t->n_post_suffix) memcpy(s, t->post_suffix, t->n_post_suffix * sizeof *s);
    memcpy(s + t->n_post_suffix, suf, n_suf * sizeof *s);
    free(t->post_prefix);
    free(t->post_suffix);
    t->post_prefix = p;
    t->post_suffix = s;
    t->n_post_prefix += n_pre;
    t->n_post_suffix += n_suf;
    return NMLX_OK;
}

enum { MAX_TEMPLATE_IDS = 64 };

static nmlx_status load_template(loader *L, const tj_node *n) {
    const tj_doc *d = &L->doc;
    const tj_node *single = tj_get(d, n, "single"), *specials = tj_get(d, n, "special_tokens");
    int32_t pre[MAX_TEMPLATE_IDS], suf[MAX_TEMPLATE_IDS];
    size_t n_pre = 0, n_suf = 0;
    int seen_a = 0;
    if (!single || single->type != TJ_ARRAY)
        return nmlx_fail(NMLX_ERR_FORMAT, TJ ": TemplateProcessing needs a 'single' list");
    for (const tj_node *c = tj_first(d, single); c; c = tj_next(d, c)) {
        const tj_node *sp = tj_get(d, c, "SpecialToken"), *sq = tj_get(d, c, "Sequence");
        if (sq) {
            if (seen_a)
                return nmlx_fail(
                    NMLX_ERR_UNSUPPORTED,
                    TJ ": TemplateProcessing with two sequences in 'single' is not supported");
            seen_a = 1;
            continue;
        }
        const char *name = tj_str(tj_get(d, sp, "id"));
        const tj_node *ids = tj_get(d, tj_get(d, specials, name ? name : ""), "ids");
        if (!name || !ids || ids->type != TJ_ARRAY)
            return nmlx_fail(NMLX_ERR_FORMAT,
                             TJ ": TemplateProcessing special token '%s' is not defined",
                             name ? name : "?");
        for (const tj_node *e = tj_first(d, ids); e; e = tj_next(d, e)) {
            int32_t v;
            if (!node_id(e, &v) || (seen_a ? n_suf : n_pre) >= MAX_TEMPLATE_IDS)
                return nmlx_fail(NMLX_ERR_FORMAT, TJ ": TemplateProcessing ids of '%s' are invalid",
                                 name);
            if (seen_a)
                suf[n_suf++] = v;
            else
                pre[n_pre++] = v;
        }
    }
    return wrap_ids(L->tok, pre, n_pre, suf, n_suf);
}

static nmlx_status load_post(loader *L, const tj_node *n, int depth) {
    const tj_doc *d = &L->doc;
    nmlx_status st;
    if (tj_is_null(n)) return NMLX_OK;
    const char *type = type_of(d, n);
    if (!type) return unsupported("post_processor", type);
    if (load_sequence(L, n, type, "processors", depth, load_post, &st)) return st;
    if (!strcmp(type, "ByteLevel")) return NMLX_OK; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) return load_template(L, n);
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const tj_node *cls = tj_at(d, tj_get(d, n, "cls"), 1),
                      *sep = tj_at(d, tj_get(d, n, "sep"), 1);
        int32_t a, b;
        if (!node_id(cls, &a) || !node_id(sep, &b))
            return nmlx_fail(NMLX_ERR_FORMAT, TJ ": %s needs 'cls' and 'sep' [token, id]", type);
        return wrap_ids(L->tok, &a, 1, &b, 1);
    }
    return unsupported("post_processor", type);
}

/* ---- model ---------------------------------------------------------------- */

static nmlx_status set_token(nmlx_tokenizer *t, tok_buf *pool, int32_t id, const char *s,
                             size_t n) {
    nmlx_status st;
    if (id < 0 || id >= t->n_ids) return NMLX_OK;
    t->tok_off[id] = (uint32_t)pool->len;
    t->tok_len[id] = (uint32_t)n;
    if ((st = tok_buf_append(pool, s, n))) return st;
    return tok_buf_append(pool, "", 1); /* NUL between tokens */
}

static nmlx_status load_merges(loader *L, const tj_node *merges) {
    const tj_doc *d = &L->doc;
    tok_bpe *m = &L->tok->bpe;
    nmlx_status st;
    if ((st = tok_pair_map_init(&m->merges, merges ? merges->len : 0))) return st;
    if (!merges) return NMLX_OK;
    if (merges->type != TJ_ARRAY)
        return nmlx_fail(NMLX_ERR_FORMAT, TJ ": model.merges is not a list");
    tok_buf cat = {0};
    uint32_t rank = 0;
    for (const tj_node *c = tj_first(d, merges); c; c = tj_next(d, c), rank++) {
        const char *a, *b;
        size_t al, bl;
        if (c->type == TJ_STRING) {
            const char *sp = memchr(c->str, ' ', c->len);
            if (!sp || memchr(sp + 1, ' ', c->len - (size_t)(sp + 1 - c->str))) {
                st = nmlx_fail(NMLX_ERR_FORMAT, TJ ": merge %u '%s' is not two tokens", rank,
                               c->str);
                goto done;
            }
            a = c->str;
            al = (size_t)(sp - c->str);
            b = sp + 1;
            bl = c->len - al - 1;
        } else {
            const tj_node *x = tj_first(d, c), *y = x ? tj_next(d, x) : NULL;
            if (c->type != TJ_ARRAY || c->len != 2 || x->type != TJ_STRING ||
                y->type != TJ_STRING) {
                st = nmlx_fail(NMLX_ERR_FORMAT, TJ ": merge %u is not a pair of strings", rank);
                goto done;
            }
            a = x->str;
            al = x->len;
            b = y->str;
            bl = y->len;
        }
        int32_t ia = tok_map_get(&m->vocab, a, al), ib = tok_map_get(&m->vocab, b, bl);
        /* the merged token: a + b without b's continuing_subword_prefix */
        size_t skip = m->prefix_len && bl >= m->prefix_len && !memcmp(b, m->prefix, m->prefix_len)
                          ? m->prefix_len
                          : 0;
        cat.len = 0;
        if ((st = tok_buf_append(&cat, a, al)) || (st = tok_buf_append(&cat, b + skip, bl - skip)))
            goto done;
        int32_t inew = tok_map_get(&m->vocab, cat.p, cat.len);
        if (ia < 0 || ib < 0 || inew < 0) {
            st = nmlx_fail(NMLX_ERR_FORMAT,
                           TJ ": merge %u ('%.*s' '%.*s') uses a token missing from the vocab",
                           rank, (int)al, a, (int)bl, b);
            goto done;
        }
        tok_pair_map_put(&m->merges, ia, ib, rank, inew);
    }
    st = NMLX_OK;
done:
    tok_buf_free(&cat);
    return st;
}

/* Byte mode: key the vocabulary by the raw bytes each byte-level token
 * stands for, so the pipeline never materialises the mapped text. */
static nmlx_status build_raw_vocab(nmlx_tokenizer *t) {
    tok_bpe *m = &t->bpe;
    nmlx_status st;
    size_t total = 0;
    for (size_t i = 0; i < m->vocab.cap; i++)
        if (m->vocab.slots[i].s) total += m->vocab.slots[i].len;
    m->raw_pool = nmlx_malloc(total + 1);
    if (!m->raw_pool) return nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
    if ((st = tok_map_init(&m->raw_vocab, m->vocab.n))) return st;
    size_t used = 0;
    for (size_t i = 0; i < m->vocab.cap; i++) {
        const tok_map_slot *sl = &m->vocab.slots[i];
        if (!sl->s) continue;
        char *o = m->raw_pool + used;
        size_t k = 0, j = 0;
        int ok = 1;
        while (j < sl->len) {
            int len;
            int b = tok_cp_to_byte(tok_utf8_decode(sl->s + j, sl->len - j, &len));
            if (b < 0) {
                ok = 0;
                break;
            }
            o[k++] = (char)b;
            j += (size_t)len;
        }
        if (!ok || k == 0) continue; /* unreachable from byte-level input */
        used += k;
        if ((st = tok_map_put(&m->raw_vocab, o, k, sl->value))) return st;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        m->byte_ids[b] = tok_map_get(&m->raw_vocab, &c, 1);
    }
    return NMLX_OK;
}

static nmlx_status load_model(loader *L, const tj_node *model, tok_buf *pool) {
    const tj_doc *d = &L->doc;
    nmlx_tokenizer *t = L->tok;
    tok_bpe *m = &t->bpe;
    nmlx_status st;
    const char *type = type_of(d, model);
    const tj_node *vocab = tj_get(d, model, "vocab");
    if (!model || model->type != TJ_OBJECT) return nmlx_fail(NMLX_ERR_FORMAT, TJ ": no 'model'");
    if (type ? strcmp(type, "BPE") != 0 : !tj_get(d, model, "merges"))
        return unsupported("model", type);
    if (!vocab || vocab->type != TJ_OBJECT)
        return nmlx_fail(NMLX_ERR_FORMAT, TJ ": model.vocab is not an object");
    const tj_node *dropout = tj_get(d, model, "dropout");
    if (dropout && dropout->type == TJ_NUMBER && dropout->num > 0)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         TJ ": BPE dropout is not supported (not deterministic)");
    m->byte_fallback = tj_bool(d, model, "byte_fallback", 0) == 1;
    m->fuse_unk = tj_bool(d, model, "fuse_unk", 0) == 1;
    m->ignore_merges = tj_bool(d, model, "ignore_merges", 0) == 1;
    const tj_node *pfx = tj_get(d, model, "continuing_subword_prefix");
    const tj_node *sfx = tj_get(d, model, "end_of_word_suffix");
    if (pfx && pfx->type == TJ_STRING && pfx->len &&
        (st = load_string(d, model, "continuing_subword_prefix", &m->prefix, &m->prefix_len,
                          "model")))
        return st;
    if (sfx && sfx->type == TJ_STRING && sfx->len &&
        (st = load_string(d, model, "end_of_word_suffix", &m->suffix, &m->suffix_len, "model")))
        return st;
    /* the pool holds every token string; sized once so map keys can point
     * into it (the JSON document is freed after loading) */
    size_t total = 0;
    for (const tj_node *c = tj_first(d, vocab); c; c = tj_next(d, c)) {
        int32_t id;
        if (!node_id(c, &id))
            return nmlx_fail(NMLX_ERR_FORMAT, TJ ": vocab entry '%s' has no valid id", c->key);
        total += c->key_len + 1;
        if (id + 1 > t->n_ids) t->n_ids = id + 1;
    }
    const tj_node *added = tj_get(d, tj_root(d), "added_tokens");
    for (const tj_node *c = added ? tj_first(d, added) : NULL; c; c = tj_next(d, c)) {
        const tj_node *idn = tj_get(d, c, "id"), *cn = tj_get(d, c, "content");
        int32_t id;
        if (node_id(idn, &id) && id + 1 > t->n_ids) t->n_ids = id + 1;
        if (cn && cn->type == TJ_STRING) total += cn->len + 1;
    }
    size_t id_cap = L->src_len * MAX_IDS_PER_BYTE + ID_SLACK;
    if ((size_t)t->n_ids > id_cap)
        return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                         TJ ": token id %lld is far beyond what a %zu-byte file can define (ids "
                            "must stay below %zu); its id tables would need %zu bytes",
                         (long long)t->n_ids - 1, L->src_len, id_cap,
                         ((size_t)t->n_ids + 1) * (2 * sizeof(uint32_t) + 1));
    if ((st = tok_buf_reserve(pool, total + 1))) return st;
    if ((st = tok_map_init(&m->vocab, vocab->len))) return st;
    t->tok_off = nmlx_malloc(((size_t)t->n_ids + 1) * sizeof *t->tok_off);
    t->tok_len = nmlx_malloc(((size_t)t->n_ids + 1) * sizeof *t->tok_len);
    t->special = nmlx_calloc((size_t)t->n_ids + 1, 1);
    if (!t->tok_off || !t->tok_len || !t->special)
        return nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
    memset(t->tok_len, 0xFF, ((size_t)t->n_ids + 1) * sizeof *t->tok_len);
    for (const tj_node *c = tj_first(d, vocab); c; c = tj_next(d, c)) {
        size_t off = pool->len;
        if ((st = set_token(t, pool, (int32_t)c->num, c->key, c->key_len))) return st;
        if ((st = tok_map_put(&m->vocab, pool->p + off, c->key_len, (int32_t)c->num))) return st;
    }
    /* unk, byte fallback and ASCII tables */
    const char *unk = tj_str(tj_get(d, model, "unk_token"));
    m->unk_id = unk ? tok_map_get(&m->vocab, unk, strlen(unk)) : -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->fallback_ids[b] = m->byte_fallback ? tok_map_get(&m->vocab, name, 6) : -1;
        m->byte_ids[b] = -1;
        if (b < 128) {
            char c = (char)b;
            m->ascii_ids[b] = tok_map_get(&m->vocab, &c, 1);
        }
    }
    return load_merges(L, tj_get(d, model, "merges"));
}

/* ---- added tokens ------------------------------------------------------- */

static nmlx_status load_added(loader *L, tok_buf *pool) {
    const tj_doc *d = &L->doc;
    nmlx_tokenizer *t = L->tok;
    nmlx_status st;
    const tj_node *list = tj_get(d, tj_root(d), "added_tokens");
    size_t n = list && list->type == TJ_ARRAY ? list->len : 0;
    if ((st = tok_map_init(&t->added_map, n))) return st;
    t->added = nmlx_calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
    tok_work w = {0};
    tok_buf norm = {0};
    st = NMLX_OK;
    for (const tj_node *c = n ? tj_first(d, list) : NULL; c; c = tj_next(d, c)) {
        const tj_node *content = tj_get(d, c, "content"), *idn = tj_get(d, c, "id");
        int32_t id;
        if (!content || content->type != TJ_STRING || !node_id(idn, &id)) {
            st = nmlx_fail(NMLX_ERR_FORMAT, TJ ": added token without content or a valid id");
            goto done;
        }
        if (content->len == 0) continue; /* the reference ignores empty tokens */
        tok_added *a = &t->added[t->n_added];
        a->special = tj_bool(d, c, "special", 0) == 1;
        a->lstrip = tj_bool(d, c, "lstrip", 0) == 1;
        a->rstrip = tj_bool(d, c, "rstrip", 0) == 1;
        a->single_word = tj_bool(d, c, "single_word", 0) == 1;
        a->normalized = tj_bool(d, c, "normalized", !a->special) == 1;
        /* an added token already in the model vocab keeps the model's id */
        int32_t vid = tok_map_get(&t->bpe.vocab, content->str, content->len);
        a->id = vid >= 0 ? vid : id;
        if ((st = load_string(d, c, "content", &a->content, NULL, "added token"))) goto done;
        a->len = content->len;
        t->n_added++;
        if ((st = tok_map_put(&t->added_map, a->content, a->len, a->id))) goto done;
        if ((st = set_token(t, pool, a->id, a->content, a->len))) goto done;
        if (a->special && a->id < t->n_ids) t->special[a->id] = 1;
        if (a->normalized) {
            norm.len = 0;
            if ((st = tok_normalize(t, &w, a->content, a->len, &norm))) goto done;
            a->norm = nmlx_malloc(norm.len + 1);
            if (!a->norm) {
                st = nmlx_fail(NMLX_ERR_NOMEM, TJ ": out of memory");
                goto done;
            }
            memcpy(a->norm, norm.p ? norm.p : "", norm.len);
            a->norm[norm.len] = '\0';
            a->norm_len = (uint32_t)norm.len;
        }
    }
    /* tries: the first token with a given content wins (map semantics) */
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (a->normalized) {
            if (a->norm_len && (st = tok_trie_add(&t->trie_norm, a->norm, a->norm_len, (int32_t)i)))
                goto done;
        } else if ((st = tok_trie_add(&t->trie_raw, a->content, a->len, (int32_t)i))) {
            goto done;
        }
    }
    t->has_raw_added = t->trie_raw.n > 0;
    t->has_norm_added = t->trie_norm.n > 0;
done:
    tok_buf_free(&norm);
    tok_work_free(&w);
    return st;
}

/* ---- value domains ---------------------------------------------------------- */

/* Flags the components read with tj_bool (a wrong type would read as false). */
static const char *const BOOL_KEYS[] = {"add_prefix_space",
                                        "strip_left",
                                        "strip_right",
                                        "invert",
                                        "use_regex",
                                        "split",
                                        "individual_digits",
                                        "byte_fallback",
                                        "fuse_unk",
                                        "ignore_merges",
                                        "special",
                                        "lstrip",
                                        "rstrip",
                                        "single_word",
                                        "normalized",
                                        "trim_offsets",
                                        NULL};

/* Every member of the document outside model.vocab / model.merges, checked
 * against the domain of its key: flags true, false or null; "dropout" null
 * or a number in [0, 1]. Out of domain: NMLX_ERR_INVALID_MODEL naming the
 * key. (Enums, ids and patterns are checked where they are read.) */
static nmlx_status check_domains(const tj_doc *d, const tj_node *n, int depth) {
    if (depth > 64 || (n->type != TJ_OBJECT && n->type != TJ_ARRAY)) return NMLX_OK;
    for (const tj_node *c = tj_first(d, n); c; c = tj_next(d, c)) {
        nmlx_status st;
        if (c->key) {
            if (depth == 1 && (!strcmp(c->key, "vocab") || !strcmp(c->key, "merges")))
                continue; /* token strings, not settings */
            for (const char *const *k = BOOL_KEYS; *k; k++)
                if (!strcmp(c->key, *k) && c->type != TJ_TRUE && c->type != TJ_FALSE &&
                    c->type != TJ_NULL)
                    return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                                     TJ ": field '%s' must be true, false or null", c->key);
            if (!strcmp(c->key, "dropout") && c->type != TJ_NULL &&
                !(c->type == TJ_NUMBER && c->num >= 0 && c->num <= 1))
                return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                                 TJ ": field 'dropout' must be null or a number in [0, 1]");
        }
        bool model = depth == 0 && c->key && !strcmp(c->key, "model");
        if ((st = check_domains(d, c, model ? 1 : depth + (depth > 0 ? 1 : 2)))) return st;
    }
    return NMLX_OK;
}

/* ---- BOS / EOS ------------------------------------------------------------ */

/* bos_token / eos_token of tokenizer_config.json or special_tokens_map.json:
 * their domain is a token string, an AddedToken object with a string
 * "content", or null (absent). Anything else fails the load with
 * NMLX_ERR_INVALID_MODEL. A string that names no token leaves the id at -1
 * (transformers would add it as a new token; it cannot be generated). */
static nmlx_status config_token(nmlx_tokenizer *t, json_t *cfg, const char *path, const char *key,
                                int32_t *id) {
    json_t *v = json_object_get(cfg, key);
    const char *field = key;
    char shown[64];
    if (json_is_object(v)) {
        v = json_object_get(v, "content");
        snprintf(shown, sizeof shown, "%s.content", key);
        field = shown;
    }
    if (!v || json_is_null(v)) return NMLX_OK;
    if (!json_is_string(v))
        return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                         "%s: field '%s' must be a token string or an object with a string "
                         "'content' (got a JSON %s)",
                         path, field,
                         json_is_number(v)    ? "number"
                         : json_is_boolean(v) ? "boolean"
                         : json_is_array(v)   ? "array"
                                              : "object");
    if (*id < 0) *id = nmlx_tokenizer_token_to_id(t, json_string_value(v));
    return NMLX_OK;
}

/* tokenizer_config.json, else special_tokens_map.json: both optional, but a
 * file that is there must be a JSON object whose values are in domain. */
static nmlx_status load_bos_eos(nmlx_tokenizer *t, const char *dir) {
    const char *files[] = {"tokenizer_config.json", "special_tokens_map.json"};
    nmlx_status st = NMLX_OK;
    t->bos_id = t->eos_id = -1;
    for (size_t i = 0; i < 2 && st == NMLX_OK; i++) {
        size_t n = strlen(dir) + strlen(files[i]) + 2;
        char *path = nmlx_malloc(n);
        if (!path) return nmlx_fail(NMLX_ERR_NOMEM, "tokenizer: out of memory");
        snprintf(path, n, "%s/%s", dir, files[i]);
        json_error_t err;
        struct stat sb; /* optional files; a FIFO or folder would block or fail */
        bool there = stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
        /* INT_AS_REAL: transformers writes model_max_length as int(1e30) */
        json_t *cfg = there ? json_load_file(path, JSON_DECODE_INT_AS_REAL, &err) : NULL;
        if (there && !cfg)
            st = nmlx_fail(NMLX_ERR_FORMAT, "%s: invalid JSON at line %d, column %d: %s", path,
                           err.line, err.column, err.text);
        else if (cfg && !json_is_object(cfg))
            st = nmlx_fail(NMLX_ERR_FORMAT, "%s: top level must be a JSON object", path);
        if (st == NMLX_OK && cfg) st = config_token(t, cfg, path, "bos_token", &t->bos_id);
        if (st == NMLX_OK && cfg) st = config_token(t, cfg, path, "eos_token", &t->eos_id);
        json_decref(cfg);
        nmlx_free(path);
    }
    return st;
}

/* ---- entry points --------------------------------------------------------- */

void nmlx_tokenizer_free(nmlx_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->tok_off);
    free(t->tok_len);
    free(t->special);
    tok_map_free(&t->bpe.vocab);
    tok_map_free(&t->bpe.raw_vocab);
    free(t->bpe.raw_pool);
    tok_pair_map_free(&t->bpe.merges);
    free(t->bpe.prefix);
    free(t->bpe.suffix);
    for (size_t i = 0; i < t->n_norms; i++) {
        tok_pattern_free(&t->norms[i].pat);
        free(t->norms[i].content);
    }
    free(t->norms);
    for (size_t i = 0; i < t->n_pretoks; i++)
        tok_pattern_free(&t->pretoks[i].pat);
    free(t->pretoks);
    for (size_t i = 0; i < t->n_decs; i++) {
        tok_pattern_free(&t->decs[i].pat);
        free(t->decs[i].content);
    }
    free(t->decs);
    free(t->post_prefix);
    free(t->post_suffix);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    tok_map_free(&t->added_map);
    tok_trie_free(&t->trie_raw);
    tok_trie_free(&t->trie_norm);
    tok_cache_free(&t->cache);
    free(t);
}

nmlx_status nmlx_tokenizer_load(const char *dir, nmlx_tokenizer **out) {
    if (!dir || !out) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_tokenizer_load: NULL argument");
    nmlx_status st;
    loader L;
    memset(&L, 0, sizeof L);
    tok_buf pool = {0};
    char *text = NULL, *path = NULL;
    size_t len = 0, plen = strlen(dir) + sizeof "/tokenizer.json";
    nmlx_tokenizer *t = nmlx_calloc(1, sizeof *t);
    path = nmlx_malloc(plen);
    CHECK(t && path, NMLX_ERR_NOMEM, "nmlx_tokenizer_load: out of memory");
    snprintf(path, plen, "%s/tokenizer.json", dir);
    L.tok = t;
    TRY(read_file(path, &text, &len));
    L.src_len = len;
    st = tj_parse(text, len, path, &L.doc);
    free(text);
    text = NULL;
    if (st) goto cleanup;
    const tj_doc *d = &L.doc;
    CHECK(tj_root(d)->type == TJ_OBJECT, NMLX_ERR_FORMAT, "%s: not a JSON object", path);
    TRY(check_domains(d, tj_root(d), 0));
    TRY(load_normalizer(&L, tj_get(d, tj_root(d), "normalizer"), 0));
    TRY(load_pretok(&L, tj_get(d, tj_root(d), "pre_tokenizer"), 0));
    for (size_t i = 0; i + 1 < t->n_pretoks; i++)
        CHECK(t->pretoks[i].kind != PT_BYTELEVEL, NMLX_ERR_UNSUPPORTED,
              TJ ": a ByteLevel pre_tokenizer followed by other pre-tokenizers is not supported");
    TRY(load_decoder(&L, tj_get(d, tj_root(d), "decoder"), 0));
    for (size_t i = 0; i < t->n_decs; i++)
        if (t->decs[i].kind == DEC_STRIP && (t->decs[i].start > 1 || t->decs[i].stop > 0))
            t->stream_hold_all = 1;
    TRY(load_post(&L, tj_get(d, tj_root(d), "post_processor"), 0));
    TRY(load_model(&L, tj_get(d, tj_root(d), "model"), &pool));
    if (t->n_pretoks && t->pretoks[t->n_pretoks - 1].kind == PT_BYTELEVEL) {
        CHECK(
            !t->bpe.prefix_len && !t->bpe.suffix_len, NMLX_ERR_UNSUPPORTED,
            TJ
            ": byte-level BPE with continuing_subword_prefix/end_of_word_suffix is not supported");
        t->bpe.byte_mode = 1;
        TRY(build_raw_vocab(t));
    }
    TRY(load_added(&L, &pool));
    /* special by string: a vocab id whose string is a special added token */
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].special) {
            int32_t vid = tok_map_get(&t->bpe.vocab, t->added[i].content, t->added[i].len);
            if (vid >= 0 && vid < t->n_ids) t->special[vid] = 1;
        }
    t->pool = pool.p;
    pool.p = NULL;
    TRY(tok_cache_init(&t->cache));
    TRY(load_bos_eos(t, dir));
    *out = t;
    t = NULL;
cleanup:
    if (st != NMLX_OK && t && pool.p) t->pool = pool.p, pool.p = NULL; /* freed with t */
    tok_buf_free(&pool);
    tj_free(&L.doc);
    free(path);
    free(text);
    nmlx_tokenizer_free(t);
    return st;
}
