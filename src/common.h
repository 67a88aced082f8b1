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

double nmlx_time_seconds(void); /* monotonic clock */

#endif
