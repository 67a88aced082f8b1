/* Whole-file reads and path joining for the io readers (see file_util.h). */
#define _POSIX_C_SOURCE 200809L
#include "io/file_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

nmlx_status nmlx_io_read_file(const char *path, size_t max_bytes, char **out, size_t *len) {
    nmlx_status st = NMLX_OK;
    char *buf = NULL;
    /* O_NONBLOCK: a FIFO in place of the file fails below, never blocks */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    CHECK(fd >= 0, NMLX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    CHECK(fstat(fd, &sb) == 0, NMLX_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    CHECK(S_ISREG(sb.st_mode), NMLX_ERR_IO, "%s: not a regular file", path);
    CHECK((uint64_t)sb.st_size <= max_bytes, NMLX_ERR_FORMAT,
          "%s: file is too large (%lld bytes; at most %zu expected)", path, (long long)sb.st_size,
          max_bytes);
    size_t size = (size_t)sb.st_size, got = 0;
    buf = nmlx_malloc(size + 1);
    CHECK(buf, NMLX_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, size);
    while (got < size) {
        ssize_t r = nmlx_read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r >= 0, NMLX_ERR_IO, "%s: read failed: %s", path, strerror(errno));
        CHECK(r > 0, NMLX_ERR_IO, "%s: file shrank while reading", path);
        got += (size_t)r;
    }
    buf[size] = '\0';
    *out = buf;
    *len = size;
    buf = NULL;
cleanup:
    if (fd >= 0) close(fd);
    nmlx_free(buf);
    return st;
}

char *nmlx_io_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    bool slash = a > 0 && dir[a - 1] != '/';
    char *p = nmlx_malloc(a + slash + b + 1);
    if (!p) {
        nmlx_fail(NMLX_ERR_NOMEM, "out of memory joining '%s' and '%s'", dir, name);
        return NULL;
    }
    memcpy(p, dir, a);
    if (slash) p[a] = '/';
    memcpy(p + a + slash, name, b + 1);
    return p;
}

bool nmlx_io_is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}
