/* A string -> index hash map (open addressing, linear probing) for O(1)
 * tensor lookup by name. Keys are borrowed: the strings must outlive the
 * map. Fixed capacity, sized once for the number of keys. Depends on
 * common.h only. */
#ifndef NMLX_IO_NAME_MAP_H
#define NMLX_IO_NAME_MAP_H

#include "common.h"

typedef struct nmlx_name_map {
    const char **keys; /* NULL = empty slot */
    size_t *values;
    size_t cap; /* power of two, > 2 * max keys */
    size_t count;
} nmlx_name_map;

/* Sizes the map for up to n keys. NMLX_ERR_NOMEM on failure (map left empty,
 * safe to free). */
nmlx_status nmlx_name_map_init(nmlx_name_map *m, size_t n);
void nmlx_name_map_free(nmlx_name_map *m);
/* Inserts key -> value. Returns false (and sets *existing to the value
 * already stored) if the key is present; the map is unchanged then. The
 * caller must not insert more keys than it sized the map for. */
bool nmlx_name_map_insert(nmlx_name_map *m, const char *key, size_t value, size_t *existing);
/* True and *value set if found. */
bool nmlx_name_map_find(const nmlx_name_map *m, const char *key, size_t *value);

#endif
