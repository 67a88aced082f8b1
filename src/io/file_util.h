/* Small file helpers shared by the io readers: whole-file reads and path
 * joining, with errors recorded through nmlx_fail. Depends on common.h. */
#ifndef NMLX_IO_FILE_UTIL_H
#define NMLX_IO_FILE_UTIL_H

#include "common.h"

/* Reads a whole regular file into a NUL-terminated buffer (release with
 * nmlx_free). Missing or unreadable -> NMLX_ERR_IO naming the path; larger
 * than max_bytes -> NMLX_ERR_FORMAT. */
nmlx_status nmlx_io_read_file(const char *path, size_t max_bytes, char **out, size_t *len);
/* "dir/name" in fresh memory (nmlx_free), or NULL with NMLX_ERR_NOMEM recorded. */
char *nmlx_io_join(const char *dir, const char *name);
/* True if path names an existing regular file (symlinks followed). */
bool nmlx_io_is_file(const char *path);

#endif
