/* Weights pulled into L2 while the small ops of a decode step run
 * (NMLX_CUDA_L2_PREFETCH=bulk|line, opt-in until measured on a GPU).
 *
 * A decode step alternates weight-bound mat-vecs with ops that read almost
 * nothing from memory (add_rmsnorm, rope + KV append, attention at short
 * contexts: ~29 us of an 8B layer's ~93 on an H100, bench/cuda/README.md),
 * during which HBM idles. The weight ops of one step come in the same order
 * every step, so each weight op learns which one followed it last time (its
 * successor) and, once it has been launched, a side stream waits for it and
 * asks L2 for the successor's first bytes (at most NMLX_CUDA_L2_BYTES, by
 * default a third of the L2; every array of the successor the same
 * fraction, since a mat-vec walks its rows in order). The side stream joins
 * the main one before a captured step ends, so recorded and replayed steps
 * carry the prefetches too. Prefetches only hint: what they do not bring
 * in is read from HBM as before, and no result changes.
 *
 * Only ops inside decode_step's brackets with T <= L2_MAX_T take part
 * (prefill reads each weight once for many tokens: compute-bound). The
 * last weight of a step (the LM head) has no successor: the next step's
 * first weight is not prefetched, so the step's graph does not end waiting
 * on a prefetch. */
#include "compute/cuda/cuda_internal.h" /* first: it includes the C headers as C */
#include "compute/cuda/cuda_backend.h"

#include <stdlib.h>
#include <string.h>

enum { L2_MAX_T = 64, L2_BLOCKS = 8, L2_THREADS = 256 };
enum { L2_OFF = 0, L2_BULK = 1, L2_LINE = 2 };

/* One weight op's arrays (codes, scales, biases of up to two weights). */
typedef struct l2_ranges {
    const char *p[L2_RANGES];
    unsigned long long n[L2_RANGES];
    int k;
} l2_ranges;

/* A weight op (keyed by its first weight) and its successor's arrays. */
typedef struct l2_entry {
    const void *key;
    l2_ranges next;
} l2_entry;

struct cuda_l2_state {
    int mode;
    size_t cap;      /* bytes a prefetch at most */
    cudaStream_t side;
    cudaEvent_t fork, join;
    bool forked;     /* side work since the last join */
    bool in_step;
    const void *prev; /* the step's last weight op so far */
    l2_entry *tab;    /* open addressing, power-of-two size */
    size_t n, cap_tab;
    long issued;      /* prefetches launched (tests, NMLX_PROFILE) */
};

/* Sm_90's bulk prefetch (the TMA unit walks the range) where compiled for
 * it; else, and in "line" mode, one prefetch instruction per 128 bytes. */
__global__ void l2_prefetch_kernel(l2_ranges r, int bulk) {
    const unsigned long long tid = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    const unsigned long long nth = (unsigned long long)gridDim.x * blockDim.x;
    for (int i = 0; i < r.k; i++) {
        const char *p = r.p[i];
        const unsigned long long n = r.n[i];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (bulk) {
            /* 16-byte aligned pieces of at most 32 KiB */
            const unsigned long long a = (16 - ((unsigned long long)p & 15)) & 15;
            if (n <= a + 16) continue;
            const unsigned long long body = (n - a) & ~15ull;
            const unsigned long long piece = 32768;
            for (unsigned long long o = tid * piece; o < body; o += nth * piece) {
                const unsigned len = (unsigned)(body - o < piece ? body - o : piece);
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + a + o),
                             "r"(len)
                             : "memory");
            }
            continue;
        }
#endif
        (void)bulk;
        for (unsigned long long o = tid * 128; o < n; o += nth * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
    }
}

static size_t l2_hash(const void *key, size_t mask) {
    uint64_t h = (uint64_t)(uintptr_t)key;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h & mask;
}

/* The entry of key, inserted (empty successor) when absent; NULL if the
 * table cannot grow (then nothing is prefetched for it). */
static l2_entry *l2_slot(cuda_l2_state *s, const void *key, bool insert) {
    if (s->cap_tab) {
        for (size_t i = l2_hash(key, s->cap_tab - 1);; i = (i + 1) & (s->cap_tab - 1)) {
            if (s->tab[i].key == key) return &s->tab[i];
            if (!s->tab[i].key) break;
        }
    }
    if (!insert) return NULL;
    if (2 * (s->n + 1) > s->cap_tab) { /* grow: at most half full */
        size_t cap = s->cap_tab ? 2 * s->cap_tab : 512;
        l2_entry *t = (l2_entry *)calloc(cap, sizeof *t);
        if (!t) return NULL;
        for (size_t i = 0; i < s->cap_tab; i++) {
            if (!s->tab[i].key) continue;
            size_t j = l2_hash(s->tab[i].key, cap - 1);
            while (t[j].key) j = (j + 1) & (cap - 1);
            t[j] = s->tab[i];
        }
        free(s->tab);
        s->tab = t;
        s->cap_tab = cap;
    }
    size_t i = l2_hash(key, s->cap_tab - 1);
    while (s->tab[i].key) i = (i + 1) & (s->cap_tab - 1);
    s->tab[i].key = key;
    s->n++;
    return &s->tab[i];
}

static void add_range(l2_ranges *r, const nmlx_tensor *t) {
    if (!t->data || r->k >= L2_RANGES) return;
    size_t n = nmlx_tensor_nbytes(t);
    if (!n) return;
    r->p[r->k] = (const char *)t->data;
    r->n[r->k] = n;
    r->k++;
}

static void ranges_of(l2_ranges *r, const nmlx_weight *const *ws, int n) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < n; i++) {
        add_range(r, &ws[i]->w);
        if (ws[i]->mode != NMLX_QUANT_NONE) {
            add_range(r, &ws[i]->scales);
            add_range(r, &ws[i]->biases);
        }
    }
}

/* r cut to at most cap bytes, the same fraction of each array. */
static l2_ranges capped(const l2_ranges *r, size_t cap) {
    l2_ranges o = *r;
    unsigned long long total = 0;
    for (int i = 0; i < r->k; i++)
        total += r->n[i];
    if (total <= cap) return o;
    const double f = (double)cap / (double)total;
    for (int i = 0; i < r->k; i++)
        o.n[i] = (unsigned long long)((double)r->n[i] * f);
    return o;
}

void nmlx_cuda_l2_init(cuda_impl *c) {
    const char *m = getenv("NMLX_CUDA_L2_PREFETCH");
    int mode = !m ? L2_OFF : !strcmp(m, "bulk") || !strcmp(m, "1") ? L2_BULK
                          : !strcmp(m, "line")                    ? L2_LINE
                                                                  : L2_OFF;
    if (mode == L2_OFF) return;
    cuda_l2_state *s = (cuda_l2_state *)calloc(1, sizeof *s);
    if (!s) return;
    int l2 = 0;
    if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, c->device) != cudaSuccess) l2 = 0;
    s->cap = l2 > 0 ? (size_t)l2 / 3 : (size_t)16 << 20;
    const char *b = getenv("NMLX_CUDA_L2_BYTES");
    if (b) {
        char *end = NULL;
        unsigned long long v = strtoull(b, &end, 10);
        if (end != b && *end == '\0' && v >= 4096) s->cap = (size_t)v;
    }
    if (cudaStreamCreateWithFlags(&s->side, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->fork, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&s->join, cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        if (s->side) cudaStreamDestroy(s->side);
        if (s->fork) cudaEventDestroy(s->fork);
        free(s);
        return; /* runs without prefetching */
    }
    s->mode = mode;
    c->l2 = s;
}

void nmlx_cuda_l2_release(cuda_impl *c) {
    cuda_l2_state *s = c->l2;
    if (!s) return;
    cudaStreamSynchronize(s->side);
    cudaStreamDestroy(s->side);
    cudaEventDestroy(s->fork);
    cudaEventDestroy(s->join);
    free(s->tab);
    free(s);
    c->l2 = NULL;
}

void nmlx_cuda_l2_step(cuda_impl *c, bool begin) {
    cuda_l2_state *s = c->l2;
    if (!s) return;
    s->in_step = begin;
    s->prev = NULL;
}

void nmlx_cuda_l2_join(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    cuda_l2_state *s = c->l2;
    if (!s || !s->forked) return;
    s->forked = false;
    nmlx_cuda_note(be, cudaEventRecord(s->join, s->side));
    nmlx_cuda_note(be, cudaStreamWaitEvent(c->stream, s->join, 0));
}

/* After a weight op's launch: the op's successor learned, and its own
 * successor (learned last step) prefetched behind it. */
static void l2_after(nmlx_backend *be, const nmlx_weight *const *ws, int n, int64_t T) {
    cuda_impl *c = (cuda_impl *)be->impl;
    cuda_l2_state *s = c->l2;
    if (!s || !s->in_step || T > L2_MAX_T || n <= 0) return;
    const void *key = ws[0];
    if (s->prev && s->prev != key) {
        l2_entry *p = l2_slot(s, s->prev, true);
        if (p) ranges_of(&p->next, ws, n);
    }
    s->prev = key;
    const l2_entry *e = l2_slot(s, key, false);
    if (!e || !e->next.k) return;
    const l2_ranges r = capped(&e->next, s->cap);
    cudaError_t err = cudaEventRecord(s->fork, c->stream);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(s->side, s->fork, 0);
    if (err == cudaSuccess) {
        l2_prefetch_kernel<<<L2_BLOCKS, L2_THREADS, 0, s->side>>>(r, s->mode == L2_BULK);
        err = cudaGetLastError();
    }
    nmlx_cuda_note(be, err);
    s->forked = true; /* joined even after a failure: a capture must not end unjoined */
    s->issued++;
}

static void l2_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                      const float *x, float *y, int64_t T) {
    nmlx_cuda_matmul(be, w, bias, x, y, T);
    l2_after(be, &w, 1, T);
}

static void l2_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                            const nmlx_tensor *const *biases, const float *x, float *const *ys,
                            int64_t T) {
    nmlx_cuda_matmul_multi(be, n, ws, biases, x, ys, T);
    l2_after(be, ws, n, T);
}

static void l2_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                           const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                           const float *x, float *gate, float *up, int64_t T) {
    nmlx_cuda_gate_up_act(be, act, g, u, bg, bu, x, gate, up, T);
    const nmlx_weight *ws[2] = {g, u};
    l2_after(be, ws, 2, T);
}

static bool l2_add_rmsnorm_matmul(nmlx_backend *be, float *x, const float *d,
                                  const nmlx_tensor *nw, float w_offset, float eps, float *y,
                                  int64_t D, int act, int n, const nmlx_weight *const *ws,
                                  const nmlx_tensor *const *biases, float *const *ys) {
    if (!nmlx_cuda_add_rmsnorm_matmul(be, x, d, nw, w_offset, eps, y, D, act, n, ws, biases, ys))
        return false;
    l2_after(be, ws, n, 1);
    return true;
}

void nmlx_cuda_l2_install(nmlx_backend *be) {
    if (!((cuda_impl *)be->impl)->l2) return;
    if (be->ops != &be->own_ops) be->own_ops = *be->ops;
    be->own_ops.matmul = l2_matmul;
    be->own_ops.matmul_multi = l2_matmul_multi;
    be->own_ops.gate_up_act = l2_gate_up_act;
    if (be->own_ops.add_rmsnorm_matmul) be->own_ops.add_rmsnorm_matmul = l2_add_rmsnorm_matmul;
    be->ops = &be->own_ops;
}

extern "C" long nmlx_cuda_l2_issued(nmlx_backend *be) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    return c->l2 ? c->l2->issued : -1;
}
