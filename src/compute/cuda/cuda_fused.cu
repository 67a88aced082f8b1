/* Fused ops of the CUDA backend (backend.h add_rmsnorm, rope_kv): one
 * launch where the unfused sequence takes two to five. A decode step of
 * the standard decoder is launch-bound on the GPU (bench/cuda/README.md):
 * per layer these replace add + rmsnorm twice and q/k norm + rope q + rope
 * k + the KV append copies. The arithmetic is that of the unfused kernels
 * (cuda_kernels.cu: sums of squares in double over the same block size,
 * angles in double), so the results agree with them to rounding. */
#include "compute/cuda/cuda_internal.h"

/* ---- add_rmsnorm: one block per row ---- */

/* Rows of up to K * blockDim inputs: each thread loads its K inputs of x
 * and d at once and keeps x + d in registers, so the loads are all in
 * flight together (the loop below waits on one pair at a time: the stores
 * to x may alias d) and nothing is read twice. The norm weights (never an
 * activation: they alias neither x nor y) are loaded with them, before the
 * block's sum, so the block waits on memory once rather than twice. The
 * same thread count and the same per-thread order of the sum as the loop,
 * and the same w + w_offset, so the same bits. */
template <int K>
__global__ void __launch_bounds__(512)
    add_rmsnorm_regs_kernel(float *x, const float *d, const void *w, nmlx_dtype wdt, float w_offset,
                            float eps, float *y, int64_t D) {
    cuda_pdl_trigger();
    cuda_pdl_wait(); /* launched early (cuda_launch_pdl): x and d are ready from here */
    float *xr = x + blockIdx.x * D;
    const float *dr = d + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    const int tid = threadIdx.x, bd = blockDim.x;
    float v[K], wv[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t i = tid + (int64_t)k * bd;
        v[k] = i < D ? xr[i] + dr[i] : 0.0f;
        wv[k] = w && i < D ? cuda_load_f32(wdt, w, i) + w_offset : 0.0f;
    }
    double ss = 0;
#pragma unroll
    for (int k = 0; k < K; k++)
        if (tid + (int64_t)k * bd < D) ss += (double)v[k] * v[k];
    ss = cuda_block_sum<double>(ss);
    const float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t i = tid + (int64_t)k * bd;
        if (i < D) {
            xr[i] = v[k];
            const float u = v[k] * inv;
            yr[i] = w ? u * wv[k] : u;
        }
    }
}

/* Wider rows: two passes over memory. */
__global__ void add_rmsnorm_kernel(float *x, const float *d, const void *w, nmlx_dtype wdt,
                                   float w_offset, float eps, float *y, int64_t D) {
    cuda_pdl_trigger();
    cuda_pdl_wait();
    float *xr = x + blockIdx.x * D;
    const float *dr = d + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float v = xr[i] + dr[i];
        xr[i] = v;
        ss += (double)v * v;
    }
    ss = cuda_block_sum<double>(ss);
    float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) { /* each thread reads its own writes */
        float v = xr[i] * inv;
        yr[i] = w ? v * (cuda_load_f32(wdt, w, i) + w_offset) : v;
    }
}

void nmlx_cuda_add_rmsnorm(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *w,
                           float w_offset, float eps, float *y, int64_t R, int64_t D) {
    cuda_of(be)->rsum_x = NULL; /* matmul_residual's sums no longer describe x */
    if (R <= 0 || D <= 0) return;
    const int th = cuda_norm_threads(D);
    const int64_t k = (D + th - 1) / th; /* inputs a thread */
    const void *wd = w ? w->data : NULL;
    const nmlx_dtype wdt = w ? w->dtype : NMLX_DT_F32;
    cudaStream_t s = cuda_of(be)->stream;
    cudaError_t e;
    if (k <= 4)
        e = cuda_launch_pdl(add_rmsnorm_regs_kernel<4>, dim3((unsigned)R), dim3(th), 0, s, x, d, wd,
                            wdt, w_offset, eps, y, D);
    else if (k <= 8)
        e = cuda_launch_pdl(add_rmsnorm_regs_kernel<8>, dim3((unsigned)R), dim3(th), 0, s, x, d, wd,
                            wdt, w_offset, eps, y, D);
    else if (k <= 16)
        e = cuda_launch_pdl(add_rmsnorm_regs_kernel<16>, dim3((unsigned)R), dim3(th), 0, s, x, d,
                            wd, wdt, w_offset, eps, y, D);
    else
        e = cuda_launch_pdl(add_rmsnorm_kernel, dim3((unsigned)R), dim3(th), 0, s, x, d, wd, wdt,
                            w_offset, eps, y, D);
    nmlx_cuda_note(be, e);
}

/* ---- rope_kv: one block per (token, q head or kv head) ---- */

typedef struct rope_kv_params {
    float *q;
    const float *k, *v; /* k read only here (backend.h allows either) */
    float *kc, *vc;
    int64_t H, KVH, HD, cap, row0, pos0, half;
    bool norm;
    const void *qw, *kw; /* norm weights or NULL */
    nmlx_dtype qwdt, kwdt;
    float qoff, qeps, koff, keps;
    const float *freqs; /* NULL: no RoPE (half = 0) */
    float mscale;
    const int64_t *step; /* non-NULL (a recorded step): pos0 and row0 are deltas from *step */
} rope_kv_params;

/* Element i of the (normed) source row, as the rmsnorm kernel writes it. */
__device__ __forceinline__ float normed(const float *src, int64_t i, bool norm, float inv,
                                        const void *w, nmlx_dtype wdt, float off) {
    if (!norm) return src[i];
    float v = src[i] * inv;
    return w ? v * (cuda_load_f32(wdt, w, i) + off) : v;
}

/* Block (t, j): j < H is q head j of token t, normed and rotated in place;
 * else KV head h = j - H: k's row normed and rotated into cache row crow of
 * kc/vc (rows of cap), v's row copied there; pos is the token's position.
 * Every element is read and written by one thread, after the block's sum (a
 * barrier), so q can be done in place. rope_kv_kernel and
 * rope_kv_rows_kernel share it: a batched row equals rope_kv bit for bit. */
__device__ __forceinline__ void rope_kv_head(const rope_kv_params &p, int64_t t, int64_t j,
                                             float *kc, float *vc, int64_t cap, int64_t crow,
                                             double pos) {
    const int64_t HD = p.HD;
    const float *src;
    float *dst;
    const void *w;
    nmlx_dtype wdt;
    float off, eps;
    if (j < p.H) {
        dst = p.q + (t * p.H + j) * HD;
        src = dst;
        w = p.qw, wdt = p.qwdt, off = p.qoff, eps = p.qeps;
    } else {
        int64_t h = j - p.H, row = (h * cap + crow) * HD;
        src = p.k + (t * p.KVH + h) * HD;
        dst = kc + row;
        w = p.kw, wdt = p.kwdt, off = p.koff, eps = p.keps;
        const float *vs = p.v + (t * p.KVH + h) * HD;
        float *vd = vc + row;
        for (int64_t i = threadIdx.x; i < HD; i += blockDim.x)
            vd[i] = vs[i];
    }
    float inv = 1.0f;
    if (p.norm) {
        double ss = 0;
        for (int64_t i = threadIdx.x; i < HD; i += blockDim.x)
            ss += (double)src[i] * src[i];
        ss = cuda_block_sum<double>(ss);
        inv = (float)(1.0 / sqrt(ss / (double)HD + eps));
    }
    int64_t half = p.half;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        float x0 = normed(src, i, p.norm, inv, w, wdt, off);
        float x1 = normed(src, i + half, p.norm, inv, w, wdt, off);
        cuda_rope_pair(x0, x1, pos, p.freqs[i], p.mscale, &dst[i], &dst[i + half]);
    }
    for (int64_t i = 2 * half + threadIdx.x; i < HD; i += blockDim.x)
        dst[i] = normed(src, i, p.norm, inv, w, wdt, off);
}

__global__ void rope_kv_kernel(rope_kv_params p) {
    cuda_pdl_trigger(); /* the attention after it may become resident */
    cuda_pdl_wait();    /* launched early: q, k, v are ready from here */
    int64_t nh = p.H + p.KVH;
    int64_t t = blockIdx.x / nh, j = blockIdx.x % nh;
    const int64_t base = p.step ? *p.step : 0;
    rope_kv_head(p, t, j, p.kc, p.vc, p.cap, p.row0 + base + t, (double)(p.pos0 + base + t));
}

/* rope_kv_rows: the rows' cache pointers and positions passed by value */
enum { ROPE_KV_ROWS = 64 };
typedef struct rope_kv_rows_params {
    float *kc[ROPE_KV_ROWS], *vc[ROPE_KV_ROWS];
    int64_t cap[ROPE_KV_ROWS], row0[ROPE_KV_ROWS], pos[ROPE_KV_ROWS];
} rope_kv_rows_params;

__global__ void rope_kv_rows_kernel(rope_kv_params p, rope_kv_rows_params r) {
    cuda_pdl_trigger();
    cuda_pdl_wait(); /* launched early: q, k, v are ready from here */
    int64_t nh = p.H + p.KVH;
    int64_t t = blockIdx.x / nh, j = blockIdx.x % nh;
    rope_kv_head(p, t, j, r.kc[t], r.vc[t], r.cap[t], r.row0[t], (double)r.pos[t]);
}

static rope_kv_params rope_kv_params_of(const nmlx_rope_kv_args *a) {
    bool rope = a->rot >= 2 && a->freqs;
    rope_kv_params p = {};
    p.q = a->q, p.k = a->k, p.v = a->v, p.kc = a->k_cache, p.vc = a->v_cache;
    p.H = a->H, p.KVH = a->KVH, p.HD = a->HD, p.cap = a->cap, p.row0 = a->row0;
    p.pos0 = a->pos0, p.half = rope ? a->rot / 2 : 0;
    p.norm = a->qk_norm;
    p.qw = a->qk_norm && a->q_norm ? a->q_norm->data : NULL;
    p.kw = a->qk_norm && a->k_norm ? a->k_norm->data : NULL;
    p.qwdt = p.qw ? a->q_norm->dtype : NMLX_DT_F32;
    p.kwdt = p.kw ? a->k_norm->dtype : NMLX_DT_F32;
    p.qoff = a->q_norm_offset, p.qeps = a->q_norm_eps;
    p.koff = a->k_norm_offset, p.keps = a->k_norm_eps;
    p.freqs = rope ? a->freqs : NULL;
    p.mscale = a->mscale;
    return p;
}

bool nmlx_cuda_rope_kv_rows(nmlx_backend *be, const nmlx_rope_kv_args *a,
                            const nmlx_kv_row_dst *rows, int64_t R) {
    cuda_impl *c = cuda_of(be);
    /* a recorded step's positions are deltas from device memory: the rows'
     * values here are per call, so a recorded batch takes rope_kv a row */
    if (R > ROPE_KV_ROWS || cuda_step_pos(c) || c->rows_off) return false;
    if (R <= 0 || a->HD <= 0) return true;
    rope_kv_params p = rope_kv_params_of(a);
    rope_kv_rows_params r;
    for (int64_t i = 0; i < R; i++) {
        r.kc[i] = rows[i].k_cache, r.vc[i] = rows[i].v_cache;
        r.cap[i] = rows[i].cap, r.row0[i] = rows[i].row0, r.pos[i] = rows[i].pos;
    }
    const int64_t blocks = R * (a->H + a->KVH);
    nmlx_cuda_note(be, cuda_launch_pdl_batch(rope_kv_rows_kernel, dim3((unsigned)blocks),
                                             dim3(cuda_norm_threads(a->HD)), 0, c->stream, p, r));
    return true;
}

void nmlx_cuda_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a) {
    if (a->T <= 0 || a->HD <= 0) return;
    rope_kv_params p = rope_kv_params_of(a);
    cuda_impl *c = cuda_of(be);
    if ((p.step = cuda_step_pos(c)) != NULL) p.pos0 -= c->step_pos, p.row0 -= c->step_pos;
    int64_t blocks = a->T * (a->H + a->KVH);
    nmlx_cuda_note(be, cuda_launch_pdl(rope_kv_kernel, dim3((unsigned)blocks),
                                       dim3(cuda_norm_threads(a->HD)), 0, c->stream, p));
}
