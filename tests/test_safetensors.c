/* safetensors reader: files written here by an independent little writer
 * (random data of every dtype, read back bit-exactly), sharded folders, and
 * malformed files, each failure checked for its status code and for a
 * message naming the file / tensor / shard at fault. Everything lives in a
 * mkdtemp folder under /tmp, removed at the end. */
#define _XOPEN_SOURCE 700
#include "harness.h"

#include "io/safetensors.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[64];

/* ---- a tiny independent writer --------------------------------------- */

typedef struct wt {
    const char *name, *dtype;
    int ndim;
    int64_t shape[6];
    size_t esize;
    unsigned char *data; /* random bytes, owned */
    size_t nbytes;
} wt;

static wt make_tensor(const char *name, const char *dtype, size_t esize, int ndim, ...) {
    wt t = {.name = name, .dtype = dtype, .ndim = ndim, .esize = esize};
    va_list ap;
    va_start(ap, ndim);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = va_arg(ap, int);
        numel *= (size_t)t.shape[i];
    }
    va_end(ap);
    t.nbytes = numel * esize;
    t.data = malloc(t.nbytes ? t.nbytes : 1);
    for (size_t i = 0; i < t.nbytes; i++)
        t.data[i] = (unsigned char)(test_rand_u64() >> 56);
    return t;
}

static char *path_in(const char *dir, const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_raw(const char *path, uint64_t hlen_field, const char *header, size_t hlen,
                      const void *data, size_t dlen) {
    FILE *f = fopen(path, "wb");
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(hlen_field >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, hlen, f);
    if (dlen) fwrite(data, 1, dlen, f);
    fclose(f);
}

/* Writes tensors in the order given (data in `data_order`, a permutation,
 * or NULL for the same order), header padded with spaces to 8 bytes. */
static void write_st(const char *path, wt *ts, int n, const int *data_order, const char *meta) {
    size_t cap = 256 * (size_t)n + 1024;
    char *hdr = malloc(cap);
    size_t *off = calloc((size_t)n, sizeof *off), total = 0;
    for (int j = 0; j < n; j++) {
        int i = data_order ? data_order[j] : j;
        off[i] = total;
        total += ts[i].nbytes;
    }
    size_t h = (size_t)snprintf(hdr, cap, "{");
    if (meta) h += (size_t)snprintf(hdr + h, cap - h, "\"__metadata__\":%s,", meta);
    for (int i = 0; i < n; i++) {
        h += (size_t)snprintf(hdr + h, cap - h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                              i ? "," : "", ts[i].name, ts[i].dtype);
        for (int d = 0; d < ts[i].ndim; d++)
            h += (size_t)snprintf(hdr + h, cap - h, "%s%lld", d ? "," : "",
                                  (long long)ts[i].shape[d]);
        h += (size_t)snprintf(hdr + h, cap - h, "],\"data_offsets\":[%zu,%zu]}", off[i],
                              off[i] + ts[i].nbytes);
    }
    h += (size_t)snprintf(hdr + h, cap - h, "}");
    while (h % 8)
        hdr[h++] = ' ';
    unsigned char *data = malloc(total ? total : 1);
    for (int i = 0; i < n; i++)
        memcpy(data + off[i], ts[i].data, ts[i].nbytes);
    write_raw(path, h, hdr, h, data, total);
    free(data);
    free(off);
    free(hdr);
}

static void free_tensors(wt *ts, int n) {
    for (int i = 0; i < n; i++)
        free(ts[i].data);
}

/* A one-header file with the given JSON and `dlen` random data bytes. */
static void write_header(const char *path, const char *json, size_t dlen) {
    unsigned char *d = malloc(dlen ? dlen : 1);
    for (size_t i = 0; i < dlen; i++)
        d[i] = (unsigned char)test_rand_u64();
    write_raw(path, strlen(json), json, strlen(json), d, dlen);
    free(d);
}

static char *make_dir(const char *name) {
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_root, name);
    mkdir(buf[k], 0700);
    return buf[k];
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* ---- checks ----------------------------------------------------------- */

static bool same_tensor(const nmlx_tensor *t, const wt *w) {
    if (!t || strcmp(t->name, w->name) || strcmp(nmlx_dtype_name(t->dtype), w->dtype) ||
        t->ndim != w->ndim || nmlx_dtype_size(t->dtype) != w->esize)
        return false;
    for (int d = 0; d < w->ndim; d++)
        if (t->shape[d] != w->shape[d]) return false;
    return nmlx_tensor_nbytes(t) == w->nbytes && memcmp(t->data, w->data, w->nbytes) == 0;
}

/* Expects open_file(path) to fail with `want`, the message naming each
 * of the given strings (NULL-terminated). */
static void expect_file_fails(const char *path, nmlx_status want, const char *what1,
                              const char *what2, int line) {
    nmlx_weights *w = NULL;
    nmlx_status st = nmlx_weights_open_file(path, &w);
    const char *msg = nmlx_last_error();
    EXPECT(st == want && !w, "line %d: status %d (want %d): %s", line, st, want, msg);
    EXPECT(strstr(msg, path), "line %d: message lacks the file name: %s", line, msg);
    if (what1) EXPECT(strstr(msg, what1), "line %d: message lacks '%s': %s", line, what1, msg);
    if (what2) EXPECT(strstr(msg, what2), "line %d: message lacks '%s': %s", line, what2, msg);
    nmlx_weights_close(w);
}
#define FILE_FAILS(path, want, a, b) expect_file_fails(path, want, a, b, __LINE__)

static void expect_dir_fails(const char *dir, nmlx_status want, const char *what1,
                             const char *what2, int line) {
    nmlx_weights *w = NULL;
    nmlx_status st = nmlx_weights_open_dir(dir, &w);
    const char *msg = nmlx_last_error();
    EXPECT(st == want && !w, "line %d: status %d (want %d): %s", line, st, want, msg);
    if (what1) EXPECT(strstr(msg, what1), "line %d: message lacks '%s': %s", line, what1, msg);
    if (what2) EXPECT(strstr(msg, what2), "line %d: message lacks '%s': %s", line, what2, msg);
    nmlx_weights_close(w);
}
#define DIR_FAILS(dir, want, a, b) expect_dir_fails(dir, want, a, b, __LINE__)

/* ---- tests ------------------------------------------------------------ */

static void test_every_dtype(void) {
    wt ts[] = {
        make_tensor("f32", "F32", 4, 2, 3, 5),
        make_tensor("u8_odd", "U8", 1, 1, 13), /* makes the next tensors unaligned */
        make_tensor("f16", "F16", 2, 1, 7),
        make_tensor("bf16", "BF16", 2, 3, 2, 3, 4),
        make_tensor("u32", "U32", 4, 4, 4, 1, 2, 3),
        make_tensor("i8", "I8", 1, 2, 5, 3),
        make_tensor("i32", "I32", 4, 1, 6),
        make_tensor("i64", "I64", 8, 2, 2, 2),
        make_tensor("scalar", "F32", 4, 0),
        make_tensor("empty", "F16", 2, 2, 0, 4),
    };
    int n = (int)(sizeof ts / sizeof ts[0]);
    /* header order differs from data order: at() must follow the data */
    int order[] = {9, 2, 0, 1, 5, 3, 4, 8, 6, 7};
    char *path = path_in(tmp_root, "all.safetensors");
    write_st(path, ts, n, order, "{\"format\":\"pt\",\"note\":\"random\"}");

    nmlx_weights *w = NULL;
    nmlx_status st = nmlx_weights_open_file(path, &w);
    EXPECT(st == NMLX_OK, "open: %s", nmlx_last_error());
    if (!w) return;
    EXPECT(nmlx_weights_count(w) == (size_t)n, "count %zu", nmlx_weights_count(w));
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        total += ts[i].nbytes;
        EXPECT(same_tensor(nmlx_weights_find(w, ts[i].name), &ts[i]), "tensor %s differs",
               ts[i].name);
    }
    for (int j = 0; j < n; j++) {
        /* the zero-size tensor shares its offset with the next: either order */
        const nmlx_tensor *t = nmlx_weights_at(w, (size_t)j);
        if (order[j] == 9 || order[j] == 2)
            EXPECT(t && (same_tensor(t, &ts[9]) || same_tensor(t, &ts[2])), "at(%d)", j);
        else
            EXPECT(same_tensor(t, &ts[order[j]]), "at(%d) is %s, want %s", j, t ? t->name : "NULL",
                   ts[order[j]].name);
    }
    EXPECT(nmlx_weights_at(w, (size_t)n) == NULL, "at past the end");
    const nmlx_tensor *sc = nmlx_weights_find(w, "scalar");
    EXPECT(sc && sc->ndim == 0 && nmlx_tensor_numel(sc) == 1, "scalar is ndim 0, numel 1");
    const nmlx_tensor *em = nmlx_weights_find(w, "empty");
    EXPECT(em && em->ndim == 2 && nmlx_tensor_numel(em) == 0, "zero-size tensor");
    EXPECT(nmlx_weights_nbytes(w) == total, "nbytes %zu want %zu", nmlx_weights_nbytes(w), total);
    EXPECT(nmlx_weights_find(w, "missing") == NULL, "absent name");
    EXPECT(nmlx_weights_find(w, "__metadata__") == NULL, "metadata is not a tensor");
    const char *fmt = nmlx_weights_metadata(w, "format");
    EXPECT(fmt && !strcmp(fmt, "pt"), "metadata format");
    EXPECT(!nmlx_weights_metadata(w, "absent"), "absent metadata key");

    /* get: exact shape, wildcards, wrong rank, wrong size, missing */
    const nmlx_tensor *t = NULL;
    int64_t s_ok[3] = {2, 3, 4}, s_any[3] = {2, -1, 4}, s_bad[3] = {2, 3, 5};
    EXPECT(nmlx_weights_get(w, "bf16", 3, s_ok, &t) == NMLX_OK && same_tensor(t, &ts[3]),
           "get exact");
    EXPECT(nmlx_weights_get(w, "bf16", 3, s_any, &t) == NMLX_OK, "get with wildcard");
    EXPECT(nmlx_weights_get(w, "scalar", 0, NULL, &t) == NMLX_OK, "get scalar");
    t = NULL;
    st = nmlx_weights_get(w, "bf16", 3, s_bad, &t);
    EXPECT(st == NMLX_ERR_INVALID_MODEL && !t && strstr(nmlx_last_error(), "bf16") &&
               strstr(nmlx_last_error(), "[2, 3, 4]") && strstr(nmlx_last_error(), "[2, 3, 5]"),
           "get wrong shape: %s", nmlx_last_error());
    st = nmlx_weights_get(w, "bf16", 2, s_ok, &t);
    EXPECT(st == NMLX_ERR_INVALID_MODEL && strstr(nmlx_last_error(), "bf16"), "get wrong rank: %s",
           nmlx_last_error());
    st = nmlx_weights_get(w, "nope.weight", 2, s_ok, &t);
    EXPECT(st == NMLX_ERR_FORMAT && strstr(nmlx_last_error(), "nope.weight"), "get missing: %s",
           nmlx_last_error());
    nmlx_weights_close(w);
    free_tensors(ts, n);
}

static void test_empty_and_many(void) {
    /* no tensors at all (with and without metadata) is a valid file */
    char *p = path_in(tmp_root, "empty.safetensors");
    write_header(p, "{}", 0);
    nmlx_weights *w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK && nmlx_weights_count(w) == 0,
           "empty header: %s", nmlx_last_error());
    nmlx_weights_close(w);
    w = NULL;
    write_header(p, "{\"__metadata__\":{\"a\":\"b\"}}", 5);
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK && nmlx_weights_count(w) == 0 &&
               !strcmp(nmlx_weights_metadata(w, "a"), "b"),
           "metadata only: %s", nmlx_last_error());
    nmlx_weights_close(w);

    /* thousands of names: every one found through the hash map */
    enum { N = 3000 };
    static wt ts[N];
    static char names[N][48];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.w%d", i / 7, i % 7);
        ts[i] = make_tensor(names[i], i % 2 ? "BF16" : "I8", i % 2 ? 2 : 1, 1, 1 + i % 5);
    }
    p = path_in(tmp_root, "many.safetensors");
    write_st(p, ts, N, NULL, NULL);
    w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK, "many: %s", nmlx_last_error());
    int bad = 0;
    for (int i = 0; w && i < N; i++) {
        if (!same_tensor(nmlx_weights_find(w, names[i]), &ts[i])) bad++;
        if (!same_tensor(nmlx_weights_at(w, (size_t)i), &ts[i])) bad++;
    }
    EXPECT(bad == 0, "%d of %d lookups wrong", bad, N);
    EXPECT(w && !nmlx_weights_find(w, "model.layers.0.mlp.w9"), "absent among many");
    nmlx_weights_close(w);
    free_tensors(ts, N);
}

static void test_malformed_files(void) {
    char *p = path_in(tmp_root, "bad.safetensors");
    const char *ok_hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";

    FILE *f = fopen(p, "wb"); /* 0 bytes */
    fclose(f);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "truncated", NULL);
    write_raw(p, 0, "", 0, "abc", 3);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "JSON", NULL); /* header length 0 */
    f = fopen(p, "wb");
    fwrite("\x10\0\0", 1, 3, f);
    fclose(f);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "8", NULL); /* length itself cut */

    /* header cut: the length says more than the file holds */
    write_raw(p, strlen(ok_hdr) + 40, ok_hdr, strlen(ok_hdr), NULL, 0);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "header length", NULL);
    write_raw(p, 1ull << 40, ok_hdr, strlen(ok_hdr), NULL, 0);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "absurd", NULL);
    /* data cut: the tensor's end lies past the data region */
    write_header(p, ok_hdr, 20);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'w'", "truncated");
    write_header(p, ok_hdr, 24);
    nmlx_weights *w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK, "valid control: %s", nmlx_last_error());
    nmlx_weights_close(w);
    write_header(p, ok_hdr, 40); /* trailing unused bytes are tolerated */
    w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK, "trailing bytes: %s", nmlx_last_error());
    nmlx_weights_close(w);

    write_header(p, "{\"w\":{\"dtype\":\"F32\",", 24);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "JSON", "line");
    write_header(p, "[1,2,3]", 24);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "object", NULL);
    write_header(p, "{\"w\":[1,2]}", 24);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'w'", NULL);
    write_header(p,
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "duplicate", NULL);

    /* dtypes */
    write_header(p, "{\"w64\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]}}", 24);
    FILE_FAILS(p, NMLX_ERR_UNSUPPORTED, "'w64'", "F64");
    write_header(p, "{\"fp8\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[0,3]}}", 3);
    FILE_FAILS(p, NMLX_ERR_UNSUPPORTED, "'fp8'", "F8_E4M3");
    write_header(p, "{\"wq\":{\"dtype\":\"FLOAT32\",\"shape\":[3],\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'wq'", "FLOAT32");
    write_header(p, "{\"wq\":{\"dtype\":32,\"shape\":[3],\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'wq'", "dtype");

    /* missing or ill-typed fields */
    write_header(p, "{\"a.b\":{\"shape\":[3],\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "dtype");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "shape");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":[3]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "data_offsets");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":\"3\",\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "shape");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "shape[0]");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":[1,2.5],\"data_offsets\":[0,12]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "shape[1]");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12,14]}}", 14);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "data_offsets");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,\"12\"]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "data_offsets");
    write_header(p, "{\"a.b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[-4,8]}}", 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a.b'", "data_offsets");
    write_header(p, "{\"d5\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,2]}}", 2);
    FILE_FAILS(p, NMLX_ERR_UNSUPPORTED, "'d5'", "5 dims");

    /* sizes and ranges */
    write_header(p, "{\"sz\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'sz'", "12");
    write_header(p,
                 "{\"big\":{\"dtype\":\"I64\",\"shape\":[4611686018427387904,4],"
                 "\"data_offsets\":[0,8]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'big'", "too large");
    write_header(p, "{\"rev\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'rev'", "begin");
    write_header(p, "{\"oob\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}", 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'oob'", "past");
    write_header(p,
                 "{\"one\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"two\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'one'", "'two'");
    write_header(p,
                 "{\"inner\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]},"
                 "\"outer\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'inner'", "overlap");
    write_header(p, "{\"__metadata__\":{\"n\":3}}", 0);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "__metadata__", "'n'");
    write_header(p, "{\"__metadata__\":[\"x\"]}", 0);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "__metadata__", NULL);

    /* not there / not a file */
    FILE_FAILS(path_in(tmp_root, "nowhere.safetensors"), NMLX_ERR_IO, "nowhere", NULL);
    FILE_FAILS(tmp_root, NMLX_ERR_IO, "not a regular file", NULL);
}

/* Three shards + index; tensors shuffled across shards. */
static void write_sharded(const char *dir, wt *ts, int n) {
    char shard_names[3][64];
    wt per[3][16];
    int cnt[3] = {0};
    char index[8192];
    size_t h = (size_t)snprintf(index, sizeof index,
                                "{\"metadata\":{\"total_size\":123},\"weight_map\":{");
    for (int i = 0; i < n; i++) {
        int s = (i * 7 + 1) % 3;
        per[s][cnt[s]++] = ts[i];
        h += (size_t)snprintf(index + h, sizeof index - h,
                              "%s\"%s\":\"model-%05d-of-00003.safetensors\"", i ? "," : "",
                              ts[i].name, s + 1);
    }
    snprintf(index + h, sizeof index - h, "}}");
    for (int s = 0; s < 3; s++) {
        snprintf(shard_names[s], sizeof shard_names[s], "model-%05d-of-00003.safetensors", s + 1);
        write_st(path_in(dir, shard_names[s]), per[s], cnt[s], NULL, "{\"format\":\"pt\"}");
    }
    write_text(path_in(dir, "model.safetensors.index.json"), index);
}

static void test_folders(void) {
    wt ts[10];
    static char names[10][64];
    for (int i = 0; i < 10; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.self_attn.q_proj.weight", i);
        ts[i] = make_tensor(names[i], i % 3 ? "BF16" : "F32", i % 3 ? 2 : 4, 2, 3 + i, 5);
    }

    /* sharded with an index */
    char *dir = make_dir("sharded");
    write_sharded(dir, ts, 10);
    write_st(path_in(dir, "stray.safetensors"), ts, 1, NULL, NULL); /* not in the index */
    nmlx_weights *w = NULL;
    EXPECT(nmlx_weights_open_dir(dir, &w) == NMLX_OK, "sharded: %s", nmlx_last_error());
    EXPECT(nmlx_weights_count(w) == 10, "sharded count %zu", nmlx_weights_count(w));
    for (int i = 0; w && i < 10; i++)
        EXPECT(same_tensor(nmlx_weights_find(w, names[i]), &ts[i]), "sharded %s", names[i]);
    /* at(): shard 1's tensors first (shard files in name order) */
    EXPECT(w && !strcmp(nmlx_weights_at(w, 0)->name, names[2]), "first of shard 1: %s",
           w ? nmlx_weights_at(w, 0)->name : "");
    EXPECT(w && nmlx_weights_metadata(w, "format"), "shard metadata");
    nmlx_weights_close(w);

    /* fault injection: every allocation failure is clean */
    int ok = 0, nomem = 0, other = 0;
    for (long k = 1; k < 400 && !ok; k++) {
        w = NULL;
        nmlx_test_fail_alloc_after(k);
        nmlx_status st = nmlx_weights_open_dir(dir, &w);
        nmlx_test_fail_alloc_after(0);
        if (st == NMLX_OK) {
            ok++;
            EXPECT(nmlx_weights_count(w) == 10, "fault run k=%ld count", k);
        } else if (st == NMLX_ERR_NOMEM && !w) {
            nomem++;
        } else {
            other++;
            fprintf(stderr, "fault k=%ld: status %d: %s\n", k, st, nmlx_last_error());
        }
        nmlx_weights_close(w);
    }
    EXPECT(ok == 1 && nomem > 10 && other == 0, "fault injection: %d ok, %d nomem, %d other", ok,
           nomem, other);

    /* a missing shard */
    remove(path_in(dir, "model-00002-of-00003.safetensors"));
    DIR_FAILS(dir, NMLX_ERR_IO, "model-00002-of-00003.safetensors", "missing");

    /* a tensor the index names but its shard lacks */
    dir = make_dir("absent_in_shard");
    write_sharded(dir, ts, 10);
    /* shard 2 holds 0,3,6,9 per the index; write it without 9 */
    wt s2[] = {ts[0], ts[3], ts[6]};
    write_st(path_in(dir, "model-00002-of-00003.safetensors"), s2, 3, NULL, NULL);
    DIR_FAILS(dir, NMLX_ERR_FORMAT, names[9], "model-00002-of-00003.safetensors");

    /* a tensor found, but in another shard than the index says */
    dir = make_dir("wrong_shard");
    write_sharded(dir, ts, 10);
    /* shard 1 holds 2,5,8 and shard 3 holds 1,4,7: move 8 into shard 3 */
    wt s1[] = {ts[2], ts[5]}, s3[] = {ts[1], ts[4], ts[7], ts[8]};
    write_st(path_in(dir, "model-00001-of-00003.safetensors"), s1, 2, NULL, NULL);
    write_st(path_in(dir, "model-00003-of-00003.safetensors"), s3, 4, NULL, NULL);
    DIR_FAILS(dir, NMLX_ERR_FORMAT, names[8], "model-00001-of-00003.safetensors");

    /* bad index files */
    dir = make_dir("bad_index");
    write_text(path_in(dir, "model.safetensors.index.json"), "{\"weight_map\": {\"a\": 1}}");
    DIR_FAILS(dir, NMLX_ERR_FORMAT, "'a'", "model.safetensors.index.json");
    write_text(path_in(dir, "model.safetensors.index.json"), "{\"weight_map\": [}");
    DIR_FAILS(dir, NMLX_ERR_FORMAT, "model.safetensors.index.json", "line");
    write_text(path_in(dir, "model.safetensors.index.json"), "{\"metadata\": {}}");
    DIR_FAILS(dir, NMLX_ERR_FORMAT, "weight_map", NULL);
    write_text(path_in(dir, "model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"../outside.safetensors\"}}");
    DIR_FAILS(dir, NMLX_ERR_FORMAT, "../outside.safetensors", "'a'");
    /* a broken shard is reported with its own file name */
    write_text(path_in(dir, "model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"s.safetensors\"}}");
    write_header(path_in(dir, "s.safetensors"), "{\"a\":{\"dtype\":\"F32\"}}", 0);
    DIR_FAILS(dir, NMLX_ERR_FORMAT, "s.safetensors", "'a'");

    /* model.safetensors wins over other files */
    dir = make_dir("single");
    write_st(path_in(dir, "model.safetensors"), ts, 4, NULL, NULL);
    write_st(path_in(dir, "another.safetensors"), ts, 4, NULL, NULL); /* same names: ignored */
    w = NULL;
    EXPECT(nmlx_weights_open_dir(dir, &w) == NMLX_OK && nmlx_weights_count(w) == 4,
           "model.safetensors: %s", nmlx_last_error());
    for (int i = 0; w && i < 4; i++)
        EXPECT(same_tensor(nmlx_weights_find(w, names[i]), &ts[i]), "single %s", names[i]);
    nmlx_weights_close(w);

    /* no index, no model.safetensors: every *.safetensors in name order */
    dir = make_dir("globbed");
    write_st(path_in(dir, "b.safetensors"), ts + 3, 3, NULL, NULL);
    write_st(path_in(dir, "a.safetensors"), ts, 3, NULL, NULL);
    write_text(path_in(dir, "notes.txt"), "not weights");
    mkdir(path_in(dir, "sub.safetensors"), 0700); /* a folder is skipped */
    w = NULL;
    EXPECT(nmlx_weights_open_dir(dir, &w) == NMLX_OK && nmlx_weights_count(w) == 6, "globbed: %s",
           nmlx_last_error());
    for (int i = 0; w && i < 6; i++)
        EXPECT(same_tensor(nmlx_weights_at(w, (size_t)i), &ts[i]), "globbed at(%d)", i);
    nmlx_weights_close(w);
    /* ... and a name in two of them is an error naming it and both files */
    write_st(path_in(dir, "c.safetensors"), ts + 4, 1, NULL, NULL);
    DIR_FAILS(dir, NMLX_ERR_FORMAT, names[4], "c.safetensors");

    DIR_FAILS(make_dir("nothing"), NMLX_ERR_IO, "no .safetensors files in", "nothing");
    DIR_FAILS(path_in(tmp_root, "no_such_folder"), NMLX_ERR_IO, "no_such_folder", NULL);
    DIR_FAILS(path_in(tmp_root, "all.safetensors"), NMLX_ERR_IO, "all.safetensors", "folder");
    free_tensors(ts, 10);
}

/* nmlx_weights_release drops resident pages of a mapped range: the data
 * reads back the same; ranges outside the mappings are left alone. */
static void test_release(void) {
    wt ts[2] = {make_tensor("big", "F32", 4, 2, 300, 1000),
                make_tensor("small", "U8", 1, 1, 77)};
    char *p = path_in(tmp_root, "release.safetensors");
    write_st(p, ts, 2, NULL, NULL);
    nmlx_weights *w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK, "release: %s", nmlx_last_error());
    if (w) {
        const nmlx_tensor *big = nmlx_weights_find(w, "big");
        EXPECT(big && same_tensor(big, &ts[0]), "release: read before");
        nmlx_weights_release(w, big->data, nmlx_tensor_nbytes(big));
        EXPECT(same_tensor(big, &ts[0]) && same_tensor(nmlx_weights_find(w, "small"), &ts[1]),
               "release: same data after");
        unsigned char heap[3 * 4096 + 1];
        memset(heap, 0x5a, sizeof heap);
        nmlx_weights_release(w, heap, sizeof heap); /* not a mapping of w: untouched */
        bool kept = true;
        for (size_t i = 0; i < sizeof heap; i++) kept &= heap[i] == 0x5a;
        EXPECT(kept, "release: memory outside the mappings untouched");
        nmlx_weights_release(w, NULL, 10);
        nmlx_weights_release(NULL, big->data, 10);
    }
    nmlx_weights_close(w);
    free_tensors(ts, 2);
}

/* Sizes chosen to overflow: products of dims past 2^64, bytes past 2^64,
 * offsets at the top of the integer range, a header that claims the whole
 * file, tensors exactly at the end and one byte past it. */
static void test_hostile_sizes(void) {
    char *p = path_in(tmp_root, "hostile.safetensors");
    write_header(p,
                 "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],"
                 "\"data_offsets\":[0,8]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'a'", "too large"); /* dims product wraps 2^64 */
    write_header(p,
                 "{\"b\":{\"dtype\":\"F32\",\"shape\":[4611686018427387905],"
                 "\"data_offsets\":[0,4]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'b'", NULL); /* numel * 4 wraps */
    write_header(p,
                 "{\"c\":{\"dtype\":\"U8\",\"shape\":[8],"
                 "\"data_offsets\":[9223372036854775807,9223372036854775807]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'c'", NULL);
    write_header(p,
                 "{\"d\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807],"
                 "\"data_offsets\":[0,9223372036854775807]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'d'", "past");
    /* a zero dim makes any product 0; the huge dim alone does not overflow */
    write_header(p,
                 "{\"z\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],"
                 "\"data_offsets\":[8,8]}}",
                 8);
    nmlx_weights *w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK, "zero-dim tensor: %s", nmlx_last_error());
    nmlx_weights_close(w);
    /* exactly at the end of the file, then one byte past it */
    write_header(p, "{\"e\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[5,8]}}", 8);
    w = NULL;
    EXPECT(nmlx_weights_open_file(p, &w) == NMLX_OK, "tensor at the end: %s", nmlx_last_error());
    nmlx_weights_close(w);
    write_header(p, "{\"e\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[6,9]}}", 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'e'", "past");
    /* a header length claiming exactly the rest of the file: no data region */
    write_header(p, "{\"f\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 0);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'f'", "truncated");
    /* the same bytes claimed twice in reverse order, and nested */
    write_header(p,
                 "{\"g2\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
                 "\"g1\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[0,5]}}",
                 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "overlap", NULL);
    /* dtype and shape that disagree with the span, both ways */
    write_header(p, "{\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'h'", "need 6");
    write_header(p, "{\"h\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8);
    FILE_FAILS(p, NMLX_ERR_FORMAT, "'h'", "need 8");
}

/* A mapped file changed on disk (nmlx_weights_verify): replaced by a rename
 * or deleted is harmless; rewritten in place or truncated is reported. */
static void test_changed_on_disk(void) {
    char *p = path_in(tmp_root, "live.safetensors");
    char *q = path_in(tmp_root, "live.safetensors.new");
    const char *hdr = "{\"w\":{\"dtype\":\"U8\",\"shape\":[4096],\"data_offsets\":[0,4096]}}";
    char pbuf[512], qbuf[512];
    snprintf(pbuf, sizeof pbuf, "%s", p);
    snprintf(qbuf, sizeof qbuf, "%s", q);
    nmlx_weights *w = NULL;

    /* replaced by a rename: the mapping keeps the old bytes */
    write_header(pbuf, hdr, 4096);
    EXPECT(nmlx_weights_open_file(pbuf, &w) == NMLX_OK, "%s", nmlx_last_error());
    if (!w) return;
    unsigned char first = *(const unsigned char *)nmlx_weights_find(w, "w")->data;
    write_header(qbuf, hdr, 4096);
    EXPECT(rename(qbuf, pbuf) == 0, "rename");
    EXPECT(nmlx_weights_verify(w) == NMLX_OK, "replaced by rename: %s", nmlx_last_error());
    EXPECT(*(const unsigned char *)nmlx_weights_find(w, "w")->data == first, "old bytes kept");
    nmlx_weights_close(w);

    /* deleted: fine */
    w = NULL;
    EXPECT(nmlx_weights_open_file(pbuf, &w) == NMLX_OK, "%s", nmlx_last_error());
    unlink(pbuf);
    EXPECT(nmlx_weights_verify(w) == NMLX_OK, "deleted: %s", nmlx_last_error());
    nmlx_weights_close(w);

    /* rewritten in place, same size */
    write_header(pbuf, hdr, 4096);
    w = NULL;
    EXPECT(nmlx_weights_open_file(pbuf, &w) == NMLX_OK, "%s", nmlx_last_error());
    EXPECT(nmlx_weights_verify(w) == NMLX_OK, "unchanged: %s", nmlx_last_error());
    int fd = open(pbuf, O_WRONLY);
    EXPECT(fd >= 0 && pwrite(fd, "xyz", 3, 200) == 3, "pwrite");
    /* a modification time surely different from the open's */
    struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 678}};
    if (fd >= 0) futimens(fd, ts), close(fd);
    EXPECT(nmlx_weights_verify(w) == NMLX_ERR_IO && strstr(nmlx_last_error(), "modified") &&
               strstr(nmlx_last_error(), "live.safetensors"),
           "rewritten in place: %s", nmlx_last_error());

    /* truncated in place: reported before anything reads past the end */
    EXPECT(truncate(pbuf, 100) == 0, "truncate");
    EXPECT(nmlx_weights_verify(w) == NMLX_ERR_IO && strstr(nmlx_last_error(), "truncated") &&
               strstr(nmlx_last_error(), "live.safetensors"),
           "truncated: %s", nmlx_last_error());
    nmlx_weights_close(w);
    unlink(pbuf);
}

int main(void) {
    test_seed(20250611);
    snprintf(tmp_root, sizeof tmp_root, "/tmp/nmlx_st_XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_every_dtype();
    test_empty_and_many();
    test_malformed_files();
    test_folders();
    test_release();
    test_hostile_sizes();
    test_changed_on_disk();
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_summary();
}
