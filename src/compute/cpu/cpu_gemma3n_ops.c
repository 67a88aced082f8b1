/* CPU ops of Gemma 3n (see backend.h): activation sparsity (Gaussian top-k),
 * AltUp stream magnitude matching, predict and correct, per-column scaling.
 * Portable C in double accumulators (these ops are O(T * D * K), far below
 * the matmuls), split over the pool by token rows when large. */
#include "compute/cpu/cpu_internal.h"

#include <math.h>

enum {
    PAR_ELEMS = 1 << 14, /* below this many elements: caller thread only */
    MAX_STREAMS = 16     /* AltUp K; the model loader rejects more */
};

/* Runs fn over rows [0, R) on the pool (or the caller thread when small). */
typedef void (*row_fn)(const void *job, int64_t r0, int64_t r1);
typedef struct {
    row_fn fn;
    const void *job;
    int64_t R;
} rows_task;

static void rows_run(void *ctx, int ith, int nth) {
    const rows_task *t = ctx;
    int64_t r0, r1;
    cpu_split(t->R, ith, nth, 1, &r0, &r1);
    if (r0 < r1) t->fn(t->job, r0, r1);
}

static void run_rows(nmlx_backend *be, row_fn fn, const void *job, int64_t R, int64_t width) {
    if (R <= 0) return;
    rows_task t = {fn, job, R};
    int nth = R * width < PAR_ELEMS ? 1 : be->n_threads;
    nmlx_pool_run_n(be->pool, rows_run, &t, nth);
}

/* ---- gaussian top-k ---------------------------------------------------- */

typedef struct {
    float *x;
    int64_t n;
    float mult;
} topk_job;

static void topk_rows(const void *jp, int64_t r0, int64_t r1) {
    const topk_job *j = jp;
    for (int64_t r = r0; r < r1; r++) {
        float *x = j->x + r * j->n;
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < j->n; i++) sum += x[i];
        double mean = sum / (double)j->n;
        for (int64_t i = 0; i < j->n; i++) sq += (x[i] - mean) * (x[i] - mean);
        float cutoff = (float)(mean + sqrt(sq / (double)j->n) * j->mult);
        for (int64_t i = 0; i < j->n; i++) x[i] = x[i] > cutoff ? x[i] - cutoff : 0.0f;
    }
}

void nmlx_cpu_gaussian_topk(nmlx_backend *be, float *x, int64_t R, int64_t n, float std_mult) {
    if (n <= 0) return;
    topk_job j = {x, n, std_mult};
    run_rows(be, topk_rows, &j, R, n);
}

/* ---- magnitude matching ------------------------------------------------- */

typedef struct {
    const float *ref;
    float *x;
    int64_t D;
    float eps;
} match_job;

static double mean_square(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s / (double)n;
}

static void match_rows(const void *jp, int64_t r0, int64_t r1) {
    const match_job *j = jp;
    for (int64_t t = r0; t < r1; t++) {
        float *x = j->x + t * j->D;
        double target = sqrt(mean_square(j->ref + t * j->D, j->D));
        double ms = mean_square(x, j->D);
        double f = target / sqrt(ms > j->eps ? ms : j->eps);
        for (int64_t i = 0; i < j->D; i++) x[i] = (float)(x[i] * f);
    }
}

void nmlx_cpu_rms_match(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                        float eps) {
    if (D <= 0) return;
    match_job j = {ref, x, D, eps};
    run_rows(be, match_rows, &j, T, D);
}

/* ---- per-column scale ----------------------------------------------------- */

typedef struct {
    float *x;
    const nmlx_tensor *w;
    int64_t D;
} mul_job;

static void mul_rows_fn(const void *jp, int64_t r0, int64_t r1) {
    const mul_job *j = jp;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < j->D; i++)
            j->x[r * j->D + i] *= nmlx_load_f32(j->w->dtype, j->w->data, (size_t)i);
}

void nmlx_cpu_mul_rows(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D) {
    mul_job j = {x, w, D};
    run_rows(be, mul_rows_fn, &j, R, D);
}

/* ---- AltUp ------------------------------------------------------------------ */

/* out[r] = sum_k W[r, k] * tanh(router[k]) for `rows` rows of W [rows, K],
 * each weight clipped to +-clip when clip > 0. */
static void router_coefs(const nmlx_tensor *w, const float *router, int64_t rows, int64_t K,
                         float clip, double *out) {
    double m[MAX_STREAMS];
    for (int64_t k = 0; k < K; k++) m[k] = tanh((double)router[k]);
    for (int64_t r = 0; r < rows; r++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) {
            double c = nmlx_load_f32(w->dtype, w->data, (size_t)(r * K + k));
            if (clip > 0) c = c < -clip ? -clip : (c > clip ? clip : c);
            s += c * m[k];
        }
        out[r] = s;
    }
}

typedef struct {
    const float *x;
    float *p; /* predict: out; correct: streams updated in place */
    const float *act, *router;
    const nmlx_tensor *coefs;
    int64_t stride, K, D, active;
    float clip;
} altup_job;

static void predict_rows(const void *jp, int64_t r0, int64_t r1) {
    const altup_job *j = jp;
    int64_t K = j->K, D = j->D;
    double c[MAX_STREAMS * MAX_STREAMS];
    for (int64_t t = r0; t < r1; t++) {
        router_coefs(j->coefs, j->router + t * K, K * K, K, 0.0f, c);
        for (int64_t i = 0; i < K; i++) {
            float *out = j->p + i * j->stride + t * D;
            const float *xi = j->x + i * j->stride + t * D;
            for (int64_t d = 0; d < D; d++) {
                double s = xi[d];
                for (int64_t k = 0; k < K; k++) s += c[i * K + k] * j->x[k * j->stride + t * D + d];
                out[d] = (float)s;
            }
        }
    }
}

void nmlx_cpu_altup_predict(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                            const nmlx_tensor *coefs, float *out, int64_t K, int64_t T,
                            int64_t D) {
    if (K <= 0 || K > MAX_STREAMS) return;
    altup_job j = {.x = x, .p = out, .router = router, .coefs = coefs, .stride = stride, .K = K,
                   .D = D};
    run_rows(be, predict_rows, &j, T, K * K * D);
}

static void correct_rows(const void *jp, int64_t r0, int64_t r1) {
    const altup_job *j = jp;
    int64_t K = j->K, D = j->D;
    double c[MAX_STREAMS];
    for (int64_t t = r0; t < r1; t++) {
        router_coefs(j->coefs, j->router + t * K, K, K, j->clip, c);
        const float *act = j->act + t * D;
        for (int64_t d = 0; d < D; d++) {
            /* the innovation is read before any stream (the active one
             * included) is overwritten */
            double innov = (double)act[d] - j->p[j->active * j->stride + t * D + d];
            for (int64_t i = 0; i < K; i++) {
                float *p = j->p + i * j->stride + t * D + d;
                *p = (float)(*p + (c[i] + 1.0) * innov);
            }
        }
    }
}

void nmlx_cpu_altup_correct(nmlx_backend *be, float *p, int64_t stride, const float *act,
                            const float *router, const nmlx_tensor *coefs, float clip,
                            int64_t active, int64_t K, int64_t T, int64_t D) {
    if (K <= 0 || K > MAX_STREAMS || active < 0 || active >= K) return;
    altup_job j = {.p = p, .act = act, .router = router, .coefs = coefs, .stride = stride,
                   .K = K, .D = D, .active = active, .clip = clip};
    run_rows(be, correct_rows, &j, T, K * D);
}
