/* Batched decode (nmlx_batch_eval) on the CUDA backend against the same
 * sessions run alone on it, as tests/test_batch.c does on the CPU.
 *
 * For standard fixtures in f32, bf16 and MLX-quantized weights (dense,
 * tied head, biases, rotating sliding-window cache; Gemma 3, long RoPE,
 * yarn with query scaling and NoPE layers where CUDA runs them): n = 1, 3,
 * 8, 12 and 40 sessions with different random prompts (1 to 40 tokens)
 * decode greedily, in a batch and alone;
 * sessions join (steps 0-3) and leave (last 4 steps) at different steps.
 * Every session-step must give the lone session's greedy id, and logits
 * within 1e-4 of their range (the CPU batch tolerance); quantized fixtures
 * run twice, at precision "f32" (that limit) and at the default (see
 * check_batch). Up to 8 rows (GEMV_MAX_T, QG_MAX_T) matmuls run as the f32
 * mat-vec, whose rows do not depend on the batch; a lone decode step's
 * attention may take the split kernel (equal to rounding), so the count of
 * bit-identical logits is reported, not required. Batches of 12 and 40 take cuBLAS (16-bit weights:
 * x split into hi + lo) or the quantized tensor-core mat-mat, both within ~1e-5 of f32; 40 rows
 * also span two attention_rows launches (32 rows each). The MoE fixtures (qwen3_moe, gpt_oss:
 * sinks, sliding layers) and Llama 4 (its own batched pass) too. Prints one PASS/FAIL line per
 * fixture and batch size, then "N passed, N failed". Exits 77 (ctest: skipped) when no GPU is
 * usable. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <stdbool.h>
#include <string.h>

typedef struct fixture {
    const char *dir;
    bool optional; /* may be refused on cuda (NMLX_ERR_UNSUPPORTED): then SKIP */
    bool quant;    /* quantized weights: also run at precision "f32" */
} fixture;

static const fixture FIXTURES[] = {
    {"tests/fixtures/qwen3", false, false},
    {"tests/fixtures/llama3_tied", false, false},
    {"tests/fixtures/mistral_window", false, false}, /* rotating cache */
    {"tests/fixtures/qwen3_bf16", false, false},
    {"tests/fixtures/quant_llama_q4g64_f16", false, true},
    {"tests/fixtures/quant_qwen3_q3g32_bf16", false, true},
    {"tests/fixtures/quant_llama_mxfp4", false, true},
    {"tests/fixtures/quant_qwen3_q8g64_bf16", false, true},
    {"tests/fixtures/qwen2", false, false},                    /* q/k/v biases */
    {"tests/fixtures/llama_untied_linear_bias", false, false}, /* linear RoPE, biases */
    {"tests/fixtures/gemma3_text", true, false},     /* softcap, sandwich norms, local RoPE */
    {"tests/fixtures/ministral", true, false},       /* per-layer sliding / full */
    {"tests/fixtures/phi3_longrope", true, false},   /* long RoPE table switches mid-batch */
    {"tests/fixtures/ministral3_yarn", true, false}, /* yarn, query scaling */
    {"tests/fixtures/smollm3", true, false},         /* NoPE layers */
    /* families with device paths of their own */
    {"tests/fixtures/qwen3_moe", false, false},
    {"tests/fixtures/gpt_oss", false, false},
    {"tests/fixtures/llama4_text", false, false},
};

enum { MAX_SESSIONS = 40, STEPS = 10 };

typedef struct pair {
    nmlx_session *batched, *alone;
    int32_t next; /* greedy id (of the lone session) to feed next step */
    int joins_at, leaves_at;
} pair;

static nmlx_session *new_session(nmlx_model *m) {
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = 96;
    nmlx_session *s = NULL;
    nmlx_status st = nmlx_session_create(m, &sp, &s);
    EXPECT(st == NMLX_OK, "session_create: %s", nmlx_last_error());
    return s;
}

/* precision: the model's (NULL = default). At the default, a lone decode
 * step of affine 4/8-bit weights runs on int16 x (cuda_qgemv16.cu) while a
 * batch's mat-vec rows keep f32 x: there the limit is the quantized
 * contract (2e-2) and differing greedy ids are a NOTE, not a failure. */
static void check_batch(nmlx_model *m, const fixture *f, const char *precision, int n) {
    int64_t V = nmlx_model_vocab_size(m);
    pair ps[MAX_SESSIONS];
    memset(ps, 0, sizeof ps);
    nmlx_batch *batch = NULL;
    nmlx_status st = nmlx_batch_create(m, n, &batch);
    EXPECT(st == NMLX_OK, "%s: batch_create: %s", f->dir, nmlx_last_error());
    if (st != NMLX_OK) {
        printf("FAIL %-40s batch of %2d: batch_create failed\n", f->dir, n);
        return;
    }
    bool setup_ok = true;
    for (int i = 0; i < n; i++) {
        ps[i].batched = new_session(m);
        ps[i].alone = new_session(m);
        if (!ps[i].batched || !ps[i].alone) {
            setup_ok = false;
            continue;
        }
        int32_t prompt[40];
        int len = 1 + (int)(test_rand_u32() % 40);
        for (int t = 0; t < len; t++)
            prompt[t] = (int32_t)(test_rand_u32() % (uint32_t)V);
        bool ok = nmlx_session_eval(ps[i].batched, prompt, (size_t)len, 0) == NMLX_OK &&
                  nmlx_session_eval(ps[i].alone, prompt, (size_t)len, 0) == NMLX_OK;
        EXPECT(ok, "%s: prefill: %s", f->dir, nmlx_last_error());
        setup_ok = setup_ok && ok;
        if (ok) ps[i].next = test_argmax(nmlx_session_logits(ps[i].alone), V);
        ps[i].joins_at = i == 0 ? 0 : (int)(test_rand_u32() % 4);
        ps[i].leaves_at = i == 0 ? STEPS : STEPS - (int)(test_rand_u32() % 4);
    }
    double worst = 0;
    int session_steps = 0, bit_equal = 0, id_diffs = 0, steps_run = 0, max_k = 0;
    for (int step = 0; setup_ok && step < STEPS; step++) {
        nmlx_session *ss[MAX_SESSIONS];
        int32_t ids[MAX_SESSIONS], who[MAX_SESSIONS];
        int k = 0;
        for (int i = 0; i < n; i++)
            if (step >= ps[i].joins_at && step < ps[i].leaves_at) {
                ss[k] = ps[i].batched, ids[k] = ps[i].next, who[k++] = i;
            }
        if (k > max_k) max_k = k;
        st = nmlx_batch_eval(batch, ss, ids, (size_t)k);
        EXPECT(st == NMLX_OK, "%s: batch of %d, step %d: %s", f->dir, k, step, nmlx_last_error());
        if (st != NMLX_OK) break;
        steps_run++;
        for (int j = 0; j < k; j++) {
            pair *p = &ps[who[j]];
            st = nmlx_session_eval(p->alone, &p->next, 1, 0);
            EXPECT(st == NMLX_OK, "%s: alone: %s", f->dir, nmlx_last_error());
            const float *a = nmlx_session_logits(p->alone), *b = nmlx_session_logits(p->batched);
            if (st != NMLX_OK || !a || !b) {
                EXPECT(0, "%s: no logits after a step", f->dir);
                continue;
            }
            session_steps++;
            if (!memcmp(a, b, (size_t)V * sizeof(float))) bit_equal++;
            worst = fmax(worst, test_diff_over_range(b, a, V));
            int32_t ia = test_argmax(a, V), ib = test_argmax(b, V);
            if (ia != ib) id_diffs++;
            p->next = ia;
            EXPECT(nmlx_session_position(p->alone) == nmlx_session_position(p->batched),
                   "%s: positions differ", f->dir);
        }
    }
    bool contract = f->quant && !precision;
    double tol = contract ? 2e-2 : 1e-4;
    bool ok_steps = setup_ok && steps_run == STEPS;
    bool ok_tol = worst <= tol;
    bool ok_ids = id_diffs == 0 || contract;
    EXPECT(ok_steps, "%s: batch of %d: %d of %d steps ran", f->dir, n, steps_run, STEPS);
    EXPECT(ok_tol, "%s: batch of %d: max |diff| / range %.3g > %.0e", f->dir, n, worst, tol);
    EXPECT(ok_ids, "%s: batch of %d: %d greedy ids differ from the lone sessions", f->dir, n,
           id_diffs);
    printf("%s %-40s %-7s batch of %2d (up to %2d rows): %3d session-steps, max|diff|/range "
           "%.2e (limit %.0e), %d bit-identical, greedy ids %s%s\n",
           ok_steps && ok_tol && ok_ids ? "PASS" : "FAIL", f->dir,
           precision ? precision : "default", n, max_k, session_steps, worst, tol, bit_equal,
           id_diffs ? "DIFFER" : "equal",
           contract && id_diffs ? " (NOTE: int16-x lone decode, not counted)" : "");
    for (int i = 0; i < n; i++) {
        nmlx_session_free(ps[i].batched);
        nmlx_session_free(ps[i].alone);
    }
    nmlx_batch_free(batch);
}

static nmlx_model *load(const fixture *f, const char *precision) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_src_dir(), f->dir);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.no_tokenizer = 1;
    mp.device = "cuda";
    mp.precision = precision;
    nmlx_model *m = NULL;
    nmlx_status st = nmlx_model_load(path, &mp, &m);
    if (st == NMLX_ERR_UNSUPPORTED && f->optional) {
        printf("SKIP %-40s refused on cuda: %s\n", f->dir, nmlx_last_error());
        return NULL;
    }
    EXPECT(st == NMLX_OK, "load %s on cuda: %s", f->dir, nmlx_last_error());
    if (st != NMLX_OK) printf("FAIL %-40s load on cuda: %s\n", f->dir, nmlx_last_error());
    return m;
}

int main(void) {
    if (test_no_cuda_device()) return 77; /* skip, not fail */
    const int sizes[] = {1, 3, 8, 12, 40};
    for (size_t f = 0; f < sizeof FIXTURES / sizeof FIXTURES[0]; f++)
        for (int pass = 0; pass < (FIXTURES[f].quant ? 2 : 1); pass++) {
            const char *precision = pass ? "f32" : NULL;
            nmlx_model *m = load(&FIXTURES[f], precision);
            if (!m) continue;
            for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
                check_batch(m, &FIXTURES[f], precision, sizes[i]);
            nmlx_model_free(m);
        }
    return test_summary();
}
