/* Decode steps as CUDA graphs. A step of an 8B model is ~450 small kernel
 * launches; launched one by one, the GPU idles between them. Inside a step
 * (session.c brackets each one-token forward with decode_step) the first
 * kernel op starts a stream capture; the logits download at the end (or
 * any other op that must wait for the stream: cuda_host_of) ends it, and
 * the graph runs as one launch.
 *
 * Positions and cache lengths reach the kernels as launch parameters, so
 * each step is captured anew; cudaGraphExecUpdate rewrites the previous
 * step's executable graph in place (same kernels, new parameters), far
 * cheaper than instantiating. When the step's shape changed (the KV cache
 * grew, a capture ended early), the update fails and a new one is made.
 * Capturing and updating every step costs the host about what the launches
 * it saves cost the GPU (bench/cuda/README.md); the replayed steps below are
 * what pays. On by default (H200 decode: 1.08-1.15x tokens/s over plain
 * launches on 1B and 8B, bf16 and 4/8-bit; every fixture passes);
 * NMLX_CUDA_GRAPH=0 launches every op. Batched steps (batch.c, several
 * sessions a step) are captured the same way where NMLX_CUDA_BATCH_GRAPH=1
 * (opt-in until measured), into an executable of their own.
 *
 * Replayed steps (step_graph, backend.h): where the model vouches that a
 * step repeats (same key), its capture is recorded with the kernels that
 * take positions (rope_kv, attention) and the token id (embed) reading
 * them from step_dev (pos_dev: each gets its delta from step_pos by value
 * and adds *step_dev), and the next steps of that key only stage their
 * position and id and launch the recorded graph: no capture, no update.
 *
 * nmlx_cuda_argmax_graph_test (cuda_backend.h): the argmax kernel alone
 * recorded and replayed, for tests/cuda/argmax_checks.h. */
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"

#include <limits.h>

void nmlx_cuda_capture_begin(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    c->graph_want = false;
    if (c->copies.n) nmlx_cuda_flush(be); /* queued copies run before the graph */
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) { /* run the step without a graph */
        cudaGetLastError();
        return;
    }
    c->capturing = true;
}

void nmlx_cuda_capture_end(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (!c->capturing) return;
    if (c->copies.n) nmlx_cuda_flush(be); /* part of this step */
    c->capturing = false;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess || !g) { /* the step's work is lost: report it */
        nmlx_cuda_note(be, e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated);
        return;
    }
    /* batched steps keep their own executable: single steps (a session
     * stepping alone between batches) would otherwise reshape it each time */
    cudaGraphExec_t *ge = c->in_batch ? &c->gexec_batch : &c->gexec;
    if (*ge) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(*ge, g, &info) != cudaSuccess) {
            cudaGetLastError();
            cudaGraphExecDestroy(*ge);
            *ge = NULL;
        }
    }
    if (!*ge) {
        e = cudaGraphInstantiate(ge, g, 0);
        c->graph_instantiations++;
        if (e != cudaSuccess) {
            nmlx_cuda_note(be, e);
            *ge = NULL;
            cudaGraphDestroy(g);
            return;
        }
    }
    nmlx_cuda_note(be, cudaGraphLaunch(*ge, c->stream));
    c->graph_launches++;
    cudaGraphDestroy(g);
}

void nmlx_cuda_decode_step(nmlx_backend *be, int what) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (what != NMLX_DECODE_END) {
        c->in_batch = what == NMLX_DECODE_BATCH;
        c->graph_want = c->in_batch ? c->batch_graph_on : c->graph_on;
        return;
    }
    c->graph_want = false;
    c->pos_dev = false; /* a step cut short (cancelled) records nothing */
    if (c->capturing) nmlx_cuda_capture_end(be);
    c->in_batch = false;
}

/* Stages the step's position and id (outside any capture: the copy runs
 * before the graph on the stream, whether it is recorded or replayed). */
static bool stage_step(nmlx_backend *be, int64_t pos, int32_t id) {
    cuda_impl *c = cuda_host_of(be);
    if (!c->step_dev) {
        if (cudaMalloc((void **)&c->step_dev, 2 * sizeof(int64_t)) != cudaSuccess ||
            cudaMallocHost((void **)&c->step_host, 2 * sizeof(int64_t)) != cudaSuccess) {
            cudaGetLastError();
            if (c->step_dev) cudaFree(c->step_dev);
            c->step_dev = NULL;
            return false;
        }
    }
    cudaStreamSynchronize(c->stream); /* the previous step's copy is done with step_host */
    c->step_host[0] = pos;
    c->step_host[1] = id;
    cudaError_t e = cudaMemcpyAsync(c->step_dev, c->step_host, 2 * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, c->stream);
    nmlx_cuda_note(be, e);
    return e == cudaSuccess;
}

extern "C" void nmlx_backend_cuda_graph_stats(nmlx_backend *be, long *replays, long *launches) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    *replays = c->replays;
    *launches = c->graph_launches;
}

bool nmlx_cuda_step_graph(nmlx_backend *be, int what, uint64_t key, int64_t pos, int32_t id) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (!c->graph_on) return false;
    if (what == NMLX_STEP_BEGIN) {
        if (!stage_step(be, pos, id)) return false;
        for (int i = 0; i < STEP_GRAPHS; i++) {
            if (!c->rexec[i] || c->rkey[i] != key) continue;
            c->rused[i] = c->replays + c->graph_launches;
            nmlx_cuda_note(be, cudaGraphLaunch(c->rexec[i], c->stream));
            c->replays++;
            c->graph_want = false; /* nothing else of this step is issued */
            return true;
        }
        c->pos_dev = true; /* record this step (capture from its first kernel op) */
        c->step_pos = pos;
        c->step_broken = false;
        c->graph_want = true;
        return false;
    }
    /* NMLX_STEP_END */
    bool keep = c->pos_dev && c->capturing && !c->step_broken;
    c->pos_dev = false;
    if (!keep) return false; /* ran without a (whole) graph: nothing recorded */
    if (c->copies.n) nmlx_cuda_flush(be);
    c->capturing = false;
    c->graph_want = false;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess || !g) {
        nmlx_cuda_note(be, e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated);
        return false;
    }
    int slot = 0; /* this key's, else a free one, else the least recently used */
    for (int i = 0; i < STEP_GRAPHS; i++) {
        if (c->rexec[i] && c->rkey[i] == key) {
            slot = i;
            break;
        }
        if (!c->rexec[i] || (c->rexec[slot] && c->rused[i] < c->rused[slot])) slot = i;
    }
    if (c->rexec[slot]) cudaGraphExecDestroy(c->rexec[slot]);
    c->rexec[slot] = NULL;
    e = cudaGraphInstantiate(&c->rexec[slot], g, 0);
    cudaGraphDestroy(g);
    c->graph_instantiations++;
    if (e != cudaSuccess) {
        nmlx_cuda_note(be, e);
        c->rexec[slot] = NULL;
        return false;
    }
    c->rkey[slot] = key;
    c->rused[slot] = c->replays + c->graph_launches;
    nmlx_cuda_note(be, cudaGraphLaunch(c->rexec[slot], c->stream)); /* this step's work */
    c->graph_launches++;
    return false;
}

extern "C" nmlx_status nmlx_cuda_argmax_graph_test(nmlx_backend *be, const float *const *rows,
                                                   const int64_t *n, int R, int runs,
                                                   int32_t *ids) {
    cuda_impl *c = cuda_host_of(be);
    if (R <= 0 || runs <= 0) return NMLX_OK;
    for (int k = 0; k < R; k++)
        if (n[k] <= 0 || n[k] > INT_MAX)
            return nmlx_fail(NMLX_ERR_INVALID_ARG, "argmax graph test: bad n");
    if (!cuda_argmax_ready(c))
        return nmlx_fail(NMLX_ERR_NOMEM, "argmax graph test: no device state");
    int32_t *out = NULL;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    cudaError_t e = cudaMalloc((void **)&out, (size_t)R * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        for (int k = 0; k < R; k++)
            cuda_argmax_launch(be, c, rows[k], (int)n[k], out + k);
        e = cudaStreamEndCapture(c->stream, &g);
    }
    if (e == cudaSuccess) e = cudaGraphInstantiate(&ge, g, 0);
    for (int r = 0; r < runs && e == cudaSuccess; r++) {
        e = cudaMemsetAsync(out, 0xff, (size_t)R * sizeof(int32_t), c->stream); /* -1 */
        if (e == cudaSuccess) e = cudaGraphLaunch(ge, c->stream);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(ids + (size_t)r * R, out, (size_t)R * sizeof(int32_t),
                                cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    }
    nmlx_cuda_note(be, e);
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    if (out) cudaFree(out);
    return nmlx_backend_cuda_check(be);
}
