/* CUDA backend: creation, device memory, weight preparation (device copies
 * of the mmapped tensors, shared by views of one fused tensor) and the op
 * table. Kernels live in cuda_kernels.cu, cuda_matmul.cu and
 * cuda_attention.cu, the families' own ops in cuda_family_ops.cu. */
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qgemv16.h" /* NMLX_Q16_RSUM_CAP */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* compiled like every kernel: its binary version says whether griddepcontrol
 * was compiled in (sm_90 and later) */
__global__ void pdl_probe_kernel() { cuda_pdl_wait(); }

bool nmlx_cuda_pdl_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("NMLX_CUDA_PDL");
        on = !(e && !strcmp(e, "0")); /* on by default since measured (bench/cuda/README.md) */
        /* only where the kernels' wait exists (a build for an older
         * architecture JIT-run on Hopper would launch early without it) */
        int dev = 0, major = 0;
        cudaFuncAttributes fa;
        if (on && (cudaGetDevice(&dev) != cudaSuccess ||
                   cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) !=
                       cudaSuccess ||
                   major < 9 || cudaFuncGetAttributes(&fa, pdl_probe_kernel) != cudaSuccess ||
                   fa.binaryVersion < 90 || fa.ptxVersion < 90)) {
            cudaGetLastError();
            on = 0;
        }
    }
    return on != 0;
}

int nmlx_cuda_sm_count(void) {
    static int n[64];
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 0 || dev >= 64) dev = 0;
    if (!n[dev]) {
        int v = 0;
        if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            cudaGetLastError();
        n[dev] = v > 0 ? v : 1;
    }
    return n[dev];
}

int nmlx_cuda_resident_blocks(const void *kern, int threads, size_t smem, cudaStream_t st,
                              int fallback) {
    enum { SLOTS = 64 };
    static struct {
        const void *kern;
        int threads;
        size_t smem;
        int blocks;
    } seen[SLOTS];
    static int next; /* full: the oldest slot is replaced */
    for (int i = 0; i < SLOTS; i++)
        if (seen[i].kern == kern && seen[i].threads == threads && seen[i].smem == smem)
            return seen[i].blocks;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(st, &cs) != cudaSuccess) {
        cudaGetLastError();
        return fallback;
    }
    if (cs != cudaStreamCaptureStatusNone) return fallback; /* no query inside a capture */
    int occ = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, threads, smem) != cudaSuccess ||
        occ < 1) {
        cudaGetLastError(); /* not the op's error: one block a multiprocessor then */
        occ = 1;
    }
    seen[next].kern = kern, seen[next].threads = threads, seen[next].smem = smem;
    seen[next].blocks = occ;
    next = (next + 1) % SLOTS;
    return occ;
}

bool nmlx_cuda_pdl_batch_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("NMLX_CUDA_PDL_BATCH"); /* on unless "0" */
        on = !(e && !strcmp(e, "0")) && nmlx_cuda_pdl_on();
    }
    return on != 0;
}

void nmlx_cuda_note(nmlx_backend *be, cudaError_t e) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (e != cudaSuccess && c->first_error == cudaSuccess) c->first_error = e;
}

static void cuda_mem_info(nmlx_backend *be, size_t *free_bytes, size_t *total_bytes) {
    if (cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) {
        cudaGetLastError();
        *free_bytes = *total_bytes = 0;
        return;
    }
    *free_bytes +=
        ((const cuda_impl *)be->impl)->idle_bytes; /* kept for reuse, given back on need */
}

/* Block (i, j) copies part j of copy i: a row of logits (513 KB for a
 * 128K vocabulary, one a session in a batched step) over gridDim.y blocks,
 * not one. */
__global__ void copy_batch_kernel(cuda_copy_batch b) {
    char *d = b.dst[blockIdx.x];
    const char *s = b.src[blockIdx.x];
    unsigned int n = b.bytes[blockIdx.x];
    const unsigned int t = blockIdx.y * blockDim.x + threadIdx.x, st = gridDim.y * blockDim.x;
    if ((((uintptr_t)d | (uintptr_t)s | n) & 15u) == 0) {
        for (unsigned int i = t; i < n / 16; i += st)
            ((uint4 *)d)[i] = ((const uint4 *)s)[i];
    } else {
        for (unsigned int i = t; i < n; i += st)
            d[i] = s[i];
    }
}

void nmlx_cuda_flush(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (!c->copies.n) return;
    unsigned int most = 0;
    for (int i = 0; i < c->copies.n; i++)
        most = c->copies.bytes[i] > most ? c->copies.bytes[i] : most;
    /* ~16 KB a block for the largest copy, at most 32 blocks a copy */
    const unsigned int parts = most / 16384 + 1 < 32 ? most / 16384 + 1 : 32;
    copy_batch_kernel<<<dim3((unsigned)c->copies.n, parts), 128, 0, c->stream>>>(c->copies);
    c->copies.n = 0;
    nmlx_cuda_note(be, cudaGetLastError());
}

static bool overlaps(const char *a, size_t an, const char *b, size_t bn) {
    return a < b + bn && b < a + an;
}

/* Queued when small and independent of the queued ones (a copy that reads
 * or writes what a queued one writes, or writes what it reads, flushes
 * first: the batch runs its copies in parallel). */
static void cuda_copy(nmlx_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    cuda_impl *c = (cuda_impl *)be->impl;
    const char *d = (const char *)dst, *s = (const char *)src;
    if (bytes > (1u << 20) || overlaps(d, bytes, s, bytes)) {
        nmlx_cuda_flush(be);
        nmlx_cuda_note(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    cuda_copy_batch *b = &c->copies;
    for (int i = 0; i < b->n; i++)
        if (overlaps(d, bytes, b->dst[i], b->bytes[i]) ||
            overlaps(s, bytes, b->dst[i], b->bytes[i]) ||
            overlaps(d, bytes, b->src[i], b->bytes[i])) {
            nmlx_cuda_flush(be);
            break;
        }
    if (b->n == COPY_BATCH) nmlx_cuda_flush(be);
    b->dst[b->n] = (char *)dst;
    b->src[b->n] = s;
    b->bytes[b->n] = (unsigned int)bytes;
    b->n++;
}

/* Host memory may be reused as soon as upload returns: wait for the copy. */
static void cuda_upload(nmlx_backend *be, void *dst, const void *host, size_t bytes) {
    if (!bytes) return;
    cuda_impl *c = cuda_host_of(be);
    nmlx_cuda_note(be, cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, c->stream));
    nmlx_cuda_note(be, cudaStreamSynchronize(c->stream));
}

static void cuda_download(nmlx_backend *be, void *host, const void *src, size_t bytes) {
    if (!bytes) return;
    cuda_impl *c = cuda_host_of(be);
    nmlx_cuda_note(be, cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    nmlx_cuda_note(be, cudaStreamSynchronize(c->stream));
}

static void cuda_sync(nmlx_backend *be) {
    nmlx_cuda_note(be, cudaStreamSynchronize(cuda_host_of(be)->stream));
}

static bool grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *p = nmlx_malloc(n * elem);
    if (!p) return false;
    if (*arr) memcpy(p, *arr, *cap * elem);
    nmlx_free(*arr);
    *arr = p;
    *cap = n;
    return true;
}

/* Device address of host bytes [h, h + n): inside a prepared region, or a
 * fresh copy. Searched newest first: the views of a tensor (fused rows, the
 * experts of a stacked MoE tensor) are prepared right after it. */
static nmlx_status device_copy_of(nmlx_backend *be, const nmlx_tensor *t, char **dev) {
    cuda_impl *c = cuda_of(be);
    const char *h = (const char *)t->data;
    size_t n = nmlx_tensor_nbytes(t);
    for (size_t i = c->n_regions; i-- > 0;) {
        const cuda_region *r = &c->regions[i];
        if (r->owned && h >= r->host && h + n <= r->host + r->bytes) {
            *dev = r->dev + (h - r->host);
            return NMLX_OK;
        }
    }
    if (!grow((void **)&c->regions, &c->cap_regions, c->n_regions + 1, sizeof(cuda_region)))
        return nmlx_fail(NMLX_ERR_NOMEM, "cuda backend: out of memory preparing '%s'",
                         t->name ? t->name : "?");
    char *d = NULL;
    cudaError_t e = cudaMalloc((void **)&d, n ? n : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        char what[320];
        snprintf(what, sizeof what, "cuda backend: the weights do not fit (tensor '%s', %s)",
                 t->name ? t->name : "?", cudaGetErrorString(e));
        return nmlx_backend_fail_alloc(be, n, what);
    }
    e = cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        cudaFree(d);
        return nmlx_fail(NMLX_ERR_IO, "cuda backend: uploading tensor '%s' failed (%s)",
                         t->name ? t->name : "?", cudaGetErrorString(e));
    }
    c->regions[c->n_regions++] = (cuda_region){h, n, d, true};
    *dev = d;
    return NMLX_OK;
}

static nmlx_status cuda_prepare_tensor(nmlx_backend *be, const nmlx_tensor *t,
                                       const nmlx_tensor **out) {
    cuda_impl *c = cuda_host_of(be);
    /* float weights, and the packed codes (U32) and E8M0 scales (U8) of
     * quantized ones */
    if (t->dtype != NMLX_DT_F32 && t->dtype != NMLX_DT_F16 && t->dtype != NMLX_DT_BF16 &&
        t->dtype != NMLX_DT_U32 && t->dtype != NMLX_DT_U8)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "cuda backend: tensor '%s' has dtype %s; CUDA runs F32/F16/BF16 weights "
                         "and MLX-quantized ones (U32 codes, U8 MXFP4 scales)",
                         t->name ? t->name : "?", nmlx_dtype_name(t->dtype));
    if (!grow((void **)&c->tensors, &c->cap_tensors, c->n_tensors + 1, sizeof(nmlx_tensor *)))
        return nmlx_fail(NMLX_ERR_NOMEM, "cuda backend: out of memory");
    nmlx_tensor *p = (nmlx_tensor *)nmlx_malloc(sizeof *p);
    if (!p) return nmlx_fail(NMLX_ERR_NOMEM, "cuda backend: out of memory");
    char *dev = NULL;
    nmlx_status st = device_copy_of(be, t, &dev);
    if (st != NMLX_OK) {
        nmlx_free(p);
        return st;
    }
    *p = *t;
    p->data = dev;
    c->tensors[c->n_tensors++] = p;
    *out = p;
    return NMLX_OK;
}

/* the backend's GPU for this thread (the current device is per thread: a
 * session stepped on another thread than the one that loaded the model
 * would otherwise launch on GPU 0) */
static void cuda_bind_thread(nmlx_backend *be) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != c->device) cudaSetDevice(c->device);
}

static void cuda_release(nmlx_backend *be) {
    cuda_impl *c = cuda_host_of(be);
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < c->n_regions; i++)
        if (c->regions[i].owned) cudaFree(c->regions[i].dev);
    for (size_t i = 0; i < c->n_tensors; i++)
        nmlx_free(c->tensors[i]);
    nmlx_free(c->regions);
    nmlx_free(c->tensors);
    if (c->ids_host) cudaFreeHost(c->ids_host);
    if (c->ids_dev) cudaFree(c->ids_dev);
    if (c->act16) cudaFree(c->act16);
    if (c->y2) cudaFree(c->y2);
    if (c->qx) cudaFree(c->qx);
    if (c->qg) cudaFree(c->qg);
    if (c->qg_flag) cudaFree(c->qg_flag);
    free(c->qg_seen);
    if (c->attn_part) cudaFree(c->attn_part);
    if (c->dec_part) cudaFree(c->dec_part);
    if (c->qr_part) cudaFree(c->qr_part);
    if (c->qr_cnt) cudaFree(c->qr_cnt);
    if (c->gexec) cudaGraphExecDestroy(c->gexec);
    if (c->gexec_batch) cudaGraphExecDestroy(c->gexec_batch);
    for (int i = 0; i < STEP_GRAPHS; i++)
        if (c->rexec[i]) cudaGraphExecDestroy(c->rexec[i]);
    if (c->step_dev) cudaFree(c->step_dev);
    if (c->step_host) cudaFreeHost(c->step_host);
    if (c->argmax_state) cudaFree(c->argmax_state);
    if (c->argmax_host) cudaFreeHost(c->argmax_host);
    if (c->sample_work) cudaFree(c->sample_work);
    if (c->sample_ids_dev) cudaFree(c->sample_ids_dev);
    if (c->sample_ids_host) cudaFreeHost(c->sample_ids_host);
    if (c->norm_done) cudaFree(c->norm_done);
    if (c->rsum) cudaFree(c->rsum);
    nmlx_cuda_moe_release(c);
    nmlx_cuda_buf_release(c);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->stream) cudaStreamDestroy(c->stream);
    memset(c, 0, sizeof *c);
}

/* Designated (C++20, declaration order). The family ops (cuda_family_ops.cu)
 * serve MoE, Gemma 3n and Llama 4. */
static const nmlx_backend_ops cuda_ops = {
    .name = "cuda",
    .bind_thread = cuda_bind_thread,
    .alloc = nmlx_cuda_buf_alloc,
    .free = nmlx_cuda_buf_free,
    .copy = cuda_copy,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .prepare_tensor = cuda_prepare_tensor,
    .release = cuda_release,
    .decode_step = nmlx_cuda_decode_step,
    .mem_info = cuda_mem_info,
    .step_graph = nmlx_cuda_step_graph,
    .argmax = nmlx_cuda_argmax,
    .sample = nmlx_cuda_sample,
    .matmul = nmlx_cuda_matmul,
    .matmul_multi = nmlx_cuda_matmul_multi,
    .embed = nmlx_cuda_embed,
    .rmsnorm = nmlx_cuda_rmsnorm,
    .rope = nmlx_cuda_rope,
    .attention = nmlx_cuda_attention,
    .rope_rows = nmlx_cuda_rope_rows,
    .attention_rows = nmlx_cuda_attention_rows,
    .add_rmsnorm = nmlx_cuda_add_rmsnorm,
    .rope_kv = nmlx_cuda_rope_kv,
    .rope_kv_rows = nmlx_cuda_rope_kv_rows,
    .gate_up_act = nmlx_cuda_gate_up_act,
    .add_rmsnorm_matmul = nmlx_cuda_add_rmsnorm_matmul,
    .matmul_residual = nmlx_cuda_matmul_residual,
    .moe_experts = nmlx_cuda_moe_experts,
    .moe_routed = nmlx_cuda_moe_routed,
    .act_mul = nmlx_cuda_act_mul,
    .swiglu_clipped = nmlx_cuda_swiglu_clipped,
    .act = nmlx_cuda_act,
    .add = nmlx_cuda_add,
    .scale = nmlx_cuda_scale,
    .softmax = nmlx_cuda_softmax,
    .gaussian_topk = nmlx_cuda_gaussian_topk,
    .rms_match = nmlx_cuda_rms_match,
    .mul_rows = nmlx_cuda_mul_rows,
    .altup_predict = nmlx_cuda_altup_predict,
    .altup_correct = nmlx_cuda_altup_correct,
    .rope_interleaved = nmlx_cuda_rope_interleaved,
};

extern "C" nmlx_status nmlx_backend_cuda_create(int device, nmlx_backend **out) {
    nmlx_status st = NMLX_OK;
    nmlx_backend *be = NULL;
    cuda_impl *c = NULL;
    int n_dev = 0;
    cudaError_t e;
    CHECK(out != NULL, NMLX_ERR_INVALID_ARG, "cuda backend: out is NULL");
    *out = NULL;
    e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess) cudaGetLastError();
    CHECK(e == cudaSuccess && n_dev > 0, NMLX_ERR_UNSUPPORTED,
          "device 'cuda:%d': no CUDA GPU is usable here (%s)", device,
          e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    CHECK(device >= 0 && device < n_dev, NMLX_ERR_INVALID_ARG,
          "device 'cuda:%d': this machine has %d CUDA GPU(s)", device, n_dev);
    be = (nmlx_backend *)nmlx_calloc(1, sizeof *be);
    c = (cuda_impl *)nmlx_calloc(1, sizeof *c);
    CHECK(be && c, NMLX_ERR_NOMEM, "cuda backend: out of memory");
    be->ops = &cuda_ops;
    nmlx_backend_apply_env(be);
    {
        /* add_rmsnorm_matmul (the residual add + norm, and rope_kv, folded
         * into the decode mat-vec) is opt-in, NMLX_CUDA_NORM_MATMUL=1: it
         * measured slower (H100, session 17: 8B / 1B 4-bit decode 357 /
         * 1,175 tok/s against 383 / 1,236), the launches it saves being
         * hidden by PDL already */
        const char *nm = getenv("NMLX_CUDA_NORM_MATMUL");
        /* NMLX_CUDA_RESID=1 (or "rope": rope_kv folded too), opt-in until
         * measured: the o and down mat-vecs add into x themselves
         * (matmul_residual) and write its sums of squares, so the next
         * q/k/v or gate/up launch stages the norm with no pass of its own
         * over x and no add_rmsnorm launch runs at all */
        const char *rs = getenv("NMLX_CUDA_RESID");
        const int resid = rs && !strcmp(rs, "1") ? 1 : rs && !strcmp(rs, "rope") ? 2 : 0;
        c->norm_with_d = nm && !strcmp(nm, "1");
        c->norm_rope = c->norm_with_d || resid == 2;
        if (!c->norm_with_d || !resid) {
            if (be->ops != &be->own_ops) be->own_ops = *be->ops;
            if (!c->norm_with_d && !resid) be->own_ops.add_rmsnorm_matmul = NULL;
            if (!resid) be->own_ops.matmul_residual = NULL;
            be->ops = &be->own_ops;
        }
    }
    be->impl = c;
    TRY(nmlx_backend_make_serial(be)); /* one stream, one scratch: one caller at a time */
    be->n_threads = 1; /* sizes host-side scratch (attention scratch is unused here) */
    /* a 512-token prompt in one chunk: each quantized weight dequantized once
     * for it (cuda_qgemm.cu), GEMMs of 512 rows; ~105 MB of work buffers a
     * session for Llama-3.1-8B (256 on the CPU: 53 MB) */
    be->prefill_chunk = 512;
    c->device = device;
    {
        const char *rows = getenv("NMLX_CUDA_ROWS");
        c->rows_off = rows && !strcmp(rows, "0");
        const char *g = getenv("NMLX_CUDA_GRAPH");
        c->graph_on = !(g && !strcmp(g, "0")); /* NMLX_CUDA_GRAPH=0: every op launched */
        const char *bc = getenv("NMLX_CUDA_BUF_CACHE");
        c->buf_cache = bc && !strcmp(bc, "1");
        const char *bg = getenv("NMLX_CUDA_BATCH_GRAPH");
        c->batch_graph_on = c->graph_on && bg && !strcmp(bg, "1");
    }
    e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    CHECK(e == cudaSuccess, NMLX_ERR_UNSUPPORTED, "device 'cuda:%d': %s", device,
          cudaGetErrorString(e));
    CHECK(cublasCreate(&c->cublas) == CUBLAS_STATUS_SUCCESS, NMLX_ERR_UNSUPPORTED,
          "device 'cuda:%d': cuBLAS did not start", device);
    cublasSetStream(c->cublas, c->stream);
    /* add_rmsnorm_matmul's counter (without it the op declines) */
    if (cudaMalloc((void **)&c->norm_done, sizeof *c->norm_done) != cudaSuccess ||
        cudaMemsetAsync(c->norm_done, 0, sizeof *c->norm_done, c->stream) != cudaSuccess) {
        cudaGetLastError();
        if (c->norm_done) cudaFree(c->norm_done);
        c->norm_done = NULL;
    }
    /* matmul_residual's sums of squares (without them the op declines) */
    if (be->ops->matmul_residual &&
        cudaMalloc((void **)&c->rsum, (NMLX_Q16_RSUM_CAP + 1) * sizeof *c->rsum) != cudaSuccess) {
        cudaGetLastError();
        c->rsum = NULL;
    }
    nmlx_cuda_dec_scratch_init(c); /* decode attention's partials (else the old kernels) */
    be->pool = nmlx_pool_create(1);
    CHECK(be->pool, NMLX_ERR_NOMEM, "cuda backend: out of memory");
    *out = be;
    return NMLX_OK;
cleanup:
    if (be) {
        if (be->impl) cuda_release(be);
        nmlx_pool_free(be->pool);
        nmlx_backend_drop_serial(be);
    }
    nmlx_free(c);
    nmlx_free(be);
    return st;
}

/* For tests: the first CUDA error a void op met, as a status. */
extern "C" nmlx_status nmlx_backend_cuda_check(nmlx_backend *be) {
    cuda_impl *c = cuda_host_of(be);
    cudaError_t e = cudaStreamSynchronize(c->stream);
    nmlx_cuda_note(be, e);
    nmlx_cuda_note(be, cudaGetLastError());
    if (c->first_error != cudaSuccess)
        return nmlx_fail(NMLX_ERR_IO, "cuda backend: %s", cudaGetErrorString(c->first_error));
    return NMLX_OK;
}
