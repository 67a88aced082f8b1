/* String -> index hash map (see name_map.h): FNV-1a hash, linear probing,
 * load factor at most 1/2 so probes stay short. */
#include "io/name_map.h"

#include <string.h>

static uint64_t hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

nmlx_status nmlx_name_map_init(nmlx_name_map *m, size_t n) {
    memset(m, 0, sizeof *m);
    size_t cap = 16;
    while (cap < 2 * n + 1) {
        if (cap > SIZE_MAX / 4 / sizeof(size_t))
            return nmlx_fail(NMLX_ERR_NOMEM, "name map: too many names (%zu)", n);
        cap *= 2;
    }
    m->keys = nmlx_calloc(cap, sizeof *m->keys);
    m->values = nmlx_malloc(cap * sizeof *m->values);
    if (!m->keys || !m->values) {
        nmlx_name_map_free(m);
        return nmlx_fail(NMLX_ERR_NOMEM, "name map: out of memory for %zu names", n);
    }
    m->cap = cap;
    return NMLX_OK;
}

void nmlx_name_map_free(nmlx_name_map *m) {
    if (!m) return;
    nmlx_free((void *)m->keys);
    nmlx_free(m->values);
    memset(m, 0, sizeof *m);
}

bool nmlx_name_map_insert(nmlx_name_map *m, const char *key, size_t value, size_t *existing) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)hash_str(key) & mask;; i = (i + 1) & mask) {
        if (!m->keys[i]) {
            m->keys[i] = key;
            m->values[i] = value;
            m->count++;
            return true;
        }
        if (!strcmp(m->keys[i], key)) {
            if (existing) *existing = m->values[i];
            return false;
        }
    }
}

bool nmlx_name_map_find(const nmlx_name_map *m, const char *key, size_t *value) {
    if (!m->cap) return false;
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)hash_str(key) & mask;; i = (i + 1) & mask) {
        if (!m->keys[i]) return false;
        if (!strcmp(m->keys[i], key)) {
            *value = m->values[i];
            return true;
        }
    }
}
