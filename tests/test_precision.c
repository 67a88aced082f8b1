/* nmlx_model_params.precision. "f32" runs every quantized matmul on f32
 * activations, decode included: token by token with an f32 KV cache, the
 * fixtures' greedy logits (transformers on the dequantized weights) within
 * 1e-5 of max|ref| (measured ~1.3e-6; the default int16-x decode is ~9e-5
 * there). The default (int16 x where the CPU has AVX512_VNNI,
 * docs/quantization.md) against f32: within 1e-3 of the logit range. "int8"
 * runs the quantized prefill on int8 activations: on a quantized fixture
 * with a prompt long enough for the prefill kernels (>= 24 tokens), int8
 * logits must differ from the default (the path was taken) yet stay within
 * the int8 bound of docs/quantization.md (5e-2 of the logit range here; the
 * kernel's exact bound is checked in test_quant_int8.c). Bad names fail
 * with INVALID_ARG; where the CPU lacks AVX512_VNNI, "int8" fails with
 * UNSUPPORTED naming the need. */
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include <math.h>
#include <stdbool.h>
#include <string.h>

static const char *const DIRS[] = {"tests/fixtures/quant_llama_q4g64_f16",
                                   "tests/fixtures/quant_qwen3_q8g64_bf16",
                                   "tests/fixtures/quant_llama_mxfp4"};

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
    int32_t ids[40];
    for (int i = 0; i < 40; i++)
        ids[i] = (int32_t)((i * 7919 + 13) % V);
    bool ok = nmlx_session_eval(s, ids, 40, 0) == NMLX_OK;
    if (ok) memcpy(out, nmlx_session_logits(s), (size_t)V * sizeof(float));
    nmlx_session_free(s);
    return ok;
}

/* precision "f32", one token at a time after the prompt: each step's logits
 * against greedy_logits.bin */
static void test_f32_decode(const char *rel) {
    char dir[4096], p[4200];
    snprintf(dir, sizeof dir, "%s/%s", test_src_dir(), rel);
    snprintf(p, sizeof p, "%s/expected.json", dir);
    json_t *root = json_load_file(p, 0, NULL);
    EXPECT(root, "%s: expected.json", rel);
    if (!root) return;
    json_t *prompt = json_object_get(root, "prompt_ids"),
           *greedy = json_object_get(root, "greedy_ids");
    const size_t T = json_array_size(prompt), G = json_array_size(greedy);
    int32_t *ids = malloc((T + 1) * sizeof *ids), *want = malloc((G + 1) * sizeof *want);
    for (size_t i = 0; i < T; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    for (size_t i = 0; i < G; i++)
        want[i] = (int32_t)json_integer_value(json_array_get(greedy, i));
    json_decref(root);
    nmlx_status st;
    nmlx_model *m = load(dir, "f32", &st);
    nmlx_session *s = NULL;
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_dtype = "f32"; /* the default cache of a quantized checkpoint is half precision */
    EXPECT(m && nmlx_session_create(m, &sp, &s) == NMLX_OK, "%s: load: %s", rel, nmlx_last_error());
    const int64_t V = m ? nmlx_model_vocab_size(m) : 0;
    float *ref = V ? malloc(G * (size_t)V * sizeof(float)) : NULL;
    snprintf(p, sizeof p, "%s/greedy_logits.bin", dir);
    FILE *f = fopen(p, "rb");
    const bool have = f && ref && fread(ref, sizeof(float), G * (size_t)V, f) == G * (size_t)V;
    if (f) fclose(f);
    EXPECT(have, "%s: greedy_logits.bin", rel);
    if (s && have && nmlx_session_eval(s, ids, T, 0) == NMLX_OK) {
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
    free(ids), free(want), free(ref);
}

/* max|diff| / range of f32's logits between precision `precision` and "f32"
 * on the 40-token prompt; NAN when either model fails to load or run (a
 * test failure). */
static double vs_f32(const char *dir, const char *precision) {
    nmlx_status st;
    nmlx_model *m = load(dir, precision, &st), *ref = load(dir, "f32", &st);
    EXPECT(m && ref, "%s: load: %s", dir, nmlx_last_error());
    double rel = NAN;
    if (m && ref) {
        int64_t V = nmlx_model_vocab_size(ref);
        float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
        bool ok = prompt_logits(ref, a, V) && prompt_logits(m, b, V);
        EXPECT(ok, "%s: eval", dir);
        if (ok) rel = test_diff_over_range(b, a, V);
        free(a), free(b);
    }
    nmlx_model_free(m);
    nmlx_model_free(ref);
    return rel;
}

int main(void) {
    nmlx_status st;
    for (size_t d = 0; d < sizeof DIRS / sizeof DIRS[0]; d++)
        test_f32_decode(DIRS[d]);
    nmlx_model *bad = load(DIRS[0], "fp7", &st);
    EXPECT(!bad && st == NMLX_ERR_INVALID_ARG && strstr(nmlx_last_error(), "fp7"),
           "precision fp7: status %d, '%s'", (int)st, nmlx_last_error());
    nmlx_model *probe = load(DIRS[0], "int8", &st);
    if (!probe) {
        EXPECT(st == NMLX_ERR_UNSUPPORTED && strstr(nmlx_last_error(), "AVX512_VNNI"),
               "int8 refused: status %d, '%s'", (int)st, nmlx_last_error());
        printf("precision int8: not supported on this CPU (%s)\n", nmlx_last_error());
        return test_summary();
    }
    nmlx_model_free(probe);
    for (size_t d = 0; d < sizeof DIRS / sizeof DIRS[0]; d++) {
        double rel = vs_f32(DIRS[d], NULL);
        if (isnan(rel)) continue;
        printf("%-40s default vs f32: max|diff| / range %.2e\n", DIRS[d], rel);
        EXPECT(rel < 1e-3, "%s: default logits %.3g of the range from f32", DIRS[d], rel);
    }
    for (size_t d = 0; d < sizeof DIRS / sizeof DIRS[0]; d++) {
        double rel = vs_f32(DIRS[d], "int8");
        if (isnan(rel)) continue;
        printf("%-40s int8 vs f32: max|diff| / range %.2e\n", DIRS[d], rel);
        EXPECT(rel > 0, "%s: int8 gave the f32 logits: the int8 path was not taken", DIRS[d]);
        EXPECT(rel < 5e-2, "%s: int8 logits %.3g of the range away from f32", DIRS[d], rel);
    }
    return test_summary();
}
