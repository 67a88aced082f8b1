/* ops->alloc and ops->free of the CUDA backend, with freed buffers kept for
 * reuse. A session's KV cache is two buffers a layer; a server that creates
 * and frees a session per request paid, per buffer, a cudaMalloc, and a
 * stream drain plus cudaFree (which waits for the whole device), all while
 * holding the backend's call lock, stalling the decoding streams each time
 * (the suspected cause of nmlx serve's later rounds running slower: 8B
 * 4-bit, H100, rounds of 32 streams at 1,197 then 676 tok/s; not yet
 * confirmed). Here a freed buffer waits
 * in `idle` (up to a quarter of the GPU's memory) and the next request of
 * the same size takes it, zeroed on the stream: work on one stream runs in
 * order, so its old users are done before its new ones start, and nothing
 * waits. Where cudaMalloc fails, the idle buffers are returned and it is
 * tried again. Opt-in (NMLX_CUDA_BUF_CACHE=1) until it has run on a GPU
 * (written after the session's last device call); off, alloc and free are
 * cudaMalloc and drain + cudaFree as before. */
#include "compute/cuda/cuda_internal.h"

static bool push(cuda_block **a, size_t *n, size_t *cap, void *p, size_t bytes) {
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        cuda_block *g = (cuda_block *)nmlx_realloc(*a, c * sizeof **a);
        if (!g) return false;
        *a = g, *cap = c;
    }
    (*a)[(*n)++] = cuda_block{p, bytes};
    return true;
}

static void release_idle(cuda_impl *c) {
    if (!c->n_idle) return;
    cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < c->n_idle; i++)
        cudaFree(c->idle[i].p);
    c->n_idle = 0;
    c->idle_bytes = 0;
}

void *nmlx_cuda_buf_alloc(nmlx_backend *be, size_t bytes) {
    cuda_impl *c = cuda_host_of(be);
    const size_t want = bytes ? bytes : 1;
    void *p = NULL;
    for (size_t i = c->n_idle; i-- > 0;) /* the newest of this size */
        if (c->idle[i].bytes == want) {
            p = c->idle[i].p;
            c->idle_bytes -= want;
            c->idle[i] = c->idle[--c->n_idle];
            break;
        }
    if (!p && cudaMalloc(&p, want) != cudaSuccess) {
        cudaGetLastError(); /* clear the non-sticky error */
        p = NULL;
        if (c->n_idle) { /* kept buffers of other sizes: give them back, try again */
            release_idle(c);
            if (cudaMalloc(&p, want) != cudaSuccess) {
                cudaGetLastError();
                p = NULL;
            }
        }
    }
    if (!p) return NULL;
    if (c->buf_cache && !push(&c->live, &c->n_live, &c->cap_live, p, want)) {
        cudaStreamSynchronize(c->stream);
        cudaFree(p);
        return NULL;
    }
    nmlx_cuda_note(be, cudaMemsetAsync(p, 0, want, c->stream));
    return p;
}

void nmlx_cuda_buf_free(nmlx_backend *be, void *ptr) {
    if (!ptr) return;
    cuda_impl *c = cuda_host_of(be);
    size_t bytes = 0;
    for (size_t i = c->buf_cache ? c->n_live : 0; i-- > 0;) /* sessions free in about the order they allocate */
        if (c->live[i].p == ptr) {
            bytes = c->live[i].bytes;
            c->live[i] = c->live[--c->n_live];
            break;
        }
    if (bytes) {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) cudaGetLastError();
        if (c->idle_bytes + bytes <= total_b / 4 &&
            push(&c->idle, &c->n_idle, &c->cap_idle, ptr, bytes)) {
            c->idle_bytes += bytes;
            return;
        }
    }
    cudaStreamSynchronize(c->stream);
    cudaFree(ptr);
}

void nmlx_cuda_buf_release(cuda_impl *c) {
    release_idle(c);
    nmlx_free(c->idle);
    nmlx_free(c->live);
    c->idle = c->live = NULL;
    c->cap_idle = c->cap_live = c->n_live = 0;
}
