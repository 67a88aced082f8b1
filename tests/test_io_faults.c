/* I/O fault injection for the writers (io/file_write.h): `nmlx convert`,
 * the atomic file writer and quantize-on-load's memory file. Each loop
 * fails the 1st, 2nd, ... Nth I/O operation (create, write, fsync, close,
 * rename, mkdir) until the operation runs out of operations to fail:
 *   - ENOSPC / EIO: a clean NMLX_ERR_IO whose message names the file and the
 *     cause, the destination absent (or untouched), no temporary left in the
 *     folder, no descriptor leaked (and, under ASan/valgrind, no memory);
 *   - EINTR and short writes: retried / continued, the output byte for byte
 *     the one an undisturbed run writes.
 * Reads (nmlx_test_fail_read_after: config.json, generation_config.json,
 * tokenizer.json through a model load) are walked the same way: EIO is a
 * clean error naming the file and the cause, EINTR and short reads load
 * the same model.
 * Runs against tests/fixtures/qwen3 and models/demo (read only) in a
 * mkdtemp folder. */
#define _GNU_SOURCE
#include "harness.h"

#include "io/file_util.h"
#include "io/file_write.h"
#include "nmlx.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}
static void rm_rf(const char *p) { nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int count_dir(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    if (d) closedir(d);
    return n;
}

static int count_fds(void) { return count_dir("/proc/self/fd"); }

static char *slurp(const char *path, size_t *len) {
    char *buf = NULL;
    *len = 0;
    if (nmlx_io_read_file(path, (size_t)1 << 30, &buf, len) != NMLX_OK) return NULL;
    return buf;
}

static bool same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    bool same = x && y && la == lb && !memcmp(x, y, la);
    nmlx_free(x);
    nmlx_free(y);
    return same;
}

static const char *const out_files[] = {"model.safetensors", "config.json", "tokenizer.json",
                                        "tokenizer_config.json", NULL};

/* out_dir holds the files base holds, with the same bytes */
static bool same_output(const char *base, const char *out) {
    char a[512], b[512];
    for (int i = 0; out_files[i]; i++) {
        snprintf(a, sizeof a, "%s/%s", base, out_files[i]);
        snprintf(b, sizeof b, "%s/%s", out, out_files[i]);
        if (nmlx_io_is_file(a) != nmlx_io_is_file(b)) return false;
        if (nmlx_io_is_file(a) && !same_file(a, b)) return false;
    }
    return count_dir(base) == count_dir(out);
}

static const char *err_name(int err) {
    return err == ENOSPC ? "ENOSPC" : err == EIO ? "EIO" : err == EINTR ? "EINTR" : "short";
}

/* nmlx_convert with the Nth operation failing, for every N. */
static void test_convert_faults(const char *src, const char *base) {
    char out[300];
    snprintf(out, sizeof out, "%s/out", root);
    nmlx_convert_params cp = nmlx_convert_default_params();
    const int errs[] = {ENOSPC, EIO, EINTR, 0};
    for (size_t k = 0; k < sizeof errs / sizeof errs[0]; k++) {
        int err = errs[k], fds = count_fds(), points = 0;
        bool fatal = err == ENOSPC || err == EIO;
        for (long n = 1; n < 100000; n++) {
            nmlx_test_fail_io_after(n, err);
            nmlx_status st = nmlx_convert(src, out, &cp);
            bool reached = !nmlx_test_io_fault_pending();
            nmlx_test_fail_io_after(0, 0);
            struct stat sb;
            bool exists = stat(out, &sb) == 0;
            if (fatal && reached) {
                points++;
                const char *msg = nmlx_last_error();
                EXPECT(st == NMLX_ERR_IO, "convert, %s at I/O op %ld: status %d", err_name(err), n,
                       (int)st);
                EXPECT(
                    strstr(msg, strerror(err)) && strstr(msg, out),
                    "convert, %s at op %ld: the message names neither the file nor the cause: %s",
                    err_name(err), n, msg);
                EXPECT(!exists, "convert, %s at op %ld: %s left behind", err_name(err), n, out);
            } else {
                EXPECT(st == NMLX_OK, "convert, %s at op %ld: %s", err_name(err), n,
                       nmlx_last_error());
                EXPECT(exists && same_output(base, out),
                       "convert, %s at op %ld: output differs from an undisturbed run",
                       err_name(err), n);
                rm_rf(out);
                if (reached) points++;
            }
            /* only base/ (and the source's nothing) in the folder: no temporary */
            EXPECT(count_dir(root) == 1,
                   "convert, %s at op %ld: %d entries in %s (temporary left?)", err_name(err), n,
                   count_dir(root), root);
            EXPECT(count_fds() == fds, "convert, %s at op %ld: %d descriptors open, %d before",
                   err_name(err), n, count_fds(), fds);
            if (!reached) break;
        }
        /* create, header + tensors written, fsync, close, config.json,
         * copies, folder fsync, rename, parent fsync: dozens of points */
        EXPECT(points >= 20, "convert, %s: only %d fault points walked", err_name(err), points);
        printf("convert, %s: %d I/O operations faulted in turn\n", err_name(err), points);
    }
}

/* nmlx_io_write_file_atomic over an existing file: old bytes or new bytes,
 * never a mix, and no temporary beside it. */
static void test_atomic_file(void) {
    char dir[300], path[320];
    snprintf(dir, sizeof dir, "%s/atomic", root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/file.bin", dir);
    const char old[] = "old contents\n";
    size_t n = (size_t)3 << 20; /* several write calls once shortened */
    char *buf = malloc(n);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)(i * 131 + 7);
    EXPECT(nmlx_io_write_file_atomic(path, old, sizeof old - 1) == NMLX_OK, "%s",
           nmlx_last_error());
    const int errs[] = {ENOSPC, EIO, EINTR, 0};
    for (size_t k = 0; k < sizeof errs / sizeof errs[0]; k++) {
        int err = errs[k], fds = count_fds();
        bool fatal = err == ENOSPC || err == EIO;
        for (long f = 1; f < 1000; f++) {
            nmlx_test_fail_io_after(f, err);
            nmlx_status st = nmlx_io_write_file_atomic(path, buf, n);
            bool reached = !nmlx_test_io_fault_pending();
            nmlx_test_fail_io_after(0, 0);
            size_t len = 0;
            char *got = slurp(path, &len);
            bool is_old = got && len == sizeof old - 1 && !memcmp(got, old, len);
            bool is_new = got && len == n && !memcmp(got, buf, n);
            if (fatal && reached) {
                EXPECT(st == NMLX_ERR_IO && strstr(nmlx_last_error(), strerror(err)) &&
                           strstr(nmlx_last_error(), path),
                       "atomic write, %s at op %ld: %d %s", err_name(err), f, (int)st,
                       nmlx_last_error());
                /* failing the final folder fsync comes after the rename */
                EXPECT(is_old || is_new, "atomic write, %s at op %ld: %s is neither old nor new",
                       err_name(err), f, path);
            } else {
                EXPECT(st == NMLX_OK && is_new, "atomic write, %s at op %ld: %s", err_name(err), f,
                       nmlx_last_error());
            }
            nmlx_free(got);
            EXPECT(count_dir(dir) == 1, "atomic write, %s at op %ld: temporary left in %s",
                   err_name(err), f, dir);
            EXPECT(count_fds() == fds, "atomic write, %s at op %ld: descriptor leaked",
                   err_name(err), f);
            nmlx_io_write_file_atomic(path, old, sizeof old - 1);
            if (!reached) break;
        }
    }
    free(buf);
    rm_rf(dir);
}

/* quantize-on-load writes its quantized copy into a memory file through the
 * same writer: a failing write fails the load cleanly. */
static void test_quantize_on_load(const char *src) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    mp.quantize_bits = 4;
    int fds = count_fds(), points = 0;
    for (long n = 1; n < 10000; n++) {
        nmlx_model *m = NULL;
        nmlx_test_fail_io_after(n, ENOSPC);
        nmlx_status st = nmlx_model_load(src, &mp, &m);
        bool reached = !nmlx_test_io_fault_pending();
        nmlx_test_fail_io_after(0, 0);
        if (reached) {
            points++;
            EXPECT(st == NMLX_ERR_IO && !m && strstr(nmlx_last_error(), strerror(ENOSPC)) &&
                       strstr(nmlx_last_error(), "quantize-on-load"),
                   "quantize-on-load, ENOSPC at op %ld: %d %s", n, (int)st, nmlx_last_error());
        } else {
            EXPECT(st == NMLX_OK && m, "quantize-on-load: %s", nmlx_last_error());
        }
        nmlx_model_free(m);
        EXPECT(count_fds() == fds, "quantize-on-load, op %ld: descriptor leaked", n);
        if (!reached) break;
    }
    EXPECT(points >= 5, "quantize-on-load: only %d fault points", points);
    printf("quantize-on-load, ENOSPC: %d I/O operations faulted in turn\n", points);
}

/* A model load with the Nth read faulted, for every N. */
static void test_read_faults(const char *dir) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    nmlx_model *ref = NULL;
    if (nmlx_model_load(dir, &mp, &ref) != NMLX_OK) {
        EXPECT(0, "baseline load of %s: %s", dir, nmlx_last_error());
        return;
    }
    const char text[] = "Hello, world! Faults, retries and short reads.";
    int32_t *want = NULL;
    size_t n_want = 0;
    EXPECT(nmlx_tokenize(nmlx_model_tokenizer(ref), text, sizeof text - 1, 1, &want, &n_want) ==
               NMLX_OK,
           "%s", nmlx_last_error());
    const int errs[] = {EIO, EINTR, 0};
    for (size_t k = 0; k < sizeof errs / sizeof errs[0]; k++) {
        int err = errs[k], fds = count_fds(), points = 0;
        for (long n = 1; n < 100000; n++) {
            nmlx_model *m = NULL;
            nmlx_test_fail_read_after(n, err);
            nmlx_status st = nmlx_model_load(dir, &mp, &m);
            bool reached = !nmlx_test_read_fault_pending();
            nmlx_test_fail_read_after(0, 0);
            if (reached) points++;
            if (reached && err == EIO) {
                EXPECT(st == NMLX_ERR_IO && !m && strstr(nmlx_last_error(), strerror(EIO)) &&
                           strstr(nmlx_last_error(), dir),
                       "load, EIO at read %ld: %d %s", n, (int)st, nmlx_last_error());
            } else {
                EXPECT(st == NMLX_OK, "load, %s at read %ld: %s", err_name(err), n,
                       nmlx_last_error());
                int32_t *ids = NULL;
                size_t n_ids = 0;
                if (m && nmlx_model_tokenizer(m))
                    nmlx_tokenize(nmlx_model_tokenizer(m), text, sizeof text - 1, 1, &ids, &n_ids);
                EXPECT(m && nmlx_model_vocab_size(m) == nmlx_model_vocab_size(ref) &&
                           n_ids == n_want && (!n_ids || !memcmp(ids, want, n_ids * 4)),
                       "load, %s at read %ld: not the same model", err_name(err), n);
                nmlx_free(ids);
            }
            nmlx_model_free(m);
            EXPECT(count_fds() == fds, "load, %s at read %ld: descriptor leaked", err_name(err), n);
            if (!reached) break;
        }
        EXPECT(points >= 3, "load, %s: only %d reads faulted", err_name(err), points);
        printf("model load, %s: %d reads faulted in turn\n", err_name(err), points);
    }
    nmlx_free(want);
    nmlx_model_free(ref);
}

int main(void) {
    char src[512], base[300];
    snprintf(src, sizeof src, "%s/tests/fixtures/qwen3", test_src_dir());
    snprintf(root, sizeof root, "/tmp/nmlx-iofault-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(base, sizeof base, "%s/base", root);
    nmlx_convert_params cp = nmlx_convert_default_params();
    nmlx_status st = nmlx_convert(src, base, &cp);
    EXPECT(st == NMLX_OK, "baseline convert: %s", nmlx_last_error());
    if (st == NMLX_OK) {
        test_convert_faults(src, base);
        test_atomic_file();
        test_quantize_on_load(src);
    }
    char demo[512];
    snprintf(demo, sizeof demo, "%s/models/demo", test_src_dir());
    test_read_faults(demo);
    rm_rf(root);
    return test_summary();
}
