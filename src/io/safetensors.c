/* safetensors over mmap (see safetensors.h).
 *
 * File layout: u64 little-endian N, N bytes of JSON header, data region.
 * The header maps tensor name -> {dtype, shape, data_offsets: [begin, end]}
 * with offsets relative to the data region, plus an optional __metadata__
 * string map. Each file is mapped whole, read-only; tensor data pointers
 * point into the map and are NOT necessarily aligned to their dtype
 * (writers pad the header so data usually starts 8-aligned, but nothing
 * guarantees it): kernels must load through memcpy or unaligned-safe code.
 */
#define _DEFAULT_SOURCE /* madvise */
#define _POSIX_C_SOURCE 200809L
#include "io/safetensors.h"

#include "io/file_util.h"
#include "io/name_map.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    MAX_HEADER_BYTES = 100 * 1000 * 1000, /* larger headers are corrupt, not real */
    MAX_INDEX_BYTES = 256 * 1000 * 1000
};

typedef struct st_file {
    char *path;
    void *map; /* whole file, PROT_READ, MAP_PRIVATE */
    size_t size;
    json_t *metadata; /* the __metadata__ object, or NULL */
    /* identity and state at open, for nmlx_weights_verify */
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
} st_file;

typedef struct st_entry {
    nmlx_tensor t;       /* t.name is owned (nmlx_strdup) */
    size_t file;         /* index into files */
    uint64_t begin, end; /* byte range in the file's data region */
} st_entry;

struct nmlx_weights {
    char *source; /* the file or folder opened, for messages */
    st_file *files;
    size_t n_files, cap_files;
    st_entry *entries; /* file order: files in open order, each by data offset */
    size_t n, cap;
    nmlx_name_map map;
    size_t nbytes;
};

/* ---- dtypes ----------------------------------------------------------- */

static bool parse_dtype(const char *s, nmlx_dtype *out) {
    static const struct {
        const char *name;
        nmlx_dtype dt;
    } known[] = {
        {"F32", NMLX_DT_F32}, {"F16", NMLX_DT_F16}, {"BF16", NMLX_DT_BF16}, {"U32", NMLX_DT_U32},
        {"U8", NMLX_DT_U8},   {"I8", NMLX_DT_I8},   {"I32", NMLX_DT_I32},   {"I64", NMLX_DT_I64},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(s, known[i].name)) {
            *out = known[i].dt;
            return true;
        }
    return false;
}

/* dtypes the safetensors format defines but nmlx does not load */
static bool is_other_safetensors_dtype(const char *s) {
    static const char *const other[] = {"BOOL",    "I16",     "U16",       "U64",        "F64",
                                        "C64",     "F8_E4M3", "F8_E5M2",   "F8_E8M0",    "F4",
                                        "F6_E2M3", "F6_E3M2", "F8_E4M3FN", "F8_E5M2FNUZ"};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        if (!strcmp(s, other[i])) return true;
    return false;
}

/* ---- growing the arrays ---------------------------------------------- */

static nmlx_status reserve_entries(nmlx_weights *w, size_t extra, const char *path) {
    if (extra <= w->cap - w->n) return NMLX_OK;
    if (extra > SIZE_MAX / 2 / sizeof(st_entry) - w->n)
        return nmlx_fail(NMLX_ERR_NOMEM, "%s: too many tensors", path);
    size_t cap = w->cap ? w->cap : 64;
    while (cap < w->n + extra)
        cap *= 2;
    st_entry *e = nmlx_realloc(w->entries, cap * sizeof *e);
    if (!e) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory for %zu tensors", path, cap);
    w->entries = e;
    w->cap = cap;
    return NMLX_OK;
}

static nmlx_status add_file_slot(nmlx_weights *w, const char *path) {
    if (w->n_files == w->cap_files) {
        size_t cap = w->cap_files ? 2 * w->cap_files : 4;
        st_file *f = nmlx_realloc(w->files, cap * sizeof *f);
        if (!f) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", path);
        w->files = f;
        w->cap_files = cap;
    }
    st_file *f = &w->files[w->n_files];
    memset(f, 0, sizeof *f);
    f->path = nmlx_strdup(path);
    if (!f->path) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", path);
    w->n_files++;
    return NMLX_OK;
}

/* ---- one header entry ------------------------------------------------- */

static bool get_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Validates one tensor entry against the data region of `data_size` bytes
 * and fills e (except the name, the file and the data pointer). */
static nmlx_status parse_entry(const char *path, const char *name, const json_t *v,
                               uint64_t data_size, st_entry *e) {
    if (!json_is_object(v))
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s': entry must be an object", path, name);
    const json_t *dt = json_object_get(v, "dtype");
    const json_t *shape = json_object_get(v, "shape");
    const json_t *offs = json_object_get(v, "data_offsets");
    if (!dt || !shape || !offs)
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s': missing '%s'", path, name,
                         !dt      ? "dtype"
                         : !shape ? "shape"
                                  : "data_offsets");
    if (!json_is_string(dt))
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s': 'dtype' must be a string", path, name);
    const char *dts = json_string_value(dt);
    if (!parse_dtype(dts, &e->t.dtype)) {
        if (is_other_safetensors_dtype(dts))
            return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                             "%s: tensor '%s' has dtype %s, which nmlx does not support (F32, "
                             "F16, BF16, U32, U8, I8, I32, I64)",
                             path, name, dts);
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", path, name,
                         dts);
    }
    if (!json_is_array(shape))
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s': 'shape' must be an array", path, name);
    size_t nd = json_array_size(shape);
    if (nd > NMLX_MAX_DIMS)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: tensor '%s' has %zu dims (at most %d supported)", path, name, nd,
                         NMLX_MAX_DIMS);
    uint64_t numel = 1;
    bool overflow = false, has_zero = false;
    e->t.ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (!get_u64(json_array_get(shape, i), &d))
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "%s: tensor '%s': shape[%zu] must be a non-negative integer", path,
                             name, i);
        e->t.shape[i] = (int64_t)d;
        if (d == 0)
            has_zero = true;
        else if (numel > UINT64_MAX / d)
            overflow = true;
        else
            numel *= d;
    }
    for (size_t i = nd; i < NMLX_MAX_DIMS; i++)
        e->t.shape[i] = 0;
    /* a zero dim makes the product 0 however large the others are */
    if (has_zero) {
        numel = 0;
        overflow = false;
    }
    size_t es = nmlx_dtype_size(e->t.dtype);
    if (overflow || numel > (uint64_t)INT64_MAX || numel > UINT64_MAX / es)
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s': shape is too large", path, name);
    uint64_t nbytes = numel * es;

    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !get_u64(json_array_get(offs, 0), &e->begin) || !get_u64(json_array_get(offs, 1), &e->end))
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "%s: tensor '%s': 'data_offsets' must be [begin, end] non-negative "
                         "integers",
                         path, name);
    if (e->begin > e->end)
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s': data_offsets begin %llu > end %llu",
                         path, name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_size)
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets end %llu is past the data region "
                         "(%llu bytes; file truncated?)",
                         path, name, (unsigned long long)e->end, (unsigned long long)data_size);
    if (e->end - e->begin != nbytes)
        return nmlx_fail(NMLX_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets span %llu bytes but shape and dtype %s "
                         "need %llu",
                         path, name, (unsigned long long)(e->end - e->begin),
                         nmlx_dtype_name(e->t.dtype), (unsigned long long)nbytes);
    return NMLX_OK;
}

static nmlx_status check_metadata(const char *path, const json_t *meta) {
    if (!json_is_object(meta))
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: __metadata__ must be an object", path);
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return nmlx_fail(NMLX_ERR_FORMAT, "%s: __metadata__ value '%s' must be a string", path,
                             k);
    }
    return NMLX_OK;
}

static int cmp_entry_offset(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

/* ---- one file --------------------------------------------------------- */

/* Maps `path` and appends its tensors (sorted by data offset) to w. On
 * failure whatever was added stays in w, to be released by the caller. */
static nmlx_status add_file(nmlx_weights *w, const char *path) {
    nmlx_status st = NMLX_OK;
    json_t *root = NULL;
    int fd = -1;
    TRY(add_file_slot(w, path));
    size_t fi = w->n_files - 1;
    st_file *f = &w->files[fi];

    /* O_NONBLOCK: a FIFO in place of the file fails below, never blocks */
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    CHECK(fd >= 0, NMLX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    CHECK(fstat(fd, &sb) == 0, NMLX_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    CHECK(S_ISREG(sb.st_mode), NMLX_ERR_IO, "%s: not a regular file", path);
    CHECK(sb.st_size >= 8, NMLX_ERR_FORMAT,
          "%s: truncated safetensors file (%lld bytes; the header length alone takes 8)", path,
          (long long)sb.st_size);
    CHECK((uint64_t)sb.st_size <= SIZE_MAX, NMLX_ERR_IO, "%s: file too large to map", path);
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(map != MAP_FAILED, NMLX_ERR_IO, "%s: cannot mmap %zu bytes: %s", path, size,
          strerror(errno));
    f->map = map;
    f->size = size;
    f->dev = sb.st_dev;
    f->ino = sb.st_ino;
    f->mtime = sb.st_mtim;
    /* a file cut between the fstat and the mmap would fault (SIGBUS) on the
     * pages past its new end: look again now that it is mapped */
    struct stat sb2;
    CHECK(fstat(fd, &sb2) == 0 && sb2.st_size == sb.st_size, NMLX_ERR_IO,
          "%s: the file changed size while being opened (%lld -> %lld bytes)", path,
          (long long)sb.st_size, (long long)sb2.st_size);
    close(fd);
    fd = -1;

    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    CHECK(hlen <= MAX_HEADER_BYTES, NMLX_ERR_FORMAT,
          "%s: header length %llu is absurd (over %d bytes): not a safetensors file?", path,
          (unsigned long long)hlen, MAX_HEADER_BYTES);
    CHECK(hlen <= size - 8, NMLX_ERR_FORMAT,
          "%s: header length %llu runs past the end of the file (%zu bytes; truncated?)", path,
          (unsigned long long)hlen, size);
    const char *data = (const char *)p + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;

    json_error_t jerr;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(root, NMLX_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", path,
          jerr.text, jerr.line, jerr.column);
    CHECK(json_is_object(root), NMLX_ERR_FORMAT, "%s: header must be a JSON object", path);

    size_t count = json_object_size(root);
    TRY(reserve_entries(w, count, path));
    size_t first = w->n;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            TRY(check_metadata(path, v));
            f->metadata = json_incref(v);
            continue;
        }
        st_entry e;
        memset(&e, 0, sizeof e);
        TRY(parse_entry(path, key, v, data_size, &e));
        e.file = fi;
        e.t.data = (void *)(data + e.begin); /* read-only map: kernels never write */
        e.t.name = nmlx_strdup(key);
        CHECK(e.t.name, NMLX_ERR_NOMEM, "%s: out of memory", path);
        w->entries[w->n++] = e;
    }

    /* file order = data order; then no two non-empty tensors may share bytes */
    st_entry *es = w->entries ? w->entries + first : NULL; /* NULL: header with no tensors */
    size_t n = w->n - first;
    if (n > 1) qsort(es, n, sizeof *es, cmp_entry_offset);
    const st_entry *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        if (es[i].begin == es[i].end) continue;
        CHECK(!prev || es[i].begin >= prev->end, NMLX_ERR_FORMAT,
              "%s: tensors '%s' and '%s' overlap (bytes %llu-%llu and %llu-%llu)", path,
              prev->t.name, es[i].t.name, (unsigned long long)prev->begin,
              (unsigned long long)prev->end, (unsigned long long)es[i].begin,
              (unsigned long long)es[i].end);
        prev = &es[i];
        w->nbytes += (size_t)(es[i].end - es[i].begin);
    }

cleanup:
    if (fd >= 0) close(fd);
    json_decref(root);
    return st;
}

/* Builds the name -> entry map over everything added; a name in two files
 * is an error naming both. */
static nmlx_status build_map(nmlx_weights *w) {
    nmlx_status st = nmlx_name_map_init(&w->map, w->n);
    if (st != NMLX_OK) return st;
    for (size_t i = 0; i < w->n; i++) {
        size_t other = 0;
        if (!nmlx_name_map_insert(&w->map, w->entries[i].t.name, i, &other))
            return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s' appears twice: in %s and in %s",
                             w->entries[i].t.name, w->files[w->entries[other].file].path,
                             w->files[w->entries[i].file].path);
    }
    return NMLX_OK;
}

static nmlx_status weights_new(const char *source, nmlx_weights **out) {
    nmlx_weights *w = nmlx_calloc(1, sizeof *w);
    if (!w) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", source);
    w->source = nmlx_strdup(source);
    if (!w->source) {
        nmlx_free(w);
        return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", source);
    }
    *out = w;
    return NMLX_OK;
}

void nmlx_weights_release(const nmlx_weights *w, const void *p, size_t bytes) {
    if (!w || !p || !bytes) return;
    uintptr_t a = (uintptr_t)p, b = a + bytes;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t page = pg > 0 ? (uintptr_t)pg : 4096u;
    for (size_t i = 0; i < w->n_files; i++) {
        uintptr_t m0 = (uintptr_t)w->files[i].map, m1 = m0 + w->files[i].size;
        if (!w->files[i].map || a < m0 || b > m1) continue;
        uintptr_t lo = (a + page - 1) & ~(page - 1), hi = b & ~(page - 1);
        /* PROT_READ + MAP_PRIVATE: never written, so no private copies to
         * lose; the pages come back from the file if read again */
        if (lo < hi) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
        return;
    }
}

nmlx_status nmlx_weights_verify(const nmlx_weights *w) {
    for (size_t i = 0; w && i < w->n_files; i++) {
        const st_file *f = &w->files[i];
        struct stat sb;
        /* gone, or another file under the name (replaced by a rename): the
         * mapping keeps the contents it was opened with */
        if (!f->map || stat(f->path, &sb) != 0 || sb.st_dev != f->dev || sb.st_ino != f->ino)
            continue;
        if ((uint64_t)sb.st_size < f->size)
            return nmlx_fail(NMLX_ERR_IO,
                             "%s: truncated on disk while loaded (%zu -> %lld bytes): reading "
                             "its weights would crash (SIGBUS); reload the model",
                             f->path, f->size, (long long)sb.st_size);
        if ((uint64_t)sb.st_size != f->size || sb.st_mtim.tv_sec != f->mtime.tv_sec ||
            sb.st_mtim.tv_nsec != f->mtime.tv_nsec)
            return nmlx_fail(NMLX_ERR_IO,
                             "%s: modified on disk while loaded (rewritten in place, not replaced "
                             "by a rename): its weights may be mixed; reload the model",
                             f->path);
    }
    return NMLX_OK;
}

void nmlx_weights_close(nmlx_weights *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++)
        nmlx_free((void *)w->entries[i].t.name);
    for (size_t i = 0; i < w->n_files; i++) {
        st_file *f = &w->files[i];
        if (f->map) munmap(f->map, f->size);
        json_decref(f->metadata);
        nmlx_free(f->path);
    }
    nmlx_name_map_free(&w->map);
    nmlx_free(w->entries);
    nmlx_free(w->files);
    nmlx_free(w->source);
    nmlx_free(w);
}

nmlx_status nmlx_weights_open_file(const char *path, nmlx_weights **out) {
    nmlx_status st = NMLX_OK;
    nmlx_weights *w = NULL;
    CHECK(path && out, NMLX_ERR_INVALID_ARG, "nmlx_weights_open_file: NULL argument");
    TRY(weights_new(path, &w));
    TRY(add_file(w, path));
    TRY(build_map(w));
    *out = w;
    w = NULL;
cleanup:
    nmlx_weights_close(w);
    return st;
}

/* ---- folders ---------------------------------------------------------- */

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name from an index must stay inside the folder. */
static bool safe_shard_name(const char *s) {
    if (!s[0] || s[0] == '/') return false;
    for (const char *c = s; *c;) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 2 && c[0] == '.' && c[1] == '.') return false;
        c += len + (slash ? 1 : 0);
    }
    return true;
}

/* model.safetensors.index.json: {"weight_map": {tensor: shard file}, ...} */
static nmlx_status open_index(nmlx_weights *w, const char *dir, const char *index_path) {
    nmlx_status st = NMLX_OK;
    char *text = NULL, *shard_path = NULL;
    const char **shards = NULL;
    size_t n_shards = 0, len = 0;
    json_t *root = NULL;
    nmlx_name_map seen = {0};

    TRY(nmlx_io_read_file(index_path, MAX_INDEX_BYTES, &text, &len));
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(root, NMLX_ERR_FORMAT, "%s: invalid JSON: %s (line %d, column %d)", index_path, jerr.text,
          jerr.line, jerr.column);
    CHECK(json_is_object(root), NMLX_ERR_FORMAT, "%s: must be a JSON object", index_path);
    json_t *wm = json_object_get(root, "weight_map");
    CHECK(json_is_object(wm), NMLX_ERR_FORMAT, "%s: missing 'weight_map' object", index_path);

    /* distinct shard names, opened once each in sorted order */
    size_t n_map = json_object_size(wm);
    TRY(nmlx_name_map_init(&seen, n_map));
    shards = nmlx_malloc((n_map ? n_map : 1) * sizeof *shards);
    CHECK(shards, NMLX_ERR_NOMEM, "%s: out of memory", index_path);
    const char *tname;
    json_t *v;
    json_object_foreach(wm, tname, v) {
        CHECK(json_is_string(v), NMLX_ERR_FORMAT,
              "%s: weight_map entry for tensor '%s' must be a file name string", index_path, tname);
        const char *s = json_string_value(v);
        CHECK(safe_shard_name(s), NMLX_ERR_FORMAT,
              "%s: weight_map entry for tensor '%s' names shard '%s', which is not a file in "
              "the folder",
              index_path, tname, s);
        if (nmlx_name_map_insert(&seen, s, n_shards, NULL)) shards[n_shards++] = s;
    }
    if (n_shards > 1) qsort(shards, n_shards, sizeof *shards, cmp_str_ptr);
    size_t first_file = w->n_files;
    for (size_t i = 0; i < n_shards; i++) {
        shard_path = nmlx_io_join(dir, shards[i]);
        CHECK(shard_path, NMLX_ERR_NOMEM, "%s: out of memory", index_path);
        CHECK(nmlx_io_is_file(shard_path), NMLX_ERR_IO, "%s: shard '%s' named in %s is missing",
              shard_path, shards[i], index_path);
        TRY(add_file(w, shard_path));
        nmlx_free(shard_path);
        shard_path = NULL;
    }
    TRY(build_map(w));

    /* every tensor the index names must be in the shard it names */
    json_object_foreach(wm, tname, v) {
        const char *s = json_string_value(v);
        size_t idx;
        CHECK(nmlx_name_map_find(&w->map, tname, &idx), NMLX_ERR_FORMAT,
              "%s: tensor '%s' is listed in shard '%s' but that shard does not contain it",
              index_path, tname, s);
        const char **pos =
            n_shards ? bsearch(&s, shards, n_shards, sizeof *shards, cmp_str_ptr) : NULL;
        size_t file = w->entries[idx].file;
        CHECK(pos && file == first_file + (size_t)(pos - shards), NMLX_ERR_FORMAT,
              "%s: tensor '%s' is listed in shard '%s' but was found in %s", index_path, tname, s,
              w->files[file].path);
    }

cleanup:
    nmlx_name_map_free(&seen);
    nmlx_free((void *)shards);
    nmlx_free(shard_path);
    json_decref(root);
    nmlx_free(text);
    return st;
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* No index and no model.safetensors: every *.safetensors, sorted by name. */
static nmlx_status open_all_in_dir(nmlx_weights *w, const char *dir) {
    nmlx_status st = NMLX_OK;
    DIR *d = NULL;
    char **names = NULL, *path = NULL;
    size_t n = 0, cap = 0;

    d = opendir(dir);
    CHECK(d, NMLX_ERR_IO, "%s: cannot list folder: %s", dir, strerror(errno));
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            CHECK(errno == 0, NMLX_ERR_IO, "%s: cannot list folder: %s", dir, strerror(errno));
            break;
        }
        if (de->d_name[0] == '.' || !has_suffix(de->d_name, ".safetensors")) continue;
        path = nmlx_io_join(dir, de->d_name);
        CHECK(path, NMLX_ERR_NOMEM, "%s: out of memory", dir);
        bool is_file = nmlx_io_is_file(path);
        nmlx_free(path);
        path = NULL;
        if (!is_file) continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 8;
            char **nn = nmlx_realloc(names, nc * sizeof *nn);
            CHECK(nn, NMLX_ERR_NOMEM, "%s: out of memory", dir);
            names = nn;
            cap = nc;
        }
        names[n] = nmlx_strdup(de->d_name);
        CHECK(names[n], NMLX_ERR_NOMEM, "%s: out of memory", dir);
        n++;
    }
    CHECK(n > 0, NMLX_ERR_IO, "no .safetensors files in %s", dir);
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (size_t i = 0; i < n; i++) {
        path = nmlx_io_join(dir, names[i]);
        CHECK(path, NMLX_ERR_NOMEM, "%s: out of memory", dir);
        TRY(add_file(w, path));
        nmlx_free(path);
        path = NULL;
    }
    TRY(build_map(w));

cleanup:
    if (d) closedir(d);
    for (size_t i = 0; i < n; i++)
        nmlx_free(names[i]);
    nmlx_free(names);
    nmlx_free(path);
    return st;
}

nmlx_status nmlx_weights_open_dir(const char *dir, nmlx_weights **out) {
    nmlx_status st = NMLX_OK;
    nmlx_weights *w = NULL;
    char *path = NULL;
    CHECK(dir && out, NMLX_ERR_INVALID_ARG, "nmlx_weights_open_dir: NULL argument");
    struct stat sb;
    CHECK(stat(dir, &sb) == 0, NMLX_ERR_IO, "model folder '%s' does not exist: %s", dir,
          strerror(errno));
    CHECK(S_ISDIR(sb.st_mode), NMLX_ERR_IO, "'%s' is not a folder", dir);
    TRY(weights_new(dir, &w));

    path = nmlx_io_join(dir, "model.safetensors.index.json");
    CHECK(path, NMLX_ERR_NOMEM, "%s: out of memory", dir);
    if (nmlx_io_is_file(path)) {
        TRY(open_index(w, dir, path));
    } else {
        nmlx_free(path);
        path = nmlx_io_join(dir, "model.safetensors");
        CHECK(path, NMLX_ERR_NOMEM, "%s: out of memory", dir);
        if (nmlx_io_is_file(path)) {
            TRY(add_file(w, path));
            TRY(build_map(w));
        } else {
            TRY(open_all_in_dir(w, dir));
        }
    }
    *out = w;
    w = NULL;
cleanup:
    nmlx_free(path);
    nmlx_weights_close(w);
    return st;
}

/* ---- queries ---------------------------------------------------------- */

size_t nmlx_weights_count(const nmlx_weights *w) { return w ? w->n : 0; }

const nmlx_tensor *nmlx_weights_at(const nmlx_weights *w, size_t i) {
    return w && i < w->n ? &w->entries[i].t : NULL;
}

const nmlx_tensor *nmlx_weights_find(const nmlx_weights *w, const char *name) {
    size_t i;
    if (!w || !name || !nmlx_name_map_find(&w->map, name, &i)) return NULL;
    return &w->entries[i].t;
}

/* "[2, 3]" or "[2, *]" for messages */
static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) {
        if (shape[i] < 0)
            n += (size_t)snprintf(buf + n, cap - n, "%s*", i ? ", " : "");
        else
            n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

nmlx_status nmlx_weights_get(const nmlx_weights *w, const char *name, int ndim,
                             const int64_t *shape, const nmlx_tensor **out) {
    if (!w || !name || !out || ndim < 0 || ndim > NMLX_MAX_DIMS || (ndim > 0 && !shape))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_weights_get: bad argument (tensor '%s')",
                         name ? name : "(null)");
    const nmlx_tensor *t = nmlx_weights_find(w, name);
    if (!t) return nmlx_fail(NMLX_ERR_FORMAT, "%s: tensor '%s' is missing", w->source, name);
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = false;
    if (!ok) {
        char want[128], got[128];
        format_shape(want, sizeof want, ndim, shape);
        format_shape(got, sizeof got, t->ndim, t->shape);
        return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                         "%s: tensor '%s' has shape %s, expected %s (from config.json)", w->source,
                         name, got, want);
    }
    *out = t;
    return NMLX_OK;
}

size_t nmlx_weights_nbytes(const nmlx_weights *w) { return w ? w->nbytes : 0; }

const char *nmlx_weights_metadata(const nmlx_weights *w, const char *key) {
    if (!w || !key) return NULL;
    for (size_t i = 0; i < w->n_files; i++) {
        const json_t *v = json_object_get(w->files[i].metadata, key);
        if (json_is_string(v)) return json_string_value(v);
    }
    return NULL;
}
