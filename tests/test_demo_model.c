/* Real-text fidelity of the built-in demo model (models/demo, trained by
 * tools/demo-model/train.py). fidelity.json holds what transformers computed
 * at training time on the saved bf16 weights (f32 compute): the token ids of
 * each prompt, its greedy continuation (ids and text) and the per-token
 * log-probabilities of a held-out paragraph. nmlx must tokenize the same,
 * reproduce every greedy continuation exactly (ids and decoded text), and
 * give the paragraph's perplexity within 1e-3 relative. The 4-bit copy
 * (nmlx_convert, group 64) is reported, and bounded loosely: it is a
 * different model, so its figure is information, not an identity. */
#include "harness.h"
#include "nmlx.h"

#include <jansson.h>
#include <string.h>
#include <unistd.h>

#define PPL_REL_TOL 1e-3
#define Q4_PPL_REL_BOUND 0.25 /* 4-bit perplexity within 25% of bf16 */

static int32_t *ids_of(json_t *arr, size_t *n) {
    *n = json_array_size(arr);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    for (size_t i = 0; v && i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

typedef struct {
    int32_t ids[256];
    size_t n;
} collected;

static int collect(void *user, int32_t id, const char *text, size_t len) {
    (void)text, (void)len;
    collected *c = user;
    if (c->n < 256) c->ids[c->n++] = id;
    return 0;
}

/* Perplexity of ids[1..n) given the preceding ids (one prefill pass). */
static double perplexity(nmlx_model *m, const int32_t *ids, size_t n, const double *ref_lp,
                         double *max_lp_diff) {
    nmlx_session *s = NULL;
    double nll = NAN;
    *max_lp_diff = 0;
    if (nmlx_session_create(m, NULL, &s) != NMLX_OK) return NAN;
    if (nmlx_session_eval(s, ids, n, 1) == NMLX_OK) {
        size_t rows = 0;
        const float *all = nmlx_session_all_logits(s, &rows);
        int32_t V = nmlx_model_vocab_size(m);
        double sum = 0;
        for (size_t t = 0; all && t + 1 < n && t < rows; t++) {
            const float *row = all + t * (size_t)V;
            double mx = row[0], z = 0;
            for (int32_t j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
            for (int32_t j = 0; j < V; j++) z += exp(row[j] - mx);
            double lp = row[ids[t + 1]] - mx - log(z);
            sum -= lp;
            if (ref_lp) *max_lp_diff = fmax(*max_lp_diff, fabs(lp - ref_lp[t]));
        }
        if (all && rows == n) nll = sum / (double)(n - 1);
    }
    nmlx_session_free(s);
    return exp(nll);
}

static void check_prompt(nmlx_model *m, json_t *p) {
    const nmlx_tokenizer *tok = nmlx_model_tokenizer(m);
    const char *text = json_string_value(json_object_get(p, "prompt"));
    const char *want_text = json_string_value(json_object_get(p, "greedy_text"));
    size_t n_prompt = 0, n_want = 0, n_got = 0;
    int32_t *prompt = ids_of(json_object_get(p, "prompt_ids"), &n_prompt);
    int32_t *want = ids_of(json_object_get(p, "greedy_ids"), &n_want);
    int32_t *got = NULL;
    EXPECT(text && want_text && prompt && want && n_prompt > 0 && n_want > 0 && n_want <= 256,
           "fidelity.json: malformed prompt entry");
    if (!text || !want_text || !prompt || !want || !n_prompt || !n_want || n_want > 256) goto done;

    EXPECT(nmlx_tokenize(tok, text, strlen(text), 0, &got, &n_got) == NMLX_OK, "%s", nmlx_last_error());
    EXPECT(same_ids(got, n_got, prompt, n_prompt), "tokenizing %s: ids differ from HF tokenizers", text);

    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, NULL, &s) == NMLX_OK, "%s", nmlx_last_error());
    collected c = {.n = 0};
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = (int)n_want;
    gp.ignore_eos = 1;
    gp.sampler = nmlx_sampler_default_params(); /* greedy */
    gp.on_token = collect;
    gp.user = &c;
    EXPECT(s && nmlx_generate(s, prompt, n_prompt, &gp, NULL) == NMLX_OK, "%s", nmlx_last_error());
    size_t first_diff = 0;
    while (first_diff < c.n && first_diff < n_want && c.ids[first_diff] == want[first_diff]) first_diff++;
    EXPECT(same_ids(c.ids, c.n, want, n_want), "greedy continuation of %s: first difference at step %zu of %zu",
           text, first_diff, n_want);
    char *out = NULL;
    size_t out_len = 0;
    EXPECT(nmlx_detokenize(tok, c.ids, c.n, 0, &out, &out_len) == NMLX_OK, "%s", nmlx_last_error());
    EXPECT(out && strcmp(out, want_text) == 0, "greedy text of %s:\n  got  %s\n  want %s", text, out ? out : "",
           want_text);
    char shown[40];
    snprintf(shown, sizeof shown, "%s", text);
    for (char *q = shown; *q; q++) *q = *q == '\n' ? ' ' : *q;
    printf("greedy [%s] -> %s\n", shown, out ? out : "");
    nmlx_free(out);
    nmlx_session_free(s);
done:
    nmlx_free(got);
    free(prompt);
    free(want);
}

int main(void) {
    const char *src = getenv("NMLX_SOURCE_DIR");
    char dir[4096], path[4200], q4[4096];
    snprintf(dir, sizeof dir, "%s/models/demo", src ? src : ".");
    snprintf(path, sizeof path, "%s/fidelity.json", dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    EXPECT(root != NULL, "%s: %s", path, err.text);
    nmlx_model *m = NULL;
    EXPECT(nmlx_model_load(dir, NULL, &m) == NMLX_OK, "%s", nmlx_last_error());
    if (!root || !m) goto done;

    json_t *prompts = json_object_get(root, "prompts");
    EXPECT(json_array_size(prompts) >= 3, "fidelity.json: fewer than 3 prompts");
    for (size_t i = 0; i < json_array_size(prompts); i++) check_prompt(m, json_array_get(prompts, i));

    json_t *held = json_object_get(root, "held_out");
    size_t n = 0, n_tok = 0;
    int32_t *ids = ids_of(json_object_get(held, "ids"), &n), *tok_ids = NULL;
    json_t *lps = json_object_get(held, "logprobs");
    const char *held_text = json_string_value(json_object_get(held, "text"));
    double ref_ppl = json_number_value(json_object_get(held, "perplexity"));
    EXPECT(ids && n > 16 && json_array_size(lps) == n - 1 && held_text && ref_ppl > 1,
           "fidelity.json: malformed held_out");
    if (!ids || n <= 16 || json_array_size(lps) != n - 1 || !held_text || !(ref_ppl > 1)) {
        free(ids);
        goto done;
    }
    EXPECT(nmlx_tokenize(nmlx_model_tokenizer(m), held_text, strlen(held_text), 0, &tok_ids, &n_tok) == NMLX_OK,
           "%s", nmlx_last_error());
    EXPECT(same_ids(tok_ids, n_tok, ids, n), "held-out paragraph: tokenization differs from HF tokenizers");
    nmlx_free(tok_ids);
    double *ref_lp = malloc((n - 1) * sizeof *ref_lp);
    for (size_t i = 0; ref_lp && i + 1 < n; i++) ref_lp[i] = json_number_value(json_array_get(lps, i));
    double lp_diff = 0;
    double ppl = perplexity(m, ids, n, ref_lp, &lp_diff);
    double rel = fabs(ppl - ref_ppl) / ref_ppl;
    printf("held-out paragraph (%zu tokens): perplexity bf16 %.5f, transformers %.5f, rel diff %.2e, "
           "max |log-prob diff| %.2e\n", n, ppl, ref_ppl, rel, lp_diff);
    EXPECT(rel <= PPL_REL_TOL, "bf16 perplexity %.6f vs transformers %.6f: rel diff %.3e > %.0e", ppl, ref_ppl,
           rel, PPL_REL_TOL);

    /* The 4-bit copy, as `nmlx convert --bits 4` writes it. */
    snprintf(q4, sizeof q4, "%s/nmlx-demo-q4-%ld", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (long)getpid());
    nmlx_convert_params cp = nmlx_convert_default_params();
    cp.bits = 4;
    cp.group_size = 64;
    EXPECT(nmlx_convert(dir, q4, &cp) == NMLX_OK, "%s", nmlx_last_error());
    nmlx_model *m4 = NULL;
    EXPECT(nmlx_model_load(q4, NULL, &m4) == NMLX_OK, "%s", nmlx_last_error());
    if (m4) {
        double ppl4 = perplexity(m4, ids, n, NULL, &lp_diff);
        printf("held-out paragraph: perplexity 4-bit g64 %.5f (%+.2f%% vs bf16)\n", ppl4, 100 * (ppl4 / ppl - 1));
        EXPECT(fabs(ppl4 / ppl - 1) <= Q4_PPL_REL_BOUND, "4-bit perplexity %.4f vs bf16 %.4f", ppl4, ppl);
        nmlx_model_free(m4);
    }
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", q4);
    EXPECT(system(cmd) == 0, "could not remove %s", q4);
    free(ref_lp);
    free(ids);
done:
    nmlx_model_free(m);
    json_decref(root);
    return test_summary();
}
