/* Backend choice by device name ("cpu", "cuda", "cuda:N"). The CUDA backend
 * exists only in builds configured with -DNMLX_CUDA=ON (NMLX_HAVE_CUDA). */
#include "common.h"
#include "compute/backend.h"

#include <stdlib.h>
#include <string.h>

#if !NMLX_HAVE_CUDA
nmlx_status nmlx_backend_cuda_create(int device, nmlx_backend **out) {
    (void)device;
    if (out) *out = NULL;
    return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                     "device 'cuda': this nmlx was built without CUDA (configure with "
                     "cmake -DNMLX_CUDA=ON; the npm package builds it where nvcc and cuBLAS "
                     "are found, or with NMLX_CUDA=1)");
}
#endif

static nmlx_status create(const char *device, int n_threads, nmlx_backend **out) {
    if (!device || !device[0] || !strcmp(device, "cpu"))
        return nmlx_backend_cpu_create(n_threads, out);
    if (!strncmp(device, "cuda", 4)) {
        const char *rest = device + 4;
        long id = 0;
        if (*rest == ':') {
            char *end = NULL;
            id = strtol(rest + 1, &end, 10);
            if (end == rest + 1 || *end || id < 0 || id > 1023) rest = NULL;
        } else if (*rest) {
            rest = NULL;
        }
        if (rest) return nmlx_backend_cuda_create((int)id, out);
    }
    if (out) *out = NULL;
    return nmlx_fail(NMLX_ERR_INVALID_ARG,
                     "device '%s' is not known (use \"cpu\", \"cuda\" or \"cuda:N\")", device);
}

nmlx_status nmlx_backend_fail_alloc(nmlx_backend *be, size_t bytes, const char *what) {
    const double mib = 1024.0 * 1024.0;
    size_t free_b = 0, total_b = 0;
    if (be && be->ops && be->ops->mem_info) be->ops->mem_info(be, &free_b, &total_b);
    if (total_b)
        return nmlx_fail(
            NMLX_ERR_NOMEM, "%s: cannot allocate %.1f MiB of %s memory (%.1f MiB free of %.1f MiB)",
            what, (double)bytes / mib, be->ops->name, (double)free_b / mib, (double)total_b / mib);
    return nmlx_fail(NMLX_ERR_NOMEM, "%s: cannot allocate %.1f MiB of %s memory", what,
                     (double)bytes / mib, be && be->ops ? be->ops->name : "host");
}

void nmlx_backend_free_bufs(nmlx_backend *be, void *const *bufs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (bufs[i]) be->ops->free(be, bufs[i]);
}

nmlx_status nmlx_backend_create(const char *device, int n_threads, nmlx_backend **out) {
    nmlx_status st = create(device, n_threads, out);
    if (st || !nmlx_backend_profile_wanted()) return st;
    st = nmlx_backend_profile_attach(*out);
    if (st) {
        nmlx_backend_free(*out);
        *out = NULL;
    }
    return st;
}

bool nmlx_backend_is_host(const nmlx_backend *be) {
    return be && be->ops && !strcmp(be->ops->name, "cpu");
}

int64_t nmlx_backend_prefill_chunk(const nmlx_backend *be, int64_t dflt) {
    const char *env = getenv("NMLX_PREFILL_CHUNK");
    if (env && *env) {
        long long v = atoll(env);
        return v < 16 ? 16 : v > 8192 ? 8192 : v;
    }
    return be && be->prefill_chunk > 0 ? be->prefill_chunk : dflt;
}

void nmlx_backend_apply_env(nmlx_backend *be) {
    const char *env = getenv("NMLX_FUSED");
    if (env && strcmp(env, "0") == 0) {
        be->own_ops = *be->ops;
        be->own_ops.add_rmsnorm = NULL;
        be->own_ops.rope_kv = NULL;
        be->own_ops.rope_kv_rows = NULL;
        be->own_ops.gate_up_act = NULL;
        be->own_ops.add_rmsnorm_matmul = NULL;
        be->own_ops.moe_experts = NULL;
        be->own_ops.moe_routed = NULL;
        be->ops = &be->own_ops;
    }
    nmlx_backend_apply_skip(be);
}
