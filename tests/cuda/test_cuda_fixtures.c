/* Every fixture under tests/fixtures/ and tests/fixtures/holdout/ through the
 * CUDA backend (device "cuda"), against transformers' logits:
 *  - prefill (all rows) vs logits.bin and decode (one token at a time) vs
 *    greedy_logits.bin: float32 max|diff| <= 1e-4 x max|ref|; bf16: argmax
 *    equal at every row;
 *  - greedy generation: the 16 greedy ids of expected.json exactly.
 * Families the CUDA backend does not run yet must fail to load with
 * NMLX_ERR_UNSUPPORTED; the dense standard families, the quantized
 * fixtures (affine 3/4/8-bit, MXFP4, quantized embedding + tied head) and
 * the families with device paths of their own (MoE gpt_oss / qwen3_moe,
 * Gemma 3n, Llama 4) listed in MUST_RUN must load; kv_bits 8 / 4 on cuda
 * against kv_bits on the CPU (kv_checks.h). Quantized fixtures (expected.json has
 * "quantization") run twice: at the default precision (decode mat-vecs on
 * int16 x) within the CPU's contract for quantized checkpoints, 2e-2 x
 * max|ref| and argmax equal at every row, and at precision "f32" within
 * 1e-4. Each run prints how many add_rmsnorm_matmul calls (backend.h: the
 * residual add + norm inside the int16 decode mat-vec) ran fused and how
 * many were declined: the 4/8-bit affine fixtures of the standard decoder
 * must fuse at the default precision and never at precision "f32". Exits
 * 77 (ctest: skipped) when no GPU is usable. */
#define _POSIX_C_SOURCE 200809L

#include "compute/cuda/cuda_backend.h" /* nmlx_cuda_moe_stats */
#include "harness.h"
#include "model.h"
#include "model_util.h"
#include "nmlx.h"

#include <dirent.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>

#define F32_TOL 1e-4
#define QUANT_TOL 2e-2
#define N_GREEDY 16

static const char *const MUST_RUN[] = {"llama3_tied", "llama_untied_linear_bias", "mistral",
                                       "mistral_window", "qwen2", "qwen3", "qwen3_bf16",
                                       "llama_plain", "quant_llama_mxfp4", "quant_llama_q4g64_f16",
                                       "quant_qwen3_q3g32_bf16", "quant_qwen3_q8g64_bf16",
                                       /* families with device paths of their own */
                                       "gpt_oss", "qwen3_moe", "gemma3n", "llama4_text",
                                       "llama4_text_q4g32", "llama4_mm", "llama4_mm_stacked", NULL};

typedef struct {
    double max_diff, max_ref;
    long first_bad_argmax;
} cmp_stats;

static void cmp_row(cmp_stats *c, size_t row, const float *got, const float *ref, int32_t V) {
    for (int32_t i = 0; i < V; i++) {
        double d = fabs((double)got[i] - ref[i]), r = fabs((double)ref[i]);
        if (!(d <= c->max_diff)) c->max_diff = d; /* NaN counts as failure */
        if (r > c->max_ref) c->max_ref = r;
    }
    if (c->first_bad_argmax < 0 && test_argmax(got, V) != test_argmax(ref, V))
        c->first_bad_argmax = (long)row;
}

static bool must_run(const char *name) {
    for (size_t i = 0; MUST_RUN[i]; i++)
        if (!strcmp(MUST_RUN[i], name)) return true;
    return false;
}

static int n_run, n_refused;
static long norm_fused, norm_roped, norm_declined;
static bool norm_on; /* a quantized fixture ran where add_rmsnorm_matmul could fuse */

/* Which path the MoE experts took since (small0, sorted0) (cuda_moe.cu):
 * the gpt_oss and qwen3_moe fixtures must take the backend op: its decode
 * form (their prompts are short: <= 64 (token, expert) pairs), or its
 * prefill form under NMLX_CUDA_MOE=sorted; none under NMLX_FUSED=0 or
 * NMLX_CUDA_MOE=0 (the generic path). */
static void moe_path(const char *name, long small0, long sorted0) {
    long small, sorted;
    nmlx_cuda_moe_stats(&small, &sorted);
    small -= small0, sorted -= sorted0;
    if (strcmp(name, "gpt_oss") && strcmp(name, "qwen3_moe") && !small && !sorted) return;
    printf("%-36s moe_experts: decode form %ld calls, prefill form %ld calls%s\n", name, small,
           sorted, small || sorted ? "" : " (generic path)");
    const char *fused = getenv("NMLX_FUSED"), *moe = getenv("NMLX_CUDA_MOE");
    if ((fused && !strcmp(fused, "0")) || (moe && !strcmp(moe, "0")))
        EXPECT(!small && !sorted, "%s: moe_experts ran while turned off", name);
    else if (moe && !strcmp(moe, "sorted"))
        EXPECT(!small && sorted > 0, "%s: the MoE experts did not take the prefill form", name);
    else
        EXPECT(small > 0, "%s: the MoE experts did not take the CUDA op", name);
}

/* NMLX_TEST_FIXTURES=a,b: only the fixtures of these names (a short run of
 * some families under other settings; the count check is skipped). */
static bool selected(const char *name) {
    const char *only = getenv("NMLX_TEST_FIXTURES");
    if (!only || !*only) return true;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return true;
    return false;
}

static void check(const char *dir, const char *name, const char *precision) {
    if (!selected(name)) return;
    char path[4096], p[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(p, sizeof p, "%s/expected.json", path);
    json_error_t err;
    json_t *root = json_load_file(p, 0, &err);
    if (!root) return; /* not a fixture folder */
    json_t *prompt = json_object_get(root, "prompt_ids"),
           *greedy = json_object_get(root, "greedy_ids");
    const char *dtype = json_string_value(json_object_get(root, "dtype"));
    int32_t V = (int32_t)json_integer_value(json_object_get(root, "vocab_size"));
    size_t T = json_array_size(prompt);
    bool bf16 = dtype && !strcmp(dtype, "bfloat16");
    const bool quant = json_object_get(root, "quantization") != NULL;
    if (precision && !quant) { /* precision "f32" changes only quantized matmuls */
        json_decref(root);
        return;
    }
    const double tol = quant && !precision ? QUANT_TOL : F32_TOL;
    int32_t *ids = malloc((T + 1) * sizeof *ids), want[N_GREEDY];
    for (size_t i = 0; i < T; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    for (int i = 0; i < N_GREEDY; i++)
        want[i] = (int32_t)json_integer_value(json_array_get(greedy, (size_t)i));
    json_decref(root);
    snprintf(p, sizeof p, "%s/logits.bin", path);
    float *ref = test_read_floats(p, T * (size_t)V);
    snprintf(p, sizeof p, "%s/greedy_logits.bin", path);
    float *gref = test_read_floats(p, N_GREEDY * (size_t)V);

    nmlx_model_params mp = nmlx_model_default_params();
    mp.no_tokenizer = 1;
    mp.device = "cuda";
    mp.precision = precision;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    nmlx_status st = nmlx_model_load(path, &mp, &m);
    if (st == NMLX_ERR_UNSUPPORTED && !must_run(name)) {
        printf("%-36s refused on cuda (ok): %s\n", path, nmlx_last_error());
        n_refused++;
        EXPECT(strlen(nmlx_last_error()) > 10, "%s: refusal without a message", path);
        goto done;
    }
    EXPECT(st == NMLX_OK, "%s: load on cuda failed: %s", path, nmlx_last_error());
    EXPECT(ref != NULL, "%s: logits.bin missing or of the wrong size", path);
    if (st != NMLX_OK || !ref) goto done;
    n_run++;

    cmp_stats pre = {0, 0, -1}, dec = {0, 0, -1};
    long moe_small0, moe_sorted0;
    nmlx_cuda_moe_stats(&moe_small0, &moe_sorted0);
    st = nmlx_session_create(m, NULL, &s);
    if (st == NMLX_OK) st = nmlx_session_eval(s, ids, T, 1);
    EXPECT(st == NMLX_OK, "%s: prefill: %s", path, nmlx_last_error());
    if (st == NMLX_OK) {
        size_t rows = 0;
        const float *all = nmlx_session_all_logits(s, &rows);
        EXPECT(all && rows == T, "%s: %zu logit rows", path, rows);
        for (size_t t = 0; all && t < rows && t < T; t++)
            cmp_row(&pre, t, all + t * V, ref + t * V, V);
    }
    if (gref && st == NMLX_OK) {
        nmlx_session_reset(s);
        st = nmlx_session_eval(s, ids, T, 0);
        for (int i = 0; i < N_GREEDY && st == NMLX_OK; i++) {
            cmp_row(&dec, (size_t)i, nmlx_session_logits(s), gref + (size_t)i * V, V);
            st = nmlx_session_eval(s, &want[i], 1, 0);
        }
        EXPECT(st == NMLX_OK, "%s: decode: %s", path, nmlx_last_error());
    }
    nmlx_session_free(s);
    s = NULL;

    int32_t got[N_GREEDY];
    size_t n_got = 0;
    for (int i = 0; i < N_GREEDY; i++)
        got[i] = -1;
    st = nmlx_session_create(m, NULL, &s);
    if (st == NMLX_OK) st = test_greedy_ids(s, ids, T, got, N_GREEDY, &n_got, NULL);
    EXPECT(st == NMLX_OK, "%s: generate: %s", path, nmlx_last_error());
    bool greedy_ok = memcmp(got, want, sizeof got) == 0;
    EXPECT(greedy_ok, "%s: greedy ids differ from transformers", path);

    double rp = pre.max_ref > 0 ? pre.max_diff / pre.max_ref : 0;
    double rd = dec.max_ref > 0 ? dec.max_diff / dec.max_ref : 0;
    if (bf16) {
        EXPECT(pre.first_bad_argmax < 0 && dec.first_bad_argmax < 0,
               "%s: bf16 argmax differs (prefill row %ld, decode step %ld)", path,
               pre.first_bad_argmax, dec.first_bad_argmax);
    } else {
        EXPECT(rp <= tol, "%s: prefill max|diff|/max|ref| = %.3e > %.0e", path, rp, tol);
        EXPECT(!gref || rd <= tol, "%s: decode max|diff|/max|ref| = %.3e > %.0e", path, rd, tol);
        if (quant)
            EXPECT(pre.first_bad_argmax < 0 && dec.first_bad_argmax < 0,
                   "%s: argmax differs (prefill row %ld, decode step %ld)", path,
                   pre.first_bad_argmax, dec.first_bad_argmax);
    }
    long nf = 0, nr = 0, nd = 0; /* add_rmsnorm_matmul: fused, with rope_kv, declined */
    nmlx_cuda_norm_matmul_stats(m->be, &nf, &nr, &nd);
    norm_fused += nf, norm_roped += nr, norm_declined += nd;
    /* the standard decoder's 4/8-bit affine fixtures (quant_*_q4* / _q8*) */
    const bool int16 = !strncmp(name, "quant_", 6) && (strstr(name, "_q4") || strstr(name, "_q8"));
    const char *qg = getenv("NMLX_CUDA_QGEMV"); /* f32: the int16 mat-vec is off */
    const bool can = m->be->ops->add_rmsnorm_matmul && !(qg && !strcmp(qg, "f32"));
    /* NMLX_CUDA_RESID=1 / rope: the o and down mat-vecs add into x
     * (matmul_residual), the norms after them fold with d NULL; rope_kv
     * folds with NORM_MATMUL=1 or RESID=rope */
    const char *rs = getenv("NMLX_CUDA_RESID"), *nm = getenv("NMLX_CUDA_NORM_MATMUL");
    const bool resid = rs && (!strcmp(rs, "1") || !strcmp(rs, "rope"));
    const bool rope_fold = (nm && !strcmp(nm, "1")) || (rs && !strcmp(rs, "rope"));
    if (int16 && !precision && can) {
        EXPECT(nf > 0, "%s: add_rmsnorm_matmul never fused (%ld declined)", path, nd);
        /* no q/k norm (quant_llama_*): rope_kv folded into q/k/v as well */
        if (strstr(name, "llama") && !getenv("NMLX_CUDA_QGEMV16") && rope_fold)
            EXPECT(nr > 0, "%s: rope_kv never folded into q/k/v", path);
        if (resid) EXPECT(nmlx_cuda_resid_stats(m->be) > 0, "%s: matmul_residual never ran", path);
        norm_on = true;
    }
    if (precision) EXPECT(nf == 0, "%s: add_rmsnorm_matmul fused at precision f32", path);
    printf("%-36s %-5s cuda  prefill %.2e%s  decode %.2e%s  greedy %s  norm+matmul %ld fused, "
           "%ld with rope_kv, %ld declined\n",
           path,
           bf16        ? "bf16"
           : precision ? "f32 (precision f32)"
                       : "f32",
           rp, pre.first_bad_argmax < 0 ? "" : " ARGMAX-MISMATCH", rd,
           dec.first_bad_argmax < 0 ? "" : " ARGMAX-MISMATCH", greedy_ok ? "ok" : "MISMATCH", nf,
           nr, nd);
    moe_path(name, moe_small0, moe_sorted0);
done:
    nmlx_session_free(s);
    nmlx_model_free(m);
    free(ids);
    free(ref);
    free(gref);
}

#include "kv_checks.h" /* experimental paths: refusals, kv_bits on cuda vs the CPU */

/* Standard families (the quantized KV cache is theirs): dense, MoE, sliding. */
static const char *const KV_FIXTURES[] = {"qwen3",     "llama3_tied", "mistral", "gemma3_text",
                                          "qwen3_moe", "gpt_oss",     NULL};

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_dir(const char *dir, const char *precision) {
    DIR *d = opendir(dir);
    if (!d) return;
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);
    for (size_t i = 0; i < n; i++) {
        check(dir, names[i], precision);
        free(names[i]);
    }
}

int main(void) {
    if (test_no_cuda_device()) return 77; /* skip, not fail */
    char dir[4096];
    for (int f32 = 0; f32 < 2; f32++) {
        const char *precision = f32 ? "f32" : NULL;
        snprintf(dir, sizeof dir, "%s/tests/fixtures", test_src_dir());
        run_dir(dir, precision);
        snprintf(dir, sizeof dir, "%s/tests/fixtures/holdout", test_src_dir());
        run_dir(dir, precision);
    }
    printf("%d fixtures ran on cuda, %d refused as unsupported; add_rmsnorm_matmul %ld fused "
           "(%ld with rope_kv), %ld declined\n",
           n_run, n_refused, norm_fused, norm_roped, norm_declined);
    EXPECT(!norm_on || norm_fused > 0, "add_rmsnorm_matmul never fused on any fixture");
    if (getenv("NMLX_TEST_FIXTURES")) return test_summary(); /* a selection */
    EXPECT(n_run >= 19, "only %d fixtures ran on cuda", n_run);
    snprintf(dir, sizeof dir, "%s/tests/fixtures", test_src_dir());
    for (size_t i = 0; KV_FIXTURES[i]; i++)
        check_kv(dir, KV_FIXTURES[i]);
    return test_summary();
}
