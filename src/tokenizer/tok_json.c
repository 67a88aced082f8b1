/* Read-only JSON DOM (see tok_json.h): one copy of the text, strings decoded
 * in place, nodes in one growing array, recursion bounded by MAX_DEPTH. */
#include "tok_json.h"

#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 256 };

typedef struct parser {
    char *p, *end;
    tj_doc *doc;
    const char *what;
    const char *start;
} parser;

static nmlx_status perr(parser *ps, const char *msg) {
    return nmlx_fail(NMLX_ERR_FORMAT, "%s: malformed JSON at byte %zu: %s", ps->what,
                     (size_t)(ps->p - ps->start), msg);
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

static nmlx_status new_node(parser *ps, uint32_t *idx) {
    tj_doc *d = ps->doc;
    if (d->n_nodes == d->cap_nodes) {
        size_t cap = d->cap_nodes ? d->cap_nodes * 2 : 1024;
        tj_node *n = nmlx_realloc(d->nodes, cap * sizeof *n);
        if (!n) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory parsing JSON", ps->what);
        d->nodes = n;
        d->cap_nodes = cap;
    }
    *idx = (uint32_t)d->n_nodes++;
    memset(&d->nodes[*idx], 0, sizeof(tj_node));
    return NMLX_OK;
}

/* true, false or null at ps->p: n becomes it. */
static nmlx_status literal(parser *ps, tj_node *n, const char *word, tj_type type) {
    size_t len = strlen(word);
    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len)) return perr(ps, "bad literal");
    n->type = type;
    ps->p += len;
    return NMLX_OK;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(const char *s, const char *end, unsigned *out) {
    if (end - s < 4) return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)s[i]);
        if (h < 0) return 0;
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return 1;
}

static char *put_utf8(char *w, unsigned cp) {
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else if (cp < 0x800) {
        *w++ = (char)(0xC0 | (cp >> 6));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18));
        *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    return w;
}

/* Decodes the string starting after the opening quote, in place. Lone
 * surrogate escapes become U+FFFD (what serde_json's lossy path and JS do). */
static nmlx_status parse_string(parser *ps, const char **out, uint32_t *out_len) {
    char *s = ps->p; /* at opening quote */
    char *r = s + 1, *w = s + 1;
    char *start = w;
    for (;;) {
        /* fast scan of plain bytes */
        char *q = r;
        while (q < ps->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
            q++;
        if (w != r) memmove(w, r, (size_t)(q - r));
        w += q - r;
        r = q;
        if (r >= ps->end) {
            ps->p = r;
            return perr(ps, "unterminated string");
        }
        if (*r == '"') break;
        if ((unsigned char)*r < 0x20) {
            ps->p = r;
            return perr(ps, "control character in string");
        }
        /* escape */
        r++;
        if (r >= ps->end) {
            ps->p = r;
            return perr(ps, "unterminated escape");
        }
        char c = *r++;
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!read_hex4(r, ps->end, &cp)) {
                ps->p = r;
                return perr(ps, "bad \\u escape");
            }
            r += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (ps->end - r >= 6 && r[0] == '\\' && r[1] == 'u' &&
                    read_hex4(r + 2, ps->end, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                    r += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    cp = 0xFFFD;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD;
            }
            w = put_utf8(w, cp);
            break;
        }
        default: ps->p = r; return perr(ps, "bad escape");
        }
    }
    /* r at closing quote; w <= r so the terminator fits */
    *out_len = (uint32_t)(w - start);
    *w = '\0';
    *out = start;
    ps->p = r + 1;
    return NMLX_OK;
}

static nmlx_status parse_value(parser *ps, uint32_t idx, int depth);

static nmlx_status parse_container(parser *ps, uint32_t idx, int depth, int is_obj) {
    nmlx_status st;
    ps->p++; /* [ or { */
    uint32_t prev = 0, count = 0;
    skip_ws(ps);
    char close = is_obj ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return NMLX_OK;
    }
    for (;;) {
        const char *key = NULL;
        uint32_t key_len = 0;
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"') return perr(ps, "expected member name");
            if ((st = parse_string(ps, &key, &key_len)) != NMLX_OK) return st;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return perr(ps, "expected ':'");
            ps->p++;
            skip_ws(ps);
        }
        uint32_t child;
        if ((st = new_node(ps, &child)) != NMLX_OK) return st;
        ps->doc->nodes[child].key = key;
        ps->doc->nodes[child].key_len = key_len;
        if ((st = parse_value(ps, child, depth + 1)) != NMLX_OK) return st;
        if (prev)
            ps->doc->nodes[prev].next = child;
        else
            ps->doc->nodes[idx].first = child;
        prev = child;
        count++;
        skip_ws(ps);
        if (ps->p >= ps->end) return perr(ps, "unterminated container");
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            break;
        }
        return perr(ps, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    ps->doc->nodes[idx].len = count;
    return NMLX_OK;
}

static nmlx_status parse_value(parser *ps, uint32_t idx, int depth) {
    if (depth > MAX_DEPTH) return perr(ps, "nesting too deep");
    skip_ws(ps);
    if (ps->p >= ps->end) return perr(ps, "unexpected end");
    char c = *ps->p;
    tj_node *n = &ps->doc->nodes[idx];
    switch (c) {
    case '{': n->type = TJ_OBJECT; return parse_container(ps, idx, depth, 1);
    case '[': n->type = TJ_ARRAY; return parse_container(ps, idx, depth, 0);
    case '"': {
        const char *s;
        uint32_t len;
        nmlx_status st = parse_string(ps, &s, &len);
        if (st != NMLX_OK) return st;
        n = &ps->doc->nodes[idx];
        n->type = TJ_STRING;
        n->str = s;
        n->len = len;
        return NMLX_OK;
    }
    case 't': return literal(ps, n, "true", TJ_TRUE);
    case 'f': return literal(ps, n, "false", TJ_FALSE);
    case 'n': return literal(ps, n, "null", TJ_NULL);
    default: {
        if (c != '-' && (c < '0' || c > '9')) return perr(ps, "unexpected character");
        /* fast path: a plain integer (vocab ids) */
        const char *q = ps->p + (c == '-');
        long long iv = 0;
        int nd = 0;
        while (q < ps->end && *q >= '0' && *q <= '9' && nd < 15)
            iv = iv * 10 + (*q++ - '0'), nd++;
        if (nd > 0 && !(nd > 1 && ps->p[c == '-'] == '0') &&
            (q >= ps->end || (*q != '.' && *q != 'e' && *q != 'E' && (*q < '0' || *q > '9')))) {
            n->type = TJ_NUMBER;
            n->num = (double)(c == '-' ? -iv : iv);
            ps->p = (char *)q;
            return NMLX_OK;
        }
        /* JSON's grammar first (strtod also takes "nan", "inf", hex, "1."
         * and leading zeros): -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
        const char *g = ps->p + (c == '-');
        if (g >= ps->end || *g < '0' || *g > '9') return perr(ps, "bad number");
        if (*g == '0' && g + 1 < ps->end && g[1] >= '0' && g[1] <= '9')
            return perr(ps, "bad number (leading zero)");
        while (g < ps->end && *g >= '0' && *g <= '9') g++;
        if (g < ps->end && *g == '.') {
            if (++g >= ps->end || *g < '0' || *g > '9') return perr(ps, "bad number");
            while (g < ps->end && *g >= '0' && *g <= '9') g++;
        }
        if (g < ps->end && (*g == 'e' || *g == 'E')) {
            if (++g < ps->end && (*g == '+' || *g == '-')) g++;
            if (g >= ps->end || *g < '0' || *g > '9') return perr(ps, "bad number");
            while (g < ps->end && *g >= '0' && *g <= '9') g++;
        }
        /* the buffer is NUL-terminated, so strtod stops in time */
        char *endp;
        double v = strtod(ps->p, &endp);
        if (endp != g) return perr(ps, "bad number");
        n->type = TJ_NUMBER;
        n->num = v;
        ps->p = endp;
        return NMLX_OK;
    }
    }
}

nmlx_status tj_parse(const char *text, size_t len, const char *what, tj_doc *doc) {
    memset(doc, 0, sizeof *doc);
    doc->buf = nmlx_malloc(len + 1);
    if (!doc->buf) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", what);
    memcpy(doc->buf, text, len);
    doc->buf[len] = '\0';
    parser ps = {doc->buf, doc->buf + len, doc, what, doc->buf};
    uint32_t root;
    nmlx_status st = new_node(&ps, &root);
    if (st == NMLX_OK) st = parse_value(&ps, root, 0);
    if (st == NMLX_OK) {
        skip_ws(&ps);
        if (ps.p != ps.end) st = perr(&ps, "trailing characters");
    }
    if (st != NMLX_OK) tj_free(doc);
    return st;
}

void tj_free(tj_doc *doc) {
    free(doc->buf);
    free(doc->nodes);
    memset(doc, 0, sizeof *doc);
}

const tj_node *tj_get(const tj_doc *d, const tj_node *obj, const char *key) {
    if (!obj || obj->type != TJ_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (const tj_node *c = tj_first(d, obj); c; c = tj_next(d, c))
        if (c->key_len == kl && !memcmp(c->key, key, kl)) return c;
    return NULL;
}

const tj_node *tj_at(const tj_doc *d, const tj_node *arr, size_t i) {
    if (!arr || arr->type != TJ_ARRAY) return NULL;
    const tj_node *c = tj_first(d, arr);
    while (c && i--)
        c = tj_next(d, c);
    return c;
}

const char *tj_str(const tj_node *n) { return n && n->type == TJ_STRING ? n->str : NULL; }

int tj_is_null(const tj_node *n) { return !n || n->type == TJ_NULL; }

int tj_bool(const tj_doc *d, const tj_node *obj, const char *key, int dflt) {
    const tj_node *n = tj_get(d, obj, key);
    if (tj_is_null(n)) return dflt;
    if (n->type == TJ_TRUE) return 1;
    if (n->type == TJ_FALSE) return 0;
    return -1;
}
