/* Part of test_cuda_fixtures.c (after model_util.h, which has test_argmax, and
 * N_GREEDY): the quantized KV cache on CUDA.
 *  - check_kv: kv_bits 8 and 4 on cuda (the
 *    quantized cache staged through the host, layer_cache.c) against the
 *    same kv_bits on the CPU, prompt + N_GREEDY decode steps fed the
 *    fixture's greedy ids: max|diff| <= 2e-2 (8-bit) / 1e-1 (4-bit) of
 *    max|logit| (the codes are rounded from k/v that differ by rounding
 *    between the backends), argmax agreement printed; and with
 *    quantized_kv_start = prompt length the prompt's logits equal the
 *    full-precision cuda run (1e-6). */
#ifndef NMLX_TEST_CUDA_KV_CHECKS_H
#define NMLX_TEST_CUDA_KV_CHECKS_H

static bool load_on(const char *path, const char *device, nmlx_model **m) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.no_tokenizer = 1;
    mp.device = device;
    *m = NULL;
    return nmlx_model_load(path, &mp, m) == NMLX_OK;
}

/* Prompt (all rows kept) then N_GREEDY steps fed `force`: rows [(T + N_GREEDY), V]. */
static bool kv_run(nmlx_model *m, const int32_t *ids, size_t T, const int32_t *force, int bits,
                   int group, int64_t start, float *rows) {
    int32_t V = nmlx_model_vocab_size(m);
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_bits = bits;
    sp.kv_group_size = group;
    sp.quantized_kv_start = start;
    sp.kv_dtype = "f32";
    nmlx_session *s = NULL;
    if (nmlx_session_create(m, &sp, &s) != NMLX_OK) return false;
    nmlx_status st = nmlx_session_eval(s, ids, T, 1);
    size_t n = 0;
    const float *all = st == NMLX_OK ? nmlx_session_all_logits(s, &n) : NULL;
    if (all && n == T) memcpy(rows, all, T * (size_t)V * sizeof(float));
    for (int i = 0; i < N_GREEDY && st == NMLX_OK; i++) {
        st = nmlx_session_eval(s, &force[i], 1, 0);
        if (st == NMLX_OK)
            memcpy(rows + (T + (size_t)i) * V, nmlx_session_logits(s), (size_t)V * sizeof(float));
    }
    EXPECT(st == NMLX_OK && all && n == T, "kv_bits %d g%d: %s", bits, group, nmlx_last_error());
    nmlx_session_free(s);
    return st == NMLX_OK;
}

static void check_kv(const char *dir, const char *name) {
    char path[4096], p[4200];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return;
    snprintf(p, sizeof p, "%s/expected.json", path);
    json_t *root = json_load_file(p, 0, NULL);
    if (!root) return;
    json_t *prompt = json_object_get(root, "prompt_ids"),
           *greedy = json_object_get(root, "greedy_ids");
    size_t T = json_array_size(prompt);
    int32_t *ids = malloc((T + 1) * sizeof *ids), force[N_GREEDY];
    for (size_t i = 0; i < T; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    for (int i = 0; i < N_GREEDY; i++)
        force[i] = (int32_t)json_integer_value(json_array_get(greedy, (size_t)i));
    json_decref(root);
    nmlx_model *cpu = NULL, *gpu = NULL;
    EXPECT(load_on(path, "cpu", &cpu) && load_on(path, "cuda", &gpu), "%s: load: %s", path,
           nmlx_last_error());
    if (!cpu || !gpu) goto done;
    int32_t V = nmlx_model_vocab_size(cpu);
    size_t R = T + N_GREEDY;
    float *a = malloc(R * (size_t)V * sizeof(float)), *b = malloc(R * (size_t)V * sizeof(float));
    static const int groups[] = {64, 32, 16, 8};
    for (int bits = 8; bits >= 4; bits -= 4) {
        int g = -1;
        for (int gi = 0; gi < 4 && g < 0; gi++) /* the first group size the head_dim takes */
            if (kv_run(cpu, ids, T, force, bits, groups[gi], 0, a)) g = groups[gi];
        if (g < 0) {
            printf("%-36s kv_bits %d: no group size fits (skipped)\n", path, bits);
            continue;
        }
        if (!kv_run(gpu, ids, T, force, bits, g, 0, b)) continue;
        double md = 0, mr = 0;
        size_t agree = 0;
        for (size_t r = 0; r < R; r++) {
            for (int32_t j = 0; j < V; j++) {
                md = fmax(md, fabs((double)a[r * V + j] - b[r * V + j]));
                mr = fmax(mr, fabs((double)a[r * V + j]));
            }
            agree += test_argmax(a + r * V, V) == test_argmax(b + r * V, V);
        }
        double tol = bits == 8 ? 2e-2 : 1e-1;
        printf("%-36s kv_bits %d g%-3d cuda vs cpu  max|diff|/max|logit| %.2e  argmax %zu/%zu\n",
               path, bits, g, md / mr, agree, R);
        EXPECT(md / mr <= tol, "%s kv_bits %d: cuda vs cpu %.3e > %.0e", path, bits, md / mr, tol);
        if (bits == 8 && kv_run(gpu, ids, T, force, 0, 64, 0, a) &&
            kv_run(gpu, ids, T, force, 8, g, (int64_t)T, b)) {
            md = 0, mr = 0;
            for (size_t i = 0; i < T * (size_t)V; i++) {
                md = fmax(md, fabs((double)a[i] - b[i]));
                mr = fmax(mr, fabs((double)a[i]));
            }
            EXPECT(md <= 1e-6 * mr, "%s: prompt logits changed before quantized_kv_start (%.2e)",
                   path, md / mr);
        }
    }
    free(a);
    free(b);
done:
    nmlx_model_free(cpu);
    nmlx_model_free(gpu);
    free(ids);
}

#endif
