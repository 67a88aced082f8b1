/* Error recording (thread-local message), allocation and read wrappers with
 * fault injection, clock. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>

enum { ERR_CAP = 1024 };
static _Thread_local char err_msg[ERR_CAP];

nmlx_status nmlx_fail(nmlx_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, ERR_CAP, fmt, ap);
    va_end(ap);
    return status;
}

void nmlx_error_prefix(const char *fmt, ...) {
    char prefix[ERR_CAP], old[ERR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, ERR_CAP, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, ERR_CAP);
    /* prefix + ": " + old, truncated to the buffer */
    size_t n = strlen(prefix);
    if (n > ERR_CAP - 3) n = ERR_CAP - 3;
    memcpy(err_msg, prefix, n);
    memcpy(err_msg + n, ": ", 2);
    n += 2;
    size_t m = strlen(old);
    if (m > ERR_CAP - 1 - n) m = ERR_CAP - 1 - n;
    memcpy(err_msg + n, old, m);
    err_msg[n + m] = '\0';
}

void nmlx_clear_error(void) { err_msg[0] = '\0'; }

const char *nmlx_last_error(void) { return err_msg; }

const char *nmlx_status_string(nmlx_status status) {
    switch (status) {
    case NMLX_OK: return "ok";
    case NMLX_ERR_INVALID_ARG: return "invalid argument";
    case NMLX_ERR_IO: return "i/o error";
    case NMLX_ERR_FORMAT: return "malformed file";
    case NMLX_ERR_UNSUPPORTED: return "unsupported";
    case NMLX_ERR_NOMEM: return "out of memory";
    case NMLX_ERR_CONTEXT_OVERFLOW: return "context overflow";
    case NMLX_ERR_CANCELLED: return "cancelled";
    case NMLX_ERR_INTERNAL: return "internal error";
    case NMLX_ERR_INVALID_MODEL: return "invalid model";
    }
    return "unknown status";
}

const char *nmlx_version(void) { return NMLX_VERSION_STRING; }

void nmlx_free(void *ptr) { free(ptr); }

static atomic_long fail_after;

void nmlx_test_fail_alloc_after(long n) { atomic_store(&fail_after, n); }

static int alloc_should_fail(void) {
    long n = atomic_load(&fail_after);
    if (n <= 0) return 0;
    n = atomic_fetch_sub(&fail_after, 1);
    return n == 1;
}

void *nmlx_malloc(size_t size) {
    if (alloc_should_fail()) return NULL;
    return malloc(size ? size : 1);
}

void *nmlx_calloc(size_t n, size_t size) {
    if (alloc_should_fail()) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}

void *nmlx_realloc(void *ptr, size_t size) {
    if (alloc_should_fail()) return NULL;
    return realloc(ptr, size ? size : 1);
}

char *nmlx_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = nmlx_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static atomic_long read_fail_after;
static atomic_int read_fail_err;

void nmlx_test_fail_read_after(long n, int err) {
    atomic_store(&read_fail_err, err);
    atomic_store(&read_fail_after, n);
}

bool nmlx_test_read_fault_pending(void) { return atomic_load(&read_fail_after) > 0; }

long nmlx_read(int fd, void *buf, size_t n) {
    long k = atomic_load(&read_fail_after);
    if (k > 0 && atomic_fetch_sub(&read_fail_after, 1) == 1) {
        int err = atomic_load(&read_fail_err);
        if (err) {
            errno = err;
            return -1;
        }
        if (n > 1) n /= 2; /* short read */
    }
    return (long)read(fd, buf, n);
}

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double nmlx_time_seconds(void) { return clock_seconds(CLOCK_MONOTONIC); }

double nmlx_thread_cpu_seconds(void) { return clock_seconds(CLOCK_THREAD_CPUTIME_ID); }
