/* Durable writes with I/O fault injection (see file_write.h). */
#define _POSIX_C_SOURCE 200809L
#include "io/file_write.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- fault injection ------------------------------------------------- */

static atomic_long io_fail_after;
static atomic_int io_fail_err;

void nmlx_test_fail_io_after(long n, int err) {
    atomic_store(&io_fail_err, err);
    atomic_store(&io_fail_after, n);
}

bool nmlx_test_io_fault_pending(void) { return atomic_load(&io_fail_after) > 0; }

/* Counts one I/O operation; returns the fault to inject now (an errno, or
 * -1 for a short write), or 0 for none. */
static int io_fault(void) {
    long n = atomic_load(&io_fail_after);
    if (n <= 0) return 0;
    if (atomic_fetch_sub(&io_fail_after, 1) != 1) return 0;
    int err = atomic_load(&io_fail_err);
    return err ? err : -1;
}

/* ---- single operations ----------------------------------------------- */

static nmlx_status io_error(const char *path, const char *what, int err) {
    return nmlx_fail(NMLX_ERR_IO, "%s: %s failed: %s", path, what, strerror(err));
}

nmlx_status nmlx_io_create(const char *path, mode_t mode, int *fd) {
    *fd = -1;
    for (;;) {
        int f = io_fault();
        int r = f > 0 ? (errno = f, -1) : open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (r >= 0) {
            *fd = r;
            return NMLX_OK;
        }
        if (errno != EINTR) return io_error(path, "create", errno);
    }
}

nmlx_status nmlx_io_write_all(int fd, const char *path, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        int f = io_fault();
        if (f < 0 && chunk > 1) chunk /= 2; /* injected short write */
        ssize_t w = f > 0 ? (errno = f, -1) : write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return io_error(path, "write", errno);
        if (w == 0) return nmlx_fail(NMLX_ERR_IO, "%s: write failed: no progress", path);
        p += w, n -= (size_t)w;
    }
    return NMLX_OK;
}

nmlx_status nmlx_io_fsync(int fd, const char *path) {
    for (;;) {
        int f = io_fault();
        int r = f > 0 ? (errno = f, -1) : fsync(fd);
        if (r == 0) return NMLX_OK;
        if (errno != EINTR) return io_error(path, "fsync", errno);
    }
}

nmlx_status nmlx_io_close(int *fd, const char *path) {
    if (*fd < 0) return NMLX_OK;
    int f = io_fault();
    int r = close(*fd); /* released whatever close reports */
    *fd = -1;
    if (f > 0) r = -1, errno = f;
    if (r == 0 || errno == EINTR) return NMLX_OK;
    return io_error(path, "close", errno);
}

nmlx_status nmlx_io_mkdir(const char *path, mode_t mode) {
    for (;;) {
        int f = io_fault();
        int r = f > 0 ? (errno = f, -1) : mkdir(path, mode);
        if (r == 0) return NMLX_OK;
        if (errno != EINTR) return io_error(path, "mkdir", errno);
    }
}

nmlx_status nmlx_io_rename(const char *from, const char *to) {
    for (;;) {
        int f = io_fault();
        int r = f > 0 ? (errno = f, -1) : rename(from, to);
        if (r == 0) return NMLX_OK;
        if (errno != EINTR)
            return nmlx_fail(NMLX_ERR_IO, "%s: rename to '%s' failed: %s", from, to,
                             strerror(errno));
    }
}

nmlx_status nmlx_io_fsync_dir(const char *dir) {
    int fd;
    for (;;) {
        int f = io_fault();
        fd = f > 0 ? (errno = f, -1) : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) break;
        if (errno != EINTR) return io_error(dir, "open (folder)", errno);
    }
    nmlx_status st = nmlx_io_fsync(fd, dir);
    nmlx_status cst = nmlx_io_close(&fd, dir);
    return st != NMLX_OK ? st : cst;
}

/* ---- whole files ------------------------------------------------------ */

/* The folder part of path ("." when it has none), in out (cap bytes). */
static void dir_of(const char *path, char *out, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, cap, ".");
    else if (slash == path)
        snprintf(out, cap, "/");
    else
        snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

nmlx_status nmlx_io_write_file_atomic(const char *path, const void *buf, size_t n) {
    static atomic_long seq;
    nmlx_status st = NMLX_OK;
    int fd = -1;
    size_t len = strlen(path);
    char *tmp = nmlx_malloc(len + 48), *dir = nmlx_malloc(len + 2);
    bool made = false;
    CHECK(tmp && dir, NMLX_ERR_NOMEM, "%s: out of memory", path);
    snprintf(tmp, len + 48, "%s.tmp-%ld-%ld", path, (long)getpid(), atomic_fetch_add(&seq, 1));
    dir_of(path, dir, len + 2);
    TRY(nmlx_io_create(tmp, 0644, &fd));
    made = true;
    TRY(nmlx_io_write_all(fd, path, buf, n));
    TRY(nmlx_io_fsync(fd, path));
    TRY(nmlx_io_close(&fd, path));
    TRY(nmlx_io_rename(tmp, path));
    made = false;
    st = nmlx_io_fsync_dir(dir);
    if (st != NMLX_OK) nmlx_error_prefix("%s: written, but flushing its folder failed", path);
cleanup:
    if (fd >= 0) close(fd);
    if (made) unlink(tmp);
    nmlx_free(tmp);
    nmlx_free(dir);
    return st;
}

nmlx_status nmlx_io_copy_file(const char *src, const char *dst) {
    nmlx_status st = NMLX_OK;
    int in = open(src, O_RDONLY | O_NONBLOCK | O_CLOEXEC), out = -1;
    bool made = false;
    char *buf = nmlx_malloc(1 << 16);
    CHECK(buf, NMLX_ERR_NOMEM, "%s: out of memory", dst);
    CHECK(in >= 0, NMLX_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    struct stat sb;
    CHECK(fstat(in, &sb) == 0 && S_ISREG(sb.st_mode), NMLX_ERR_IO, "%s: not a regular file", src);
    TRY(nmlx_io_create(dst, 0644, &out));
    made = true;
    for (;;) {
        ssize_t r = nmlx_read(in, buf, 1 << 16);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r >= 0, NMLX_ERR_IO, "%s: read failed: %s", src, strerror(errno));
        if (r == 0) break;
        TRY(nmlx_io_write_all(out, dst, buf, (size_t)r));
    }
    TRY(nmlx_io_fsync(out, dst));
    TRY(nmlx_io_close(&out, dst));
    made = false;
cleanup:
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    if (made) unlink(dst);
    nmlx_free(buf);
    return st;
}
