/* The fused ops (backend.h add_rmsnorm, rope_kv, gate_up_act) against the unfused op
 * sequence they replace, bit for bit on the CPU: on random inputs of odd
 * sizes, for the portable kernel set and the best one this CPU runs, one
 * thread and several (rows / tokens split over the pool). Then the model
 * path: fixtures of the standard decoder (q/k norms, sandwich norms,
 * rotating and quantized and half-precision caches where the fused append
 * falls back, long RoPE, query scaling, quantized weights) evaluated with
 * the fused ops and with NMLX_FUSED=0 (the unfused sequence): every logit
 * of a prefill (all rows) and of the decode steps after it must be equal.
 * (gate_up_act on the CPU is matmul_multi + act_mul: checked all the same.)
 * Last, the model side of recorded decode steps (step_graph) and of
 * add_rmsnorm_matmul (the residual add + norm left to the projections that
 * read it, decoder_layer.h NMLX_CHAIN_PENDING) with fakes. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "harness.h"
#include "model.h"
#include "nmlx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *copy_of(const float *x, size_t n) {
    float *c = malloc(n * sizeof(float));
    memcpy(c, x, n * sizeof(float));
    return c;
}

/* a [n] norm weight in dt (F32 or BF16) */
static nmlx_tensor norm_weight(nmlx_dtype dt, int64_t n) {
    nmlx_tensor w = {.dtype = dt, .ndim = 1, .shape = {n}, .name = "w"};
    float *v = test_rand_floats((size_t)n, -1.5f, 1.5f);
    if (dt == NMLX_DT_BF16) {
        uint16_t *b = malloc((size_t)n * sizeof(uint16_t));
        for (int64_t i = 0; i < n; i++)
            b[i] = nmlx_f32_to_bf16(v[i]);
        free(v);
        w.data = b;
    } else {
        w.data = v;
    }
    return w;
}

static void check_add_rmsnorm(nmlx_backend *be, int64_t R, int64_t D, nmlx_dtype wdt, bool weight,
                              float off) {
    size_t n = (size_t)(R * D);
    float *x = test_rand_floats(n, -3, 3), *d = test_rand_floats(n, -3, 3);
    nmlx_tensor w = norm_weight(wdt, D);
    float *x_ref = copy_of(x, n), *y_ref = malloc(n * sizeof(float)),
          *y = malloc(n * sizeof(float));
    be->ops->add(be, x_ref, d, x_ref, (int64_t)n);
    be->ops->rmsnorm(be, x_ref, weight ? &w : NULL, off, 1e-5f, y_ref, R, D);
    be->ops->add_rmsnorm(be, x, d, weight ? &w : NULL, off, 1e-5f, y, R, D);
    EXPECT(!memcmp(x, x_ref, n * sizeof(float)) && !memcmp(y, y_ref, n * sizeof(float)),
           "add_rmsnorm %s R=%lld D=%lld: differs from add + rmsnorm", nmlx_backend_cpu_isa(be),
           (long long)R, (long long)D);
    free(x), free(d), free(w.data), free(x_ref), free(y_ref), free(y);
}

typedef struct rkv_case {
    int64_t T, H, KVH, HD, rot, cap, row0, pos0;
    bool norm, rope;
} rkv_case;

/* rope_kv against rmsnorm + rope + row copies on the same inputs. */
static void check_rope_kv(nmlx_backend *be, const rkv_case *c) {
    size_t nq = (size_t)(c->T * c->H * c->HD), nk = (size_t)(c->T * c->KVH * c->HD);
    size_t nc = (size_t)(c->KVH * c->cap * c->HD);
    float *q = test_rand_floats(nq, -2, 2), *k = test_rand_floats(nk, -2, 2),
          *v = test_rand_floats(nk, -2, 2);
    float *kc = test_rand_floats(nc, -1, 1), *vc = test_rand_floats(nc, -1, 1);
    float *q_ref = copy_of(q, nq), *k_ref = copy_of(k, nk);
    float *kc_ref = copy_of(kc, nc), *vc_ref = copy_of(vc, nc);
    float *freqs = malloc((size_t)(c->rot / 2 + 1) * sizeof(float));
    for (int64_t i = 0; i < c->rot / 2; i++)
        freqs[i] = (float)pow(10000.0, -2.0 * (double)i / (double)c->rot);
    nmlx_tensor qw = norm_weight(NMLX_DT_BF16, c->HD), kw = norm_weight(NMLX_DT_F32, c->HD);
    float qoff = 0.0f, koff = 1.0f, qeps = 1e-6f, keps = 1e-5f, ms = 1.25f;
    /* the unfused sequence */
    if (c->norm) {
        be->ops->rmsnorm(be, q_ref, &qw, qoff, qeps, q_ref, c->T * c->H, c->HD);
        be->ops->rmsnorm(be, k_ref, &kw, koff, keps, k_ref, c->T * c->KVH, c->HD);
    }
    if (c->rope) {
        be->ops->rope(be, q_ref, c->T, c->H, c->HD, c->rot, c->pos0, freqs, ms);
        be->ops->rope(be, k_ref, c->T, c->KVH, c->HD, c->rot, c->pos0, freqs, ms);
    }
    size_t row = (size_t)c->HD * sizeof(float);
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t h = 0; h < c->KVH; h++) {
            int64_t dst = (h * c->cap + c->row0 + t) * c->HD, src = (t * c->KVH + h) * c->HD;
            memcpy(kc_ref + dst, k_ref + src, row);
            memcpy(vc_ref + dst, v + src, row);
        }
    nmlx_rope_kv_args a = {
        .q = q,
        .k = k,
        .v = v,
        .k_cache = kc,
        .v_cache = vc,
        .T = c->T,
        .H = c->H,
        .KVH = c->KVH,
        .HD = c->HD,
        .cap = c->cap,
        .row0 = c->row0,
        .qk_norm = c->norm,
        .q_norm = &qw,
        .k_norm = &kw,
        .q_norm_offset = qoff,
        .q_norm_eps = qeps,
        .k_norm_offset = koff,
        .k_norm_eps = keps,
        .rot = c->rot,
        .pos0 = c->pos0,
        .freqs = c->rope ? freqs : NULL,
        .mscale = ms,
    };
    be->ops->rope_kv(be, &a);
    bool ok = !memcmp(q, q_ref, nq * sizeof(float)) && !memcmp(kc, kc_ref, nc * sizeof(float)) &&
              !memcmp(vc, vc_ref, nc * sizeof(float));
    EXPECT(ok, "rope_kv %s T=%lld H=%lld KVH=%lld HD=%lld rot=%lld norm=%d rope=%d: differs",
           nmlx_backend_cpu_isa(be), (long long)c->T, (long long)c->H, (long long)c->KVH,
           (long long)c->HD, (long long)c->rot, c->norm, c->rope);
    free(q), free(k), free(v), free(kc), free(vc), free(q_ref), free(k_ref);
    free(kc_ref), free(vc_ref), free(freqs), free(qw.data), free(kw.data);
}

/* gate_up_act against matmul_multi + act_mul, dense BF16 weights [I, N] */
static void check_gate_up_act(nmlx_backend *be, int64_t I, int64_t N, int64_t T, nmlx_act act) {
    nmlx_tensor tg = norm_weight(NMLX_DT_BF16, I * N), tu = norm_weight(NMLX_DT_BF16, I * N);
    nmlx_tensor b = norm_weight(NMLX_DT_F32, I);
    nmlx_weight g = {.w = tg, .rows = I, .cols = N}, u = {.w = tu, .rows = I, .cols = N};
    g.w.ndim = u.w.ndim = 2;
    g.w.shape[0] = u.w.shape[0] = I, g.w.shape[1] = u.w.shape[1] = N;
    size_t ny = (size_t)(T * I);
    float *x = test_rand_floats((size_t)(T * N), -2, 2);
    float *gate = malloc(ny * sizeof(float)), *up = malloc(ny * sizeof(float));
    float *rg = malloc(ny * sizeof(float)), *ru = malloc(ny * sizeof(float));
    const nmlx_weight *ws[2] = {&g, &u};
    const nmlx_tensor *bs[2] = {&b, NULL};
    float *ys[2] = {rg, ru};
    be->ops->matmul_multi(be, 2, ws, bs, x, ys, T);
    be->ops->act_mul(be, act, rg, ru, rg, (int64_t)ny);
    be->ops->gate_up_act(be, act, &g, &u, &b, NULL, x, gate, up, T);
    EXPECT(!memcmp(gate, rg, ny * sizeof(float)), "gate_up_act %s I=%lld N=%lld T=%lld: differs",
           nmlx_backend_cpu_isa(be), (long long)I, (long long)N, (long long)T);
    free(tg.data), free(tu.data), free(b.data), free(x), free(gate), free(up), free(rg), free(ru);
}

static void check_ops(const char *isa, int threads) {
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create_isa(threads, isa, &be) != NMLX_OK) return; /* CPU lacks it */
    EXPECT(be->ops->add_rmsnorm && be->ops->rope_kv && be->ops->gate_up_act,
           "cpu backend has the fused ops");
    check_gate_up_act(be, 37, 64, 1, NMLX_ACT_SILU);
    check_gate_up_act(be, 300, 129, 3, NMLX_ACT_GELU_TANH);
    check_gate_up_act(be, 129, 256, 20, NMLX_ACT_GELU_ERF); /* the prefill kernel */
    check_add_rmsnorm(be, 1, 4099, NMLX_DT_BF16, true, 0.0f);
    check_add_rmsnorm(be, 3, 37, NMLX_DT_F32, true, 1.0f);
    check_add_rmsnorm(be, 41, 1001, NMLX_DT_BF16, true, 0.0f); /* split over threads */
    check_add_rmsnorm(be, 5, 129, NMLX_DT_F32, false, 0.0f);
    const rkv_case cases[] = {
        {1, 32, 8, 128, 128, 300, 211, 211, true, true},   /* 8B-like decode, q/k norms */
        {1, 6, 2, 80, 40, 17, 16, 16, false, true},        /* partial rotary, last row */
        {7, 5, 1, 16, 16, 20, 3, 1000, true, true},        /* prefill, MQA */
        {5, 3, 3, 33, 32, 9, 0, 0, true, false},           /* NoPE, odd head dim */
        {2, 4, 2, 64, 64, 256, 100, 100000, false, false}, /* plain append */
        {40, 12, 4, 96, 96, 64, 13, 13, true, true},       /* split over threads */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_rope_kv(be, &cases[i]);
    nmlx_backend_free(be);
}

/* ---- the model path, fused vs NMLX_FUSED=0 ---- */

typedef struct fixture {
    const char *dir;
    int kv_bits;
} fixture;

static const fixture FIXTURES[] = {
    {"tests/fixtures/qwen3", 0},                 /* q/k norms */
    {"tests/fixtures/llama3_tied", 0},           /* plain */
    {"tests/fixtures/llama3_tied", 4},           /* quantized KV: append falls back */
    {"tests/fixtures/gemma3_text", 0},           /* sandwich norms, rotating layers */
    {"tests/fixtures/mistral_window", 0},        /* rotating cache */
    {"tests/fixtures/phi3_longrope", 0},         /* per-call RoPE tables */
    {"tests/fixtures/ministral3_yarn", 0},       /* query scaling after RoPE */
    {"tests/fixtures/quant_llama_q4g64_f16", 0}, /* quantized weights */
    {"tests/fixtures/qwen3_bf16", 0},            /* half-precision cache: falls back */
    {"tests/fixtures/qwen3_moe", 0},             /* MoE layers in the chain */
};

enum { PROMPT = 13, STEPS = 6 };

/* all logits of a prompt, then STEPS greedy decode steps' logits, into out */
static bool run(const char *dir, int kv_bits, bool fused, float *out, int64_t *V) {
    if (fused)
        unsetenv("NMLX_FUSED");
    else
        setenv("NMLX_FUSED", "0", 1);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    bool ok = nmlx_model_load(dir, &mp, &m) == NMLX_OK;
    unsetenv("NMLX_FUSED");
    EXPECT(ok, "%s: load: %s", dir, nmlx_last_error());
    if (!ok) return false;
    EXPECT((m->be->ops->rope_kv != NULL) == fused, "%s: NMLX_FUSED=0 drops the fused ops", dir);
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_bits = kv_bits;
    sp.kv_group_size = 16;
    sp.max_context = 64;
    ok = nmlx_session_create(m, &sp, &s) == NMLX_OK;
    EXPECT(ok, "%s: session: %s", dir, nmlx_last_error());
    *V = nmlx_model_vocab_size(m);
    int32_t ids[PROMPT];
    for (int t = 0; t < PROMPT; t++)
        ids[t] = (int32_t)((t * 7919 + 13) % *V);
    ok = ok && nmlx_session_eval(s, ids, PROMPT, 1) == NMLX_OK;
    size_t rows = 0;
    const float *all = ok ? nmlx_session_all_logits(s, &rows) : NULL;
    ok = ok && all && rows == PROMPT;
    if (ok) memcpy(out, all, (size_t)(PROMPT * *V) * sizeof(float));
    for (int step = 0; ok && step < STEPS; step++) {
        const float *l = nmlx_session_logits(s);
        int32_t next = 0;
        for (int64_t i = 1; i < *V; i++)
            if (l[i] > l[next]) next = (int32_t)i;
        ok = nmlx_session_eval(s, &next, 1, 0) == NMLX_OK;
        if (ok)
            memcpy(out + (PROMPT + step) * *V, nmlx_session_logits(s), (size_t)*V * sizeof(float));
    }
    EXPECT(ok, "%s: eval: %s", dir, nmlx_last_error());
    nmlx_session_free(s);
    nmlx_model_free(m);
    return ok;
}

static void check_model(const fixture *f) {
    enum { MAX_V = 1 << 16 };
    size_t n = (size_t)(PROMPT + STEPS) * MAX_V;
    float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
    int64_t Va = 0, Vb = 0;
    if (run(f->dir, f->kv_bits, true, a, &Va) && run(f->dir, f->kv_bits, false, b, &Vb)) {
        EXPECT(Va == Vb && Va <= MAX_V, "%s: vocab", f->dir);
        size_t m = (size_t)(PROMPT + STEPS) * (size_t)Va;
        int diffs = 0;
        for (size_t i = 0; i < m; i++)
            diffs += a[i] != b[i] || isnan(a[i]);
        EXPECT(diffs == 0, "%s (kv_bits %d): %d logits differ between fused and unfused", f->dir,
               f->kv_bits, diffs);
        printf("%s kv_bits %d: %zu logits equal\n", f->dir, f->kv_bits, m);
    }
    free(a), free(b);
}

/* ---- the recorded-step protocol (backend.h step_graph) on the CPU ----
 * A fake step_graph that records its calls and never replays: every
 * decode step of a standard-cache model must bracket its ops with BEGIN
 * and END (same key, position, id), the key must stay while nothing but the
 * position changes and change when the KV cache grows (its buffers move);
 * models whose steps cannot be replayed (rotating, quantized caches) make
 * no calls. The logits must equal the plain backend's. */

enum { LOG_MAX = 4096 };
static struct {
    int what;
    uint64_t key;
    int64_t pos;
    int32_t id;
} calls[LOG_MAX];
static int n_calls;

static bool fake_step_graph(nmlx_backend *be, int what, uint64_t key, int64_t pos, int32_t id) {
    (void)be;
    if (n_calls < LOG_MAX)
        calls[n_calls].what = what, calls[n_calls].key = key, calls[n_calls].pos = pos,
        calls[n_calls++].id = id;
    return false;
}

/* decodes `steps` greedy tokens after a 5-token prompt; ids fed into fed[] */
static void decode(nmlx_model *m, int kv_bits, int steps, int32_t *fed, float *last) {
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_bits = kv_bits;
    sp.kv_group_size = 16;
    sp.max_context = 600;
    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_OK, "session: %s", nmlx_last_error());
    if (!s) return;
    int32_t prompt[5] = {1, 2, 3, 4, 5};
    bool ok = nmlx_session_eval(s, prompt, 5, 0) == NMLX_OK;
    int64_t V = nmlx_model_vocab_size(m);
    for (int step = 0; ok && step < steps; step++) {
        const float *l = nmlx_session_logits(s);
        int32_t next = 0;
        for (int64_t i = 1; i < V; i++)
            if (l[i] > l[next]) next = (int32_t)i;
        fed[step] = next;
        ok = nmlx_session_eval(s, &next, 1, 0) == NMLX_OK;
    }
    EXPECT(ok, "decode: %s", nmlx_last_error());
    if (ok) memcpy(last, nmlx_session_logits(s), (size_t)V * sizeof(float));
    nmlx_session_free(s);
}

/* dir loaded on n_threads; a failed load is a test failure, and NULL */
static nmlx_model *load_on_threads(const char *dir, int n_threads) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = n_threads;
    nmlx_model *m = NULL;
    EXPECT(nmlx_model_load(dir, &mp, &m) == NMLX_OK, "%s: load: %s", dir, nmlx_last_error());
    return m;
}

static void check_steps(const char *dir, int kv_bits, bool replayable) {
    enum { STEPS = 300 }; /* 5 + 300 positions: the cache grows at 256 */
    nmlx_model *m = load_on_threads(dir, 1);
    if (!m) return;
    int64_t V = nmlx_model_vocab_size(m);
    float *plain = malloc((size_t)V * sizeof(float)), *faked = malloc((size_t)V * sizeof(float));
    int32_t fed[STEPS], fed2[STEPS];
    decode(m, kv_bits, STEPS, fed, plain);
    static nmlx_backend_ops ops;
    const nmlx_backend_ops *orig = m->be->ops;
    ops = *orig;
    ops.step_graph = fake_step_graph;
    m->be->ops = &ops;
    n_calls = 0;
    decode(m, kv_bits, STEPS, fed2, faked);
    m->be->ops = orig;
    EXPECT(!memcmp(plain, faked, (size_t)V * sizeof(float)) && !memcmp(fed, fed2, sizeof fed),
           "%s: logits differ with step_graph present", dir);
    if (!replayable) {
        EXPECT(n_calls == 0, "%s (kv_bits %d): %d step_graph calls, none expected", dir, kv_bits,
               n_calls);
    } else {
        EXPECT(n_calls == 2 * STEPS, "%s: %d step_graph calls for %d steps", dir, n_calls, STEPS);
        int keys = 1, bad = 0;
        for (int i = 0; i + 1 < n_calls && i / 2 < STEPS; i += 2) {
            int step = i / 2;
            bad += calls[i].what != NMLX_STEP_BEGIN || calls[i + 1].what != NMLX_STEP_END;
            bad += calls[i].key != calls[i + 1].key || calls[i].pos != calls[i + 1].pos;
            bad += calls[i].pos != 5 + step || calls[i].id != fed2[step];
            if (i && calls[i].key != calls[i - 2].key) {
                keys++;
                bad += calls[i].pos != 256; /* only where the cache grows */
            }
        }
        EXPECT(bad == 0 && keys == 2, "%s: %d malformed step_graph calls, %d keys (2 expected)",
               dir, bad, keys);
    }
    free(plain), free(faked);
    nmlx_model_free(m);
}

/* ---- the model side of add_rmsnorm_matmul (backend.h) on the CPU ----
 * The CPU has no such op; a fake that either runs the ops it stands for
 * (add_rmsnorm, then matmul_multi or gate_up_act, then rope_kv where asked)
 * or declines them (the model then runs them itself) must leave every
 * decode step's logits and ids equal to the plain backend's, bit for bit,
 * with the fake called for the q/k/v of every layer but the first and for
 * the gate/up of dense MLP layers, on one-token steps only. Four runs:
 * declining everything, running everything, running all but the rope_kv
 * fold (the model then asks again without it), and running everything with
 * a fake matmul_residual too (matmul, then add), so the o and down
 * projections of layers without sandwich norms add into x themselves and
 * the norms after them come with d NULL. */

enum { NM_DECLINE, NM_RUN, NM_NO_ROPE, NM_RESID };
static long nm_calls[3];         /* act < 0 (q/k/v), act >= 0 (gate/up), with rope_kv */
static long nm_resid, nm_summed; /* matmul_residual calls; norm calls with d NULL */
static bool nm_bad;
static int nm_mode;

static bool fake_matmul_residual(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                                 const float *a, float *x, int64_t T) {
    static float *y;
    static int64_t cap;
    nm_resid++;
    nm_bad = nm_bad || T != 1 || a == x;
    if (nm_mode != NM_RESID) return false;
    if (w->rows > cap) {
        free(y);
        y = malloc((size_t)w->rows * sizeof *y);
        cap = y ? w->rows : 0;
        if (!y) return false;
    }
    be->ops->matmul(be, w, bias, a, y, T);
    be->ops->add(be, x, y, x, T * w->rows);
    return true;
}

static bool fake_norm_matmul(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *nw,
                             float off, float eps, float *y, int64_t D, int act, int n,
                             const nmlx_weight *const *ws, const nmlx_tensor *const *bs,
                             float *const *ys, const nmlx_rope_kv_args *rope) {
    nm_calls[act >= 0]++;
    nm_bad = nm_bad || (act >= 0 ? n != 2 : n != 3) || ws[0]->cols != D;
    if (rope) {
        nm_calls[2]++;
        nm_bad = nm_bad || act >= 0 || rope->T != 1 || rope->qk_norm || rope->q != ys[0] ||
                 rope->k != ys[1] || rope->v != ys[2];
    }
    nm_summed += d == NULL;
    nm_bad = nm_bad || (!d && nm_mode != NM_RESID);
    if (nm_mode == NM_DECLINE || (rope && nm_mode == NM_NO_ROPE)) return false;
    if (d)
        be->ops->add_rmsnorm(be, x, d, nw, off, eps, y, 1, D);
    else
        be->ops->rmsnorm(be, x, nw, off, eps, y, 1, D);
    if (act >= 0)
        be->ops->gate_up_act(be, (nmlx_act)act, ws[0], ws[1], bs[0], bs[1], y, ys[0], ys[1], 1);
    else
        be->ops->matmul_multi(be, n, ws, bs, y, ys, 1);
    if (rope) be->ops->rope_kv(be, rope);
    return true;
}

/* rope: the fixture's attention takes the rope_kv fold (no q/k norm);
 * resid: its layers take matmul_residual (no sandwich norms); summed: a
 * norm after one reaches the fake (MoE layers norm before their experts
 * themselves) */
static void check_norm_matmul(const char *dir, bool gate_up, bool rope, bool resid, bool summed) {
    enum { STEPS = 8 };
    static const char *mode_name[] = {"declined", "run", "run, rope_kv declined",
                                      "run, with matmul_residual"};
    nmlx_model *m = load_on_threads(dir, 2);
    if (!m) return;
    int64_t V = nmlx_model_vocab_size(m);
    float *plain = malloc((size_t)V * sizeof(float)), *faked = malloc((size_t)V * sizeof(float));
    int32_t fed[STEPS], fed2[STEPS];
    decode(m, 0, STEPS, fed, plain);
    static nmlx_backend_ops ops;
    const nmlx_backend_ops *orig = m->be->ops;
    ops = *orig;
    ops.add_rmsnorm_matmul = fake_norm_matmul;
    ops.matmul_residual = fake_matmul_residual;
    m->be->ops = &ops;
    for (int mode = NM_DECLINE; mode <= NM_RESID; mode++) {
        nm_mode = mode, nm_bad = false, nm_calls[0] = nm_calls[1] = nm_calls[2] = 0;
        nm_resid = nm_summed = 0;
        decode(m, 0, STEPS, fed2, faked);
        EXPECT(!memcmp(plain, faked, (size_t)V * sizeof(float)) && !memcmp(fed, fed2, sizeof fed),
               "%s: logits differ with add_rmsnorm_matmul (%s)", dir, mode_name[mode]);
        /* the rope_kv fold is asked for first on every q/k/v call; where it is
         * declined the same call comes again without it */
        const long qkv = mode == NM_DECLINE && rope ? nm_calls[0] / 2 : nm_calls[0];
        const long want_rope = !rope                                ? 0
                               : mode == NM_RUN || mode == NM_RESID ? nm_calls[0]
                                                                    : nm_calls[0] / 2;
        EXPECT(!nm_bad && qkv > 0 && (nm_calls[1] > 0) == gate_up && nm_calls[2] == want_rope,
               "%s: add_rmsnorm_matmul calls (%s): q/k/v %ld, gate/up %ld, rope_kv %ld%s", dir,
               mode_name[mode], nm_calls[0], nm_calls[1], nm_calls[2],
               nm_bad ? " (malformed)" : "");
        /* matmul_residual is offered the o and down projections of every
         * one-token layer step (where taken, the norms after them come
         * summed) and nothing else */
        EXPECT((nm_resid > 0) == resid && (nm_summed > 0) == (summed && mode == NM_RESID),
               "%s: matmul_residual (%s): %ld calls, %ld norms with d NULL", dir, mode_name[mode],
               nm_resid, nm_summed);
        printf("%s add_rmsnorm_matmul %s: q/k/v %ld, gate/up %ld, with rope_kv %ld calls, "
               "matmul_residual %ld, summed %ld; logits equal\n",
               dir, mode_name[mode], nm_calls[0], nm_calls[1], nm_calls[2], nm_resid, nm_summed);
    }
    m->be->ops = orig;
    free(plain), free(faked);
    nmlx_model_free(m);
}

int main(void) {
    test_seed(20261205);
    const char *isas[] = {"portable", NULL}; /* NULL: the best set this CPU runs */
    for (int i = 0; i < 2; i++) {
        check_ops(isas[i], 1);
        check_ops(isas[i], 3);
    }
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++)
        check_model(&FIXTURES[i]);
    check_steps("tests/fixtures/llama3_tied", 0, true);
    check_steps("tests/fixtures/qwen3", 0, true);
    check_steps("tests/fixtures/llama3_tied", 4, false);    /* quantized KV */
    check_steps("tests/fixtures/mistral_window", 0, false); /* rotating cache */
    check_norm_matmul("tests/fixtures/llama3_tied", true, true, true, true);
    check_norm_matmul("tests/fixtures/qwen3", true, false, true, true); /* q/k norms */
    check_norm_matmul("tests/fixtures/gemma3_text", true, false, false,
                      false); /* sandwich, (1 + w) */
    /* half scales: an f16 KV cache on the CPU, which rope_kv does not take */
    check_norm_matmul("tests/fixtures/quant_llama_q4g64_f16", true, false, true, true);
    check_norm_matmul("tests/fixtures/qwen3_moe", false, false, true, false); /* MoE: q/k/v only */
    check_norm_matmul("tests/fixtures/qwen2", true, true, true, true);        /* q/k/v biases */
    check_norm_matmul("tests/fixtures/phi3_longrope", true, true, true,
                      true);                                             /* fused qkv, longrope */
    check_norm_matmul("tests/fixtures/smollm3", true, true, true, true); /* layers without RoPE */
    return test_summary();
}
