/* Durable file writes for the writers (`nmlx convert`, quantize-on-load's
 * memory file): every create, write, fsync, close, rename and mkdir goes
 * through here, so that
 *   - a short write is continued and EINTR retried, never mistaken for an
 *     error or for success;
 *   - a real failure (ENOSPC, EIO ...) is NMLX_ERR_IO naming the file and
 *     the cause (strerror);
 *   - a file or folder appears under its final name only complete and
 *     flushed: written under a temporary name in the same folder, fsynced,
 *     renamed, the folder fsynced; the temporary is removed on failure.
 * Fault injection (SQLite style, beside nmlx_test_fail_alloc_after): the Nth
 * I/O operation from now fails, so tests can walk every failure point.
 * Depends on common.h. */
#ifndef NMLX_IO_FILE_WRITE_H
#define NMLX_IO_FILE_WRITE_H

#include "common.h"

#include <sys/types.h>

/* Test hook: the Nth I/O operation from now (create, write, fsync, close,
 * rename, mkdir, each call counted once) is faulted (0 = off). `err` picks
 * the fault: an errno such as ENOSPC or EIO (the operation fails with it;
 * a close still releases the descriptor, as Linux's does), EINTR (the
 * operation is interrupted before doing anything and must be retried), or 0
 * for a short write (a write stores half of what it was given; other
 * operations proceed normally). */
void nmlx_test_fail_io_after(long n, int err);
/* True while a fault set by nmlx_test_fail_io_after has not been reached
 * (the operation under test did fewer than N I/O operations). */
bool nmlx_test_io_fault_pending(void);

/* open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode). */
nmlx_status nmlx_io_create(const char *path, mode_t mode, int *fd);
/* Writes all n bytes (continuing short writes, retrying EINTR); `path`
 * names the destination in messages. */
nmlx_status nmlx_io_write_all(int fd, const char *path, const void *buf, size_t n);
/* fsync, retrying EINTR. */
nmlx_status nmlx_io_fsync(int fd, const char *path);
/* Closes *fd (the descriptor is released even when close reports an error)
 * and sets it to -1; EINTR counts as closed (Linux semantics). */
nmlx_status nmlx_io_close(int *fd, const char *path);
nmlx_status nmlx_io_mkdir(const char *path, mode_t mode);
nmlx_status nmlx_io_rename(const char *from, const char *to);
/* Opens folder `dir` and fsyncs it, so renames and creates inside it last. */
nmlx_status nmlx_io_fsync_dir(const char *dir);

/* Writes buf to `path` durably: "<path>.tmp-XXXXXX" in the same folder,
 * written, fsynced, closed, renamed over path, the folder fsynced. On
 * failure the temporary is removed and path is untouched. */
nmlx_status nmlx_io_write_file_atomic(const char *path, const void *buf, size_t n);
/* Copies the regular file src to a new file dst (create, write, fsync,
 * close; dst removed on failure). */
nmlx_status nmlx_io_copy_file(const char *src, const char *dst);

#endif
