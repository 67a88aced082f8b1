/* Internal helpers shared by every part of the library: error recording and
 * the CHECK-and-jump cleanup idiom. Depends on nothing but include/nmlx.h. */
#ifndef NMLX_COMMON_H
#define NMLX_COMMON_H

#include "nmlx.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define NMLX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define NMLX_PRINTF(a, b)
#endif

/* Records `status` and a formatted message as this thread's last error and
 * returns `status`, so a failure path reads `return nmlx_fail(...)`. */
nmlx_status nmlx_fail(nmlx_status status, const char *fmt, ...) NMLX_PRINTF(2, 3);
/* Prefixes the current error message with context ("loading X: ..."). */
void nmlx_error_prefix(const char *fmt, ...) NMLX_PRINTF(1, 2);
void nmlx_clear_error(void);

/* CHECK(cond, status, fmt, ...): on failure record the message, set the
 * local `st` and jump to the function's single `cleanup:` label. */
#define CHECK(cond, status, ...)                                               \
    do {                                                                       \
        if (!(cond)) {                                                         \
            st = nmlx_fail((status), __VA_ARGS__);                             \
            goto cleanup;                                                      \
        }                                                                      \
    } while (0)

/* TRY(call): propagate a failed nmlx_status (message already recorded). */
#define TRY(call)                                                              \
    do {                                                                       \
        st = (call);                                                           \
        if (st != NMLX_OK) goto cleanup;                                       \
    } while (0)

/* Allocation wrappers: fault injection in tests fails the Nth call
 * (nmlx_test_fail_alloc_after), so every error path can be exercised. */
void *nmlx_malloc(size_t size);
void *nmlx_calloc(size_t n, size_t size);
void *nmlx_realloc(void *ptr, size_t size);
char *nmlx_strdup(const char *s);
/* Test hook: the Nth allocation from now fails (0 = off). */
void nmlx_test_fail_alloc_after(long n);

/* read(2) with fault injection: every reader of the library reads through
 * it (whole-file reads, tokenizer.json, convert's copies), so tests can make
 * reads short, interrupted or failing; callers loop as over read. Test
 * hook: the Nth nmlx_read from now is faulted (0 = off): err is an errno
 * (EIO: it fails; EINTR: interrupted, nothing read) or 0 for a short read
 * (half of what was asked). nmlx_test_read_fault_pending() is true while the
 * Nth read has not come. The writers' hook is io/file_write.h's. */
long nmlx_read(int fd, void *buf, size_t n);
void nmlx_test_fail_read_after(long n, int err);
bool nmlx_test_read_fault_pending(void);

double nmlx_time_seconds(void);       /* monotonic clock */
double nmlx_thread_cpu_seconds(void); /* CPU time of the calling thread */

#endif
