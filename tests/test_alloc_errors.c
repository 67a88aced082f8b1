/* Out-of-memory errors name what was asked and, on a device that can tell
 * (mem_info: the CUDA backend), what it has free: the KV cache and the
 * work buffers through nmlx_backend_fail_alloc, on a CPU backend whose
 * allocations fail, with and without a fake mem_info. */
#include "common.h"
#include "compute/backend.h"
#include "harness.h"
#include "ported/kv_cache.h"

#include <string.h>

static void *failing_alloc(nmlx_backend *be, size_t bytes) {
    (void)be, (void)bytes;
    return NULL;
}

static void fake_mem_info(nmlx_backend *be, size_t *free_bytes, size_t *total_bytes) {
    (void)be;
    *free_bytes = (size_t)1536 << 20;
    *total_bytes = (size_t)80 << 30;
}

static void expect_message(const char *want) {
    const char *got = nmlx_last_error();
    EXPECT(strstr(got, want) != NULL, "message '%s' lacks '%s'", got, want);
}

int main(void) {
    nmlx_backend *be = NULL;
    EXPECT(nmlx_backend_cpu_create(1, &be) == NMLX_OK, "cpu backend: %s", nmlx_last_error());
    if (!be) return test_summary();
    const nmlx_backend_ops *real = be->ops;
    nmlx_backend_ops ops = *real;
    ops.alloc = failing_alloc;
    be->ops = &ops;

    /* host: no free-memory figure; 8 KV heads x 256 positions x 128 dims,
     * f32 keys and values = 2 MiB */
    nmlx_kv_cache c;
    nmlx_kv_cache_init(&c, 8, 128, 4096);
    EXPECT(nmlx_kv_cache_reserve(&c, be, 10) == NMLX_ERR_NOMEM, "reserve fails");
    expect_message("KV cache of 256 positions: cannot allocate 2.0 MiB of cpu memory");
    EXPECT(!strstr(nmlx_last_error(), "free"), "no free figure on the host: %s", nmlx_last_error());

    /* a device that reports its memory */
    ops.name = "cuda";
    ops.mem_info = fake_mem_info;
    EXPECT(nmlx_kv_cache_reserve(&c, be, 300) == NMLX_ERR_NOMEM, "reserve fails");
    expect_message("KV cache of 512 positions: cannot allocate 4.0 MiB of cuda memory "
                   "(1536.0 MiB free of 81920.0 MiB)");
    EXPECT(c.capacity == 0 && c.offset == 0, "the cache is unchanged after a failed reserve");
    EXPECT(nmlx_backend_fail_alloc(be, (size_t)3 << 29, "weights") == NMLX_ERR_NOMEM, "status");
    expect_message("weights: cannot allocate 1536.0 MiB of cuda memory (1536.0 MiB free");

    /* a context longer than the model allows is an overflow, not memory */
    EXPECT(nmlx_kv_cache_reserve(&c, be, 5000) == NMLX_ERR_CONTEXT_OVERFLOW, "overflow");
    expect_message("context length 4096");

    be->ops = real;
    nmlx_kv_cache_free(&c, be);
    nmlx_backend_free(be);
    return test_summary();
}
