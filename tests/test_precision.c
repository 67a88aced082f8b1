/* nmlx_model_params.precision, and the default precision's accuracy on the
 * quantized fixtures (issue 9's contract).
 *
 * "f32" runs every quantized matmul on f32 activations, decode included:
 * token by token with an f32 KV cache, the fixtures' greedy logits
 * (transformers on the dequantized weights) within 1e-5 of max|ref|
 * (measured ~1.3e-6), and the same for the fixture's prompt and greedy ids
 * fed as one prefill (T >= 24: the prefill kernels; never AMX or any
 * rounding kernel, whatever NMLX_AMX_QUANT forces). That f32 path is the
 * reference of everything below.
 *
 * The default, by what its quantized matmuls do to x (which kernels the
 * one-time pick takes: the prefill's at the tokens fed, and the decode
 * mat-vec, which also computes the LM head's rows; default_prefill() names
 * them):
 * - exact paths (int16 x, AMX with x and W as bf16 hi + lo, f32): within
 *   1e-3 of the logit range on a 40-token prompt and of max|logit| on the
 *   fixture sequences;
 * - paths that round x to bf16 by design (the AMX one-term kernel, the
 *   AVX512_BF16 prefill, the AVX512_BF16 4-bit decode mat-vec where the
 *   pick takes it over the int16 one): issue 9's contract, logits within
 *   2e-2 of max|logit|;
 * and for both, on every quantized fixture, with its prompt and greedy ids
 * fed as one prefill (32 tokens, through the prefill kernels): argmax
 * identical at every position (so the greedy ids, teacher-forced, too),
 * and greedy ids identical over 16 tokens generated after a 24-token
 * prompt (the fixture's prompt and first 7 greedy ids).
 * "int8" runs the quantized prefill on int8 activations: on a quantized
 * fixture with a prompt long enough for the prefill kernels, int8 logits
 * must differ from the default (the path was taken) yet stay within the
 * int8 bound of docs/quantization.md (5e-2 of the logit range here; the
 * kernel's exact bound is checked in test_quant_int8.c). Bad names fail
 * with INVALID_ARG; where the CPU lacks AVX512_VNNI, "int8" fails with
 * UNSUPPORTED naming the need.
 *
 * Prints which quantized prefill the default took: "AMX quantized prefill:
 * RAN (...)" where the AMX kernel ran, "SKIPPED (why)" where AMX is not
 * usable. Built also with the AMX tiles emulated in C (tests/amx.cmake:
 * NMLX_TEST_AMX_EMU, tests/amx_emu_dense.c), so the AMX paths' selection
 * and numerics run on any AVX512_BF16 CPU, and with a broken AMX packing
 * (must fail). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#if defined(__x86_64__)
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_kernels.h"
#endif

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include <math.h>
#include <stdbool.h>
#include <string.h>

static const char *const DIRS[] = {"tests/fixtures/quant_llama_q4g64_f16",
                                   "tests/fixtures/quant_qwen3_q8g64_bf16",
                                   "tests/fixtures/quant_llama_mxfp4"};
/* issue 9's contract: every quantized fixture */
static const char *const CONTRACT[] = {"quant_llama_q4g64_f16", "quant_qwen3_q8g64_bf16",
                                       "quant_llama_mxfp4", "quant_qwen3_q3g32_bf16"};

enum { PROMPT40 = 40, GEN = 16, GEN_PROMPT = 24 };

/* issue 9: logits of a path that rounds activations to bf16, of max|logit| */
#define CONTRACT_MAX 2e-2
/* exact paths, of the range (40-token prompt) and of max|logit| (sequences) */
#define EXACT_TOL 1e-3

/* The default precision's quantized matmuls on this machine: the prefill
 * kernel at T tokens, and the mat-vec that computes decode steps and the LM
 * head's rows (16 at a time, under the prefill's 24: quant_avx512.c) */
typedef struct {
    char name[200];
    bool rounds; /* x rounded to bf16 by design somewhere: the contract's bound */
    bool amx;    /* the AMX kernel runs in the prefill */
} prefill_path;

/* whether the fixture at dir is affine 4-bit at group 64 or 128, the
 * weights the AVX512_BF16 decode mat-vec takes (expected.json) */
static bool bf16_decode_weights(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *q = json_object_get(root, "quantization");
    const char *mode = json_string_value(json_object_get(q, "mode"));
    const json_int_t bits = json_integer_value(json_object_get(q, "bits")),
                     gs = json_integer_value(json_object_get(q, "group_size"));
    const bool yes = mode && !strcmp(mode, "affine") && bits == 4 && (gs == 64 || gs == 128);
    json_decref(root);
    return yes;
}

/* ...for the fixture at dir (its weights decide the decode mat-vec) */
static prefill_path default_prefill(int64_t T, const char *dir) {
    prefill_path p = {.rounds = false, .amx = false};
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) {
        snprintf(p.name, sizeof p.name, "no AVX512_BF16: int16 or f32 x");
        return p;
    }
    const nmlx_qbf16_pick k = nmlx_qbf16_get_pick();
    int n = 0;
    if (k.prefill_amx8 && T >= k.prefill_amx8_min_t && nmlx_amx_int8_ok()) {
        p.amx = true; /* exact: int16 x, the int16 prefill's bits */
        n = snprintf(p.name, sizeof p.name, "AMX-INT8, int16 x; %s", nmlx_amx_status());
    } else if (k.prefill_amx && T >= k.prefill_amx_min_t && nmlx_amx_ok()) {
        p.amx = true, p.rounds = k.prefill_amx != 3;
        n = snprintf(p.name, sizeof p.name, "AMX, %d term%s%s; %s", k.prefill_amx,
                     k.prefill_amx == 1 ? "" : "s",
                     k.prefill_amx == 1   ? ": x and W rounded to bf16"
                     : k.prefill_amx == 2 ? ": W rounded to bf16"
                                          : ": x and W as bf16 hi + lo",
                     nmlx_amx_status());
    } else if (nmlx_qint8_cpu_ok() && k.prefill_int16) {
        n = snprintf(p.name, sizeof p.name, "int16 x (VNNI)");
    } else if (k.prefill) { /* the AVX512_BF16 prefill (MXFP4, or forced for affine too) */
        p.rounds = true;
        n = snprintf(p.name, sizeof p.name, "bf16 x (AVX512_BF16, MXFP4%s), else f32 x",
                     k.prefill_affine ? " and affine" : "");
    } else {
        n = snprintf(p.name, sizeof p.name, "f32 x");
    }
    /* the AVX512_BF16 decode mat-vec (affine 4-bit) where picked over int16 */
    if (k.matvec && !k.matvec_int16 && bf16_decode_weights(dir)) {
        p.rounds = true;
        if (n > 0 && (size_t)n < sizeof p.name)
            snprintf(p.name + n, sizeof p.name - (size_t)n, "; 4-bit decode and head rows bf16 x");
    }
#else
    (void)T, (void)dir;
    snprintf(p.name, sizeof p.name, "f32 x (not x86-64)");
#endif
    return p;
}

/* One line on the AMX quantized prefill: RAN, not taken at T, or SKIPPED */
static void report_amx(int64_t T) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool bf16 = __builtin_cpu_supports("avx512bf16");
    if (!bf16 || !nmlx_amx_ok() || nmlx_amx_env() == 0 || nmlx_amx_quant_env() == 0) {
        printf("AMX quantized prefill: SKIPPED (%s)\n", !bf16                 ? "no AVX512_BF16"
                                                        : !nmlx_amx_ok()      ? nmlx_amx_status()
                                                        : nmlx_amx_env() == 0 ? "NMLX_AMX=0"
                                                                              : "NMLX_AMX_QUANT=0");
        return;
    }
    const nmlx_qbf16_pick k = nmlx_qbf16_get_pick();
    const prefill_path p = default_prefill(T, "");
    if (k.prefill_amx8)
        printf("AMX-INT8 quantized prefill: %s at T=%lld (from T=%d; NMLX_AMX_INT8=1 forces it "
               "from T=24)\n",
               T >= k.prefill_amx8_min_t ? "RAN" : "not taken", (long long)T, k.prefill_amx8_min_t);
    else
        printf("AMX-INT8 quantized prefill: not taken (%s)\n",
               nmlx_amx_int8_env() == 0 ? "NMLX_AMX_INT8=0"
               : !nmlx_amx_int8_ok()    ? "no AMX-INT8"
                                        : "the pick found it slower; NMLX_AMX_INT8=1 forces it");
    if (p.amx)
        printf("AMX quantized prefill: RAN at T=%lld (%s)\n", (long long)T, p.name);
    else if (k.prefill_amx)
        printf("AMX quantized prefill: not taken at T=%lld (the pick takes it from T=%d; "
               "NMLX_AMX_QUANT=1 or =bf16 forces it from T=24)\n",
               (long long)T, k.prefill_amx_min_t);
    else
        printf("AMX quantized prefill: not taken (the pick found it slower; NMLX_AMX_QUANT=1 "
               "or =bf16 forces it)\n");
#else
    (void)T;
    printf("AMX quantized prefill: SKIPPED (not x86-64)\n");
#endif
}

/* Where the default's AMX term count is untimed (matmul_amx.h), AMX
 * usable and nothing forced: the pick takes it from the fixed T. */
static void check_default_selection(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (NMLX_AMX_QUANT_DEFAULT_TERMS == 3 || !__builtin_cpu_supports("avx512bf16") ||
        !nmlx_amx_ok() || nmlx_amx_env() >= 0 || nmlx_amx_quant_env() >= 0)
        return;
    const nmlx_qbf16_pick k = nmlx_qbf16_get_pick();
    const int min_t = NMLX_AMX_QUANT_BF16_MIN_T > 24 ? NMLX_AMX_QUANT_BF16_MIN_T : 24;
    EXPECT(k.prefill_amx == NMLX_AMX_QUANT_DEFAULT_TERMS && k.prefill_amx_min_t == min_t,
           "default selection: the pick took %d AMX terms from T=%d, the default is %d from T=%d",
           k.prefill_amx, k.prefill_amx_min_t, NMLX_AMX_QUANT_DEFAULT_TERMS, min_t);
#endif
}

static nmlx_model *load(const char *dir, const char *precision, nmlx_status *st) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.precision = precision;
    mp.n_threads = 2;
    nmlx_model *m = NULL;
    *st = nmlx_model_load(dir, &mp, &m);
    return m;
}

/* logits of a 40-token prompt (rows of the last token) into out */
static bool prompt_logits(nmlx_model *m, float *out, int64_t V) {
    nmlx_session *s = NULL;
    if (nmlx_session_create(m, NULL, &s) != NMLX_OK) return false;
    int32_t ids[PROMPT40];
    for (int i = 0; i < PROMPT40; i++)
        ids[i] = (int32_t)((i * 7919 + 13) % V);
    bool ok = nmlx_session_eval(s, ids, PROMPT40, 0) == NMLX_OK;
    if (ok) memcpy(out, nmlx_session_logits(s), (size_t)V * sizeof(float));
    nmlx_session_free(s);
    return ok;
}

/* a fixture's prompt_ids and greedy_ids (malloc'd; false when unreadable) */
typedef struct {
    int32_t *ids; /* prompt, then greedy */
    size_t T, G;
} fixture_ids;

static bool read_ids(const char *dir, fixture_ids *f) {
    char p[4200];
    snprintf(p, sizeof p, "%s/expected.json", dir);
    json_t *root = json_load_file(p, 0, NULL);
    json_t *prompt = json_object_get(root, "prompt_ids"),
           *greedy = json_object_get(root, "greedy_ids");
    f->T = json_array_size(prompt), f->G = json_array_size(greedy);
    f->ids = f->T && f->G ? malloc((f->T + f->G) * sizeof *f->ids) : NULL;
    for (size_t i = 0; f->ids && i < f->T; i++)
        f->ids[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    for (size_t i = 0; f->ids && i < f->G; i++)
        f->ids[f->T + i] = (int32_t)json_integer_value(json_array_get(greedy, i));
    json_decref(root);
    return f->ids != NULL;
}

/* precision "f32", one token at a time after the prompt: each step's logits
 * against greedy_logits.bin */
static void test_f32_decode(const char *rel) {
    char dir[4096], p[4200];
    snprintf(dir, sizeof dir, "%s/%s", test_src_dir(), rel);
    fixture_ids f;
    EXPECT(read_ids(dir, &f), "%s: expected.json", rel);
    if (!f.ids) return;
    const size_t T = f.T, G = f.G;
    const int32_t *want = f.ids + T;
    nmlx_status st;
    nmlx_model *m = load(dir, "f32", &st);
    nmlx_session *s = NULL;
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_dtype = "f32"; /* the default cache of a quantized checkpoint is half precision */
    EXPECT(m && nmlx_session_create(m, &sp, &s) == NMLX_OK, "%s: load: %s", rel, nmlx_last_error());
    const int64_t V = m ? nmlx_model_vocab_size(m) : 0;
    float *ref = V ? malloc(G * (size_t)V * sizeof(float)) : NULL;
    snprintf(p, sizeof p, "%s/greedy_logits.bin", dir);
    FILE *fl = fopen(p, "rb");
    const bool have = fl && ref && fread(ref, sizeof(float), G * (size_t)V, fl) == G * (size_t)V;
    if (fl) fclose(fl);
    EXPECT(have, "%s: greedy_logits.bin", rel);
    if (s && have && nmlx_session_eval(s, f.ids, T, 0) == NMLX_OK) {
        double diff = 0, mref = 0;
        for (size_t i = 0; i < G; i++) {
            const float *got = nmlx_session_logits(s), *r = ref + i * (size_t)V;
            for (int64_t v = 0; v < V; v++) {
                diff = fmax(diff, fabs((double)got[v] - r[v]));
                mref = fmax(mref, fabs((double)r[v]));
            }
            if (nmlx_session_eval(s, &want[i], 1, 0) != NMLX_OK) break;
        }
        printf("%-40s precision f32, decode vs transformers: max|diff| / max|ref| %.2e\n", rel,
               diff / mref);
        EXPECT(diff / mref <= 1e-5, "%s: f32 decode %.3g of max|ref| from transformers", rel,
               diff / mref);
    }
    nmlx_session_free(s);
    nmlx_model_free(m);
    free(f.ids), free(ref);
}

/* max|diff| / range (of_max: / max|logit|) of f32's logits between
 * precision `precision` and "f32" on the 40-token prompt; NAN when either
 * model fails to load or run (a test failure). */
static double vs_f32(const char *dir, const char *precision, bool of_max) {
    nmlx_status st;
    nmlx_model *m = load(dir, precision, &st), *ref = load(dir, "f32", &st);
    EXPECT(m && ref, "%s: load: %s", dir, nmlx_last_error());
    double rel = NAN;
    if (m && ref) {
        int64_t V = nmlx_model_vocab_size(ref);
        float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
        bool ok = prompt_logits(ref, a, V) && prompt_logits(m, b, V);
        EXPECT(ok, "%s: eval", dir);
        if (ok) rel = of_max ? test_diff_over_max(b, a, (size_t)V) : test_diff_over_range(b, a, V);
        free(a), free(b);
    }
    nmlx_model_free(m);
    nmlx_model_free(ref);
    return rel;
}

/* every row's logits of ids[0..n) fed as one eval (NULL on failure) */
static float *all_logits(nmlx_model *m, const char *kv, const int32_t *ids, size_t n, int64_t V) {
    nmlx_session_params sp = nmlx_session_default_params();
    if (kv) sp.kv_dtype = kv;
    nmlx_session *s = NULL;
    float *out = NULL;
    size_t rows = 0;
    if (nmlx_session_create(m, &sp, &s) == NMLX_OK && nmlx_session_eval(s, ids, n, 1) == NMLX_OK) {
        const float *l = nmlx_session_all_logits(s, &rows);
        if (l && rows == n && (out = malloc(n * (size_t)V * sizeof *out)))
            memcpy(out, l, n * (size_t)V * sizeof *out);
    }
    nmlx_session_free(s);
    return out;
}

/* ids[0..n) as the prompt, then gen greedy ids into out; false on failure */
static bool greedy(nmlx_model *m, const int32_t *ids, size_t n, int gen, int32_t *out, int64_t V) {
    nmlx_session *s = NULL;
    bool ok =
        nmlx_session_create(m, NULL, &s) == NMLX_OK && nmlx_session_eval(s, ids, n, 0) == NMLX_OK;
    for (int i = 0; ok && i < gen; i++) {
        out[i] = test_argmax(nmlx_session_logits(s), V);
        ok = i + 1 == gen || nmlx_session_eval(s, &out[i], 1, 0) == NMLX_OK;
    }
    nmlx_session_free(s);
    return ok;
}

/* Issue 9's contract on one quantized fixture: its prompt and greedy ids
 * (all but the last) as one prefill, the default against "f32"; then 16
 * greedy ids after a 24-token prompt. The f32 rows of the greedy positions
 * are checked against transformers first (the reference must be exact). */
static void test_contract(const char *name) {
    char dir[4096], p[4200];
    test_fixture_path(dir, sizeof dir, name);
    fixture_ids f;
    EXPECT(read_ids(dir, &f), "%s: expected.json", name);
    if (!f.ids) return;
    const size_t n = f.T + f.G - 1; /* row i predicts token i + 1 */
    const prefill_path path = default_prefill((int64_t)n, dir);
    nmlx_status st;
    nmlx_model *m = load(dir, NULL, &st), *ref = load(dir, "f32", &st);
    EXPECT(m && ref, "%s: load: %s", name, nmlx_last_error());
    const int64_t V = ref ? nmlx_model_vocab_size(ref) : 0;
    float *a = ref ? all_logits(ref, "f32", f.ids, n, V) : NULL;
    float *b = m ? all_logits(m, NULL, f.ids, n, V) : NULL;
    EXPECT(a && b, "%s: eval of %zu tokens", name, n);
    float *tf = V ? malloc(f.G * (size_t)V * sizeof *tf) : NULL;
    snprintf(p, sizeof p, "%s/greedy_logits.bin", dir);
    FILE *fl = fopen(p, "rb");
    const bool have = fl && tf && fread(tf, sizeof *tf, f.G * (size_t)V, fl) == f.G * (size_t)V;
    if (fl) fclose(fl);
    EXPECT(have, "%s: greedy_logits.bin", name);
    if (a && b && have) {
        /* the reference: f32 prefill rows of the greedy positions vs transformers */
        const double f32_err = test_diff_over_max(a + (f.T - 1) * (size_t)V, tf, f.G * (size_t)V);
        EXPECT(f32_err <= 1e-5,
               "%s: precision f32, %zu-token prefill %.3g of max|ref| from "
               "transformers",
               name, n, f32_err);
        const double err = test_diff_over_max(b, a, n * (size_t)V);
        int flips = 0, first = -1, tf_bad = 0;
        for (size_t t = 0; t < n; t++) {
            const int32_t ia = test_argmax(a + t * (size_t)V, V),
                          ib = test_argmax(b + t * (size_t)V, V);
            if (ia != ib && flips++ == 0) first = (int)t;
            if (t + 1 >= f.T && ib != f.ids[t + 1]) tf_bad++;
        }
        const double bound = path.rounds ? CONTRACT_MAX : EXACT_TOL;
        char at[32] = "";
        if (flips) snprintf(at, sizeof at, " (first at %d)", first);
        printf("%-26s default (%s) vs f32, %zu-token prefill: max|diff| / max|logit| %.2e "
               "(bound %.0e), argmax flips %d%s, teacher-forced greedy mismatches %d\n",
               name, path.name, n, err, bound, flips, at, tf_bad);
        EXPECT(err <= bound, "%s: default (%s) logits %.3g of max|logit| from f32 (bound %.0e)",
               name, path.name, err, bound);
        EXPECT(flips == 0,
               "%s: default (%s): argmax differs from f32 at %d of %zu positions "
               "(first %d)",
               name, path.name, flips, n, first);
        EXPECT(tf_bad == 0, "%s: default (%s): teacher-forced greedy ids differ at %d of %zu", name,
               path.name, tf_bad, f.G);
    }
    /* greedy over 16 tokens after a prompt long enough for the prefill kernels */
    int32_t ga[GEN], gb[GEN];
    const size_t np = GEN_PROMPT <= f.T + f.G ? GEN_PROMPT : f.T + f.G;
    if (m && ref && greedy(ref, f.ids, np, GEN, ga, V) && greedy(m, f.ids, np, GEN, gb, V)) {
        int same = 0;
        while (same < GEN && ga[same] == gb[same])
            same++;
        EXPECT(same == GEN,
               "%s: default greedy ids differ from f32's at step %d of %d "
               "(%zu-token prompt)",
               name, same, GEN, np);
    } else {
        EXPECT(0, "%s: greedy generation failed: %s", name, nmlx_last_error());
    }
    nmlx_model_free(m);
    nmlx_model_free(ref);
    free(a), free(b), free(tf), free(f.ids);
}

int main(void) {
#ifdef NMLX_TEST_AMX_EMU
    /* emulated tiles time as AMX would never run: keep their picks out of
     * the machine's pick cache (a real AMX machine shares the key) */
    setenv("NMLX_PICK_CACHE", "0", 1);
    printf("AMX tiles emulated in C (tests/amx_emu_dense.c)\n");
#endif
    nmlx_status st;
    for (size_t d = 0; d < sizeof DIRS / sizeof DIRS[0]; d++)
        test_f32_decode(DIRS[d]);
    nmlx_model *bad = load(DIRS[0], "fp7", &st);
    EXPECT(!bad && st == NMLX_ERR_INVALID_ARG && strstr(nmlx_last_error(), "fp7"),
           "precision fp7: status %d, '%s'", (int)st, nmlx_last_error());
    report_amx(GEN_PROMPT);
    check_default_selection();
    for (size_t d = 0; d < sizeof CONTRACT / sizeof CONTRACT[0]; d++)
        test_contract(CONTRACT[d]);
    for (size_t d = 0; d < sizeof DIRS / sizeof DIRS[0]; d++) {
        const prefill_path p40 = default_prefill(PROMPT40, DIRS[d]);
        /* exact paths: of the range; rounding ones: the contract's, of max|logit| */
        double rel = vs_f32(DIRS[d], NULL, p40.rounds);
        if (isnan(rel)) continue;
        const double bound = p40.rounds ? CONTRACT_MAX : EXACT_TOL;
        const char *of = p40.rounds ? "max|logit|" : "range";
        printf("%-40s default (%s) vs f32: max|diff| / %s %.2e (bound %.0e)\n", DIRS[d], p40.name,
               of, rel, bound);
        EXPECT(rel < bound, "%s: default (%s) logits %.3g of the %s from f32", DIRS[d], p40.name,
               rel, of);
    }
    nmlx_model *probe = load(DIRS[0], "int8", &st);
    if (!probe) {
        EXPECT(st == NMLX_ERR_UNSUPPORTED && strstr(nmlx_last_error(), "AVX512_VNNI"),
               "int8 refused: status %d, '%s'", (int)st, nmlx_last_error());
        printf("precision int8: not supported on this CPU (%s)\n", nmlx_last_error());
        return test_summary();
    }
    nmlx_model_free(probe);
    for (size_t d = 0; d < sizeof DIRS / sizeof DIRS[0]; d++) {
        double rel = vs_f32(DIRS[d], "int8", false);
        if (isnan(rel)) continue;
        printf("%-40s int8 vs f32: max|diff| / range %.2e\n", DIRS[d], rel);
        EXPECT(rel > 0, "%s: int8 gave the f32 logits: the int8 path was not taken", DIRS[d]);
        EXPECT(rel < 5e-2, "%s: int8 logits %.3g of the range away from f32", DIRS[d], rel);
    }
    return test_summary();
}
