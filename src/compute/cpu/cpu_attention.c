/* Scaled dot-product attention over a [KVH, cap, HD] cache (contract in
 * backend.h). Work items are (query t, KV head, its query heads) split over
 * the pool, so a KV head's rows are read once for all the query heads that
 * share them (GQA); each thread keeps its heads' scores in scratch. A
 * prefill (T >= 4) runs the kernel set's flash kernel where it has one
 * (attention_avx512.c: items of up to 32 query rows of one KV head, online
 * softmax, no scores over n_kv), else blocks of queries through the row
 * kernels (attn_block). */
#include "compute/cpu/cpu_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum { ATTN_QB = 16 }; /* queries per block in a prefill (bench_attention: 8 to 32 within 15%) */
/* The flash kernel's rows per item (queries x heads of a KV head) from
 * which it is the default (bench_attention T 16 8 128 20 f16 2000, Xeon):
 * 8 rows (T = 4, GQA 2) 1.76-1.91 ms against 1.51-1.58 for the row-kernel
 * blocks, 12 rows (T = 6) 1.78 / 1.81, 16 rows (T = 8) 1.86-2.13 / 2.19-2.43,
 * 32 rows (T = 8, GQA 4) 2.39 / 3.67 */
enum { FLASH_MIN_ROWS = 16 };

/* The prefill path (cpu_internal.h nmlx_cpu_attn_set_path): NMLX_ATTN_BLOCK=0
 * the row path, =1 blocks through the row kernels, =flash the set's flash
 * kernel wherever it runs the shape, unset: flash where an item has at least
 * FLASH_MIN_ROWS rows, else blocks. Read once; atomic because the pool's
 * threads of several sessions ask at once (the same value:
 * tests/test_threads.c under -fsanitize=thread) */
static atomic_int attn_path = -1;

void nmlx_cpu_attn_set_path(int path) {
    atomic_store_explicit(&attn_path, path, memory_order_relaxed);
}

static int prefill_path(void) {
    int v = atomic_load_explicit(&attn_path, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("NMLX_ATTN_BLOCK");
        v = !e ? 2 : !strcmp(e, "0") ? 0 : !strcmp(e, "1") ? 1 : !strcmp(e, "flash") ? 3 : 2;
        atomic_store_explicit(&attn_path, v, memory_order_relaxed);
    }
    return v;
}

/* Query t, KV head kvh, its query heads [h0, h0 + g): sc holds g * n_kv. */
static void attn_group(const cpu_kernels *k, const nmlx_attn_args *a, int64_t t, int64_t kvh,
                       int64_t h0, int64_t g, float *sc) {
    const int64_t HD = a->HD;
    const float *q = a->q + (t * a->H + h0) * HD;
    float *out = a->out + (t * a->H + h0) * HD;
    const int64_t base = kvh * a->cap * HD;
    const bool half = a->kv_dtype != NMLX_DT_F32;
    const void *K = half ? (const void *)(a->k16 + base) : (const void *)(a->k + base);
    const void *V = half ? (const void *)(a->v16 + base) : (const void *)(a->v + base);
    const size_t es = half ? sizeof(uint16_t) : sizeof(float);
    int64_t qi = a->q_pos + t;
    int64_t hi = qi < a->n_kv - 1 ? qi : a->n_kv - 1; /* inclusive */
    int64_t lo = a->window > 0 ? qi - a->window + 1 : 0;
    if (lo < 0) lo = 0;
    if (lo > hi) { /* nothing visible: zero output */
        memset(out, 0, (size_t)(g * HD) * sizeof(float));
        return;
    }
    int64_t n = hi - lo + 1;
    const char *K0 = (const char *)K + (size_t)(lo * HD) * es;
    const char *V0 = (const char *)V + (size_t)(lo * HD) * es;
    k->attn_scores(a->kv_dtype, q, g, K0, n, HD, a->scale, sc);
    for (int64_t i = 0; i < g; i++) {
        float *row = sc + i * n;
        if (a->softcap > 0) {
            float cap = a->softcap, inv = 1.0f / cap;
            for (int64_t j = 0; j < n; j++)
                row[j] = tanhf(row[j] * inv) * cap;
        }
        k->softmax_row(row, n, a->sinks ? a->sinks[h0 + i] : -INFINITY);
    }
    k->attn_mix(a->kv_dtype, sc, g, V0, n, HD, out);
}

/* A prefill's block of nt queries from t0 for KV head kvh: its nt x g
 * query rows go through the row kernels as one block (the set's kernels
 * widen each key and value once for every row), each row then softmaxed
 * over its own visible range. buf: 2 nt g HD + nt g n_kv floats. */
static void attn_block(const cpu_kernels *k, const nmlx_attn_args *a, int64_t t0, int64_t nt,
                       int64_t kvh, int64_t g, float *buf) {
    const int64_t HD = a->HD, R = nt * g, h0 = kvh * g;
    int64_t lo[ATTN_QB] = {0}, hi[ATTN_QB] = {0};
    for (int64_t i = 0; i < nt; i++) {
        const int64_t qi = a->q_pos + t0 + i;
        hi[i] = qi < a->n_kv - 1 ? qi : a->n_kv - 1;
        lo[i] = a->window > 0 && qi - a->window + 1 > 0 ? qi - a->window + 1 : 0;
    }
    int64_t lo_min = lo[0], hi_max = hi[0];
    for (int64_t i = 1; i < nt; i++) {
        lo_min = lo[i] < lo_min ? lo[i] : lo_min;
        hi_max = hi[i] > hi_max ? hi[i] : hi_max;
    }
    if (lo_min > hi_max) { /* nothing visible to any query */
        for (int64_t i = 0; i < nt; i++)
            memset(a->out + ((t0 + i) * a->H + h0) * HD, 0, (size_t)(g * HD) * sizeof(float));
        return;
    }
    const int64_t n = hi_max - lo_min + 1;
    float *qb = buf, *ob = qb + R * HD, *sc = ob + R * HD;
    for (int64_t i = 0; i < nt; i++)
        memcpy(qb + i * g * HD, a->q + ((t0 + i) * a->H + h0) * HD,
               (size_t)(g * HD) * sizeof(float));
    const int64_t base = kvh * a->cap * HD + lo_min * HD;
    const bool half = a->kv_dtype != NMLX_DT_F32;
    const void *K = half ? (const void *)(a->k16 + base) : (const void *)(a->k + base);
    const void *V = half ? (const void *)(a->v16 + base) : (const void *)(a->v + base);
    k->attn_scores(a->kv_dtype, qb, R, K, n, HD, a->scale, sc);
    for (int64_t r = 0; r < R; r++) {
        const int64_t i = r / g, off = lo[i] - lo_min, len = hi[i] - lo[i] + 1;
        float *row = sc + r * n;
        if (len <= 0) { /* this query sees nothing: zero output */
            memset(row, 0, (size_t)n * sizeof(float));
            continue;
        }
        if (a->softcap > 0) {
            const float cap = a->softcap, inv = 1.0f / cap;
            for (int64_t j = off; j < off + len; j++)
                row[j] = tanhf(row[j] * inv) * cap;
        }
        k->softmax_row(row + off, len, a->sinks ? a->sinks[h0 + r % g] : -INFINITY);
        memset(row, 0, (size_t)off * sizeof(float));
        memset(row + off + len, 0, (size_t)(n - off - len) * sizeof(float));
    }
    k->attn_mix(a->kv_dtype, sc, R, V, n, HD, ob);
    for (int64_t i = 0; i < nt; i++)
        memcpy(a->out + ((t0 + i) * a->H + h0) * HD, ob + i * g * HD,
               (size_t)(g * HD) * sizeof(float));
}

/* Work items: (query t, KV head, chunk of its query heads). A group is split
 * into chunks only when there are too few groups to keep every thread busy
 * (decode with few KV heads); otherwise each item reads its KV head's rows
 * once for the whole group. */
typedef struct {
    int64_t group, chunk, chunks; /* heads per KV head, per item; items per group */
} attn_split;

static attn_split split_for(const nmlx_attn_args *a, int nth) {
    attn_split s = {.group = a->KVH > 0 && a->H % a->KVH == 0 ? a->H / a->KVH : 1};
    if (s.group < 1) s.group = 1;
    int64_t groups = a->T * (a->H / s.group);
    s.chunks = groups >= 2 * nth ? 1 : (2 * nth + groups - 1) / groups;
    if (s.chunks > s.group) s.chunks = s.group;
    s.chunk = (s.group + s.chunks - 1) / s.chunks;
    return s;
}

typedef struct {
    const cpu_kernels *k;
    const nmlx_attn_args *a;
    attn_split sp;
    int path;           /* prefill_path(), 0 for T < 4 */
    atomic_llong next;  /* flash: the next work item */
    int64_t buf_floats; /* flash: nmlx_attn_flash_floats(HD) + the widened head (2 wide_n HD) */
    int64_t wide_j0, wide_n; /* keys of the widened head (nmlx_attn_wide); n 0: none */
} attn_job_t;

/* Each thread's flash buffer, kept from call to call (a fresh block of
 * hundreds of KiB per call comes back as new pages once the heap has been
 * trimmed; quant_int8_amx.c saw 0.2 ms a call); freed when the thread exits. */
typedef struct {
    float *p;
    size_t n;
} flash_scratch;
static pthread_key_t g_flash_key;
static bool g_flash_key_ok;
static pthread_once_t g_flash_key_once = PTHREAD_ONCE_INIT;

static void flash_scratch_free(void *v) {
    flash_scratch *s = v;
    free(s->p);
    free(s);
}

static void flash_key_init(void) {
    g_flash_key_ok = pthread_key_create(&g_flash_key, flash_scratch_free) == 0;
}

static float *flash_scratch_get(size_t floats) {
    pthread_once(&g_flash_key_once, flash_key_init);
    if (!g_flash_key_ok) return NULL;
    flash_scratch *s = pthread_getspecific(g_flash_key);
    if (s && s->n >= floats) return s->p;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return NULL;
        if (pthread_setspecific(g_flash_key, s)) {
            free(s);
            return NULL;
        }
    }
    free(s->p);
    s->n = 0;
    if (!(s->p = malloc(floats * sizeof(float)))) return NULL;
    s->n = floats;
    return s->p;
}

/* The flash path: items (KV head, query block), a head's last query blocks
 * (most keys) first, taken from a shared counter, so the threads finish
 * together whatever the causal triangle's shape, and a thread's run of items
 * on one head reuses its widened copy (nmlx_attn_wide). A thread without a
 * buffer takes no item (the others drain the counter); if none had one,
 * nmlx_cpu_attention runs the row path. */
static void attn_flash_task(attn_job_t *j) {
    const nmlx_attn_args *a = j->a;
    float *buf = flash_scratch_get((size_t)j->buf_floats);
    if (!buf) return;
    nmlx_attn_wide wide = {-1, j->wide_j0, j->wide_n, NULL, NULL}, *w = NULL;
    if (j->wide_n > 0) {
        wide.k = buf + nmlx_attn_flash_floats(a->HD);
        wide.v = wide.k + j->wide_n * a->HD;
        w = &wide;
    }
    const int64_t g = j->sp.group, nq = NMLX_ATTN_FLASH_ROWS / g;
    const int64_t blocks = (a->T + nq - 1) / nq, items = blocks * a->KVH;
    for (;;) {
        const int64_t i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= items) break;
        const int64_t b =
            blocks - 1 - i % blocks; /* a KV head's blocks in a row: its K, V stay in L2 */
        j->k->attn_flash(a, b * nq, i / blocks, g, buf, w);
    }
}

static void attn_task(void *ctx, int ith, int nth) {
    attn_job_t *j = ctx;
    const nmlx_attn_args *a = j->a;
    const attn_split sp = j->sp;
    const int64_t kv_groups = a->H / sp.group;
    /* a prefill: the flash kernel's items, or (path 1) blocks of ATTN_QB
     * queries per KV head through the row kernels, dealt round-robin (later
     * queries see more keys: contiguous shares would give the last thread
     * most of the work); where the block buffer cannot be had, the row path
     * below */
    if (j->path == 2) {
        attn_flash_task(j);
        return;
    }
    if (j->path == 1) {
        /* fewer queries per block where the scores would pass 8 MiB */
        int64_t qb = ((int64_t)1 << 21) / (sp.group * a->n_kv);
        qb = qb > ATTN_QB ? ATTN_QB : qb < 1 ? 1 : qb;
        const int64_t R = qb * sp.group;
        float *buf = malloc((size_t)(R * (2 * a->HD + a->n_kv)) * sizeof(float));
        if (buf) {
            const int64_t blocks = (a->T + qb - 1) / qb;
            for (int64_t i = ith; i < blocks * a->KVH; i += nth) {
                const int64_t b = i / a->KVH, t0 = b * qb;
                attn_block(j->k, a, t0, a->T - t0 < qb ? a->T - t0 : qb, i % a->KVH, sp.group, buf);
            }
            free(buf);
            return;
        }
    }
    float *sc = a->scratch + (int64_t)ith * sp.chunk * a->n_kv;
    for (int64_t i = ith; i < a->T * kv_groups * sp.chunks; i += nth) {
        int64_t c = i % sp.chunks, gi = (i / sp.chunks) % kv_groups, t = i / sp.chunks / kv_groups;
        int64_t h0 = gi * sp.group + c * sp.chunk;
        int64_t g = sp.group - c * sp.chunk < sp.chunk ? sp.group - c * sp.chunk : sp.chunk;
        if (g > 0) attn_group(j->k, a, t, gi, h0, g, sc);
    }
}

void nmlx_cpu_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    if (a->T <= 0 || a->H <= 0 || a->HD <= 0) return;
    int64_t work = a->T * a->H * a->n_kv * a->HD * 2;
    int nth = (a->T * a->H > 1 && work >= (1 << 14)) ? be->n_threads : 1;
    attn_job_t j = {cpu_kernels_of(be), a, split_for(a, nth), 0, 0, 0, 0, 0};
    if (a->T >= 4 && a->KVH * j.sp.group == a->H) {
        j.path = prefill_path();
        const int64_t g = j.sp.group, nq = NMLX_ATTN_FLASH_ROWS / (g < 1 ? 1 : g);
        if (j.path >= 2 && !(j.k->attn_flash && j.k->attn_flash_ok(a->HD, g)))
            j.path = 1;
        else if (j.path == 2 && (a->T < nq ? a->T : nq) * g < FLASH_MIN_ROWS)
            j.path = 1; /* a few rows: half of each vector idle */
        else if (j.path == 3)
            j.path = 2;
    }
    if (j.path == 2) {
        /* half caches: each thread widens a KV head's visible keys once */
        const int64_t w0 =
            a->window > 0 && a->q_pos - a->window + 1 > 0 ? a->q_pos - a->window + 1 : 0;
        const int64_t wn = a->n_kv - w0;
        if (a->kv_dtype != NMLX_DT_F32 && wn > 0 &&
            2 * wn * a->HD * (int64_t)sizeof(float) <= NMLX_ATTN_WIDE_MAX)
            j.wide_j0 = w0, j.wide_n = wn;
        j.buf_floats = nmlx_attn_flash_floats(a->HD) + 2 * j.wide_n * a->HD;
    }
    nmlx_pool_run_n(be->pool, attn_task, &j, nth);
    if (j.path == 2 && atomic_load(&j.next) == 0) { /* no thread had a buffer */
        j.path = 0;
        nmlx_pool_run_n(be->pool, attn_task, &j, nth);
    }
}
