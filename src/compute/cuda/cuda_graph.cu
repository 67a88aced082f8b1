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
 * Opt-in (NMLX_CUDA_GRAPH=1): capturing and updating every step costs the
 * host about what the launches it saves cost the GPU (bench/cuda/README.md),
 * so it waits for kernels that read positions from device memory. */
#include "compute/cuda/cuda_internal.h"

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
    if (c->gexec) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(c->gexec, g, &info) != cudaSuccess) {
            cudaGetLastError();
            cudaGraphExecDestroy(c->gexec);
            c->gexec = NULL;
        }
    }
    if (!c->gexec) {
        e = cudaGraphInstantiate(&c->gexec, g, 0);
        c->graph_instantiations++;
        if (e != cudaSuccess) {
            nmlx_cuda_note(be, e);
            c->gexec = NULL;
            cudaGraphDestroy(g);
            return;
        }
    }
    nmlx_cuda_note(be, cudaGraphLaunch(c->gexec, c->stream));
    c->graph_launches++;
    cudaGraphDestroy(g);
}

void nmlx_cuda_decode_step(nmlx_backend *be, bool begin) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (begin) {
        c->graph_want = c->graph_on;
        return;
    }
    c->graph_want = false;
    if (c->capturing) nmlx_cuda_capture_end(be);
}
