/* Part of the emulated-device checks (test_device_emu.c, test_moe_quant.c):
 * a checkpoint run at the family level (build, state, forward, batched
 * forward) on the CPU backend and on emu (device_emu.h), compared bit for
 * bit, with emu's violations counted. See test_device_emu.c. */
#ifndef NMLX_TEST_EMU_CHECK_H
#define NMLX_TEST_EMU_CHECK_H

#include "device_emu.h"
#include "harness.h"
#include "quantize_model.h"
#include "shared/family.h"
#include "shared/layer_cache.h"

#include <jansson.h>
#include <string.h>

enum { N_STEPS = 6, MAX_CONTEXT = 96 };

static const nmlx_family *family_of(const nmlx_cfg *cfg) {
    const char *mt = nmlx_cfg_model_type(cfg);
    for (size_t i = 0; nmlx_families[i]; i++)
        for (size_t j = 0; nmlx_families[i]->model_types[j]; j++)
            if (!strcmp(nmlx_families[i]->model_types[j], mt)) return nmlx_families[i];
    return NULL;
}

/* Every cache of a state quantized (kv_bits), with the largest group of
 * 64/32/16/8 that fits. */
static nmlx_status quantize_caches(const nmlx_family *f, void *state, int kv_bits,
                                   nmlx_kv_dequant *deq) {
    nmlx_status q = NMLX_OK;
    for (int g = 64; kv_bits && g >= 8; g /= 2) {
        nmlx_kv_quant_params qp = {.bits = kv_bits, .group_size = g, .start = 0};
        int64_t n = 0;
        nmlx_layer_cache *c = f->state_caches(state, &n);
        q = NMLX_OK;
        for (int64_t i = 0; i < n && q == NMLX_OK; i++)
            q = nmlx_layer_cache_set_quant(&c[i], &qp, deq);
        if (q == NMLX_OK) break;
    }
    return q;
}

/* Prompt (all rows) then N_STEPS decode steps fed `force`, on backend be:
 * returns rows [T + N_STEPS, *V] (malloc'd) or NULL. kv_bits > 0: every
 * cache quantized, with the largest group size of 64/32/16/8 that fits. */
static float *run_on(nmlx_backend *be, const nmlx_family *f, const nmlx_cfg *cfg,
                     const nmlx_weights *ws, const int32_t *ids, int64_t T, const int32_t *force,
                     int kv_bits, int64_t *V) {
    void *arch = NULL, *state = NULL;
    nmlx_arch_info info = {0};
    nmlx_kv_dequant deq = {0};
    nmlx_load_ctx ctx = {.cfg = cfg, .weights = ws, .be = be};
    nmlx_status st = f->build(f->def, &ctx, &arch, &info);
    EXPECT(st == NMLX_OK, "%s build on %s: %s", nmlx_cfg_path(cfg), be->ops->name,
           nmlx_last_error());
    if (st == NMLX_OK) st = f->state_create(arch, be, MAX_CONTEXT, &state);
    if (st == NMLX_OK) st = quantize_caches(f, state, kv_bits, &deq);
    *V = info.vocab_size;
    float *rows = malloc((size_t)((T + N_STEPS) * *V) * sizeof(float));
    float *last = malloc((size_t)*V * sizeof(float));
    if (st == NMLX_OK) st = f->forward(arch, state, be, ids, T, last, rows, NULL);
    for (int i = 0; i < N_STEPS && st == NMLX_OK; i++)
        st = f->forward(arch, state, be, &force[i], 1, rows + (T + i) * *V, NULL, NULL);
    EXPECT(st == NMLX_OK, "%s on %s (kv_bits %d): %s", nmlx_cfg_path(cfg), be->ops->name, kv_bits,
           nmlx_last_error());
    free(last);
    if (state) f->state_free(state, be);
    nmlx_kv_dequant_free(&deq, be);
    if (arch) f->destroy(arch, be);
    if (st == NMLX_OK) return rows;
    free(rows);
    return NULL;
}

/* Batched decode: B_ROWS sessions with prompts of different lengths (the
 * fixture's cut at T, T-1, ...), then N_STEPS steps through forward_batch
 * (CUDA's rows path on emu): returns logits [N_STEPS, B_ROWS, *V] or NULL. */
enum { B_ROWS = 3 };
static float *run_batch(nmlx_backend *be, const nmlx_family *f, const nmlx_cfg *cfg,
                        const nmlx_weights *ws, const int32_t *ids, int64_t T, const int32_t *force,
                        int kv_bits, int64_t *V) {
    void *arch = NULL, *batch = NULL, *states[B_ROWS] = {NULL};
    nmlx_arch_info info = {0};
    nmlx_kv_dequant deq[B_ROWS] = {{0}};
    nmlx_load_ctx ctx = {.cfg = cfg, .weights = ws, .be = be};
    float *rows = NULL, *last = NULL;
    nmlx_status st = f->build(f->def, &ctx, &arch, &info);
    *V = info.vocab_size;
    if (st == NMLX_OK) {
        rows = malloc((size_t)(N_STEPS * B_ROWS * *V) * sizeof(float));
        last = malloc((size_t)*V * sizeof(float));
    }
    for (int b = 0; b < B_ROWS && st == NMLX_OK; b++) {
        st = f->state_create(arch, be, MAX_CONTEXT, &states[b]);
        if (st == NMLX_OK) st = quantize_caches(f, states[b], kv_bits, &deq[b]);
        if (st == NMLX_OK) st = f->forward(arch, states[b], be, ids, T - b, last, NULL, NULL);
    }
    if (st == NMLX_OK) st = f->batch_create(arch, be, B_ROWS, &batch);
    for (int i = 0; i < N_STEPS && st == NMLX_OK; i++) {
        int32_t step[B_ROWS];
        float *out[B_ROWS];
        for (int b = 0; b < B_ROWS; b++) {
            step[b] = force[(i + b) % N_STEPS];
            out[b] = rows + (size_t)((i * B_ROWS + b) * *V);
        }
        st = f->forward_batch(arch, batch, states, be, step, B_ROWS, out);
    }
    EXPECT(st == NMLX_OK, "%s batch on %s (kv_bits %d): %s", nmlx_cfg_path(cfg), be->ops->name,
           kv_bits, nmlx_last_error());
    if (batch) f->batch_free(batch, be);
    for (int b = 0; b < B_ROWS; b++) {
        if (states[b]) f->state_free(states[b], be);
        nmlx_kv_dequant_free(&deq[b], be);
    }
    if (arch) f->destroy(arch, be);
    free(last);
    if (st == NMLX_OK) return rows;
    free(rows);
    return NULL;
}

/* The checkpoint in `dir` on the CPU and on emu (test_device_emu.c's
 * contract), fed the prompt and greedy ids of `ids_dir`/expected.json;
 * qbits > 0: quantized on load (affine, group 32; MoE fixtures: stacked
 * quantized experts). `name` labels the printed lines. */
static void emu_check(nmlx_backend *cpu, const char *dir, const char *ids_dir, const char *name,
                      int kv_bits, int qbits) {
    char p[4200];
    snprintf(p, sizeof p, "%s/expected.json", ids_dir);
    json_t *root = json_load_file(p, 0, NULL);
    EXPECT(root != NULL, "%s: no expected.json", dir);
    if (!root) return;
    json_t *prompt = json_object_get(root, "prompt_ids"),
           *greedy = json_object_get(root, "greedy_ids");
    int64_t T = (int64_t)json_array_size(prompt);
    int32_t *ids = malloc((size_t)T * sizeof *ids), force[N_STEPS];
    for (int64_t i = 0; i < T; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(prompt, (size_t)i));
    for (int i = 0; i < N_STEPS; i++)
        force[i] = (int32_t)json_integer_value(json_array_get(greedy, (size_t)i));
    json_decref(root);
    nmlx_cfg *cfg = NULL;
    nmlx_weights *ws = NULL;
    snprintf(p, sizeof p, "%s/config.json", dir);
    EXPECT(nmlx_cfg_open(p, &cfg) == NMLX_OK && nmlx_weights_open_dir(dir, &ws) == NMLX_OK,
           "%s: %s", dir, nmlx_last_error());
    const nmlx_family *f = cfg ? family_of(cfg) : NULL;
    EXPECT(f != NULL, "%s: no family", dir);
    if (f && ws && qbits) {
        nmlx_weights *q = NULL;
        EXPECT(nmlx_quantize_weights_mem(ws, qbits, 32,
                                         nmlx_fused_experts_halves(nmlx_cfg_model_type(cfg)), 2,
                                         &q) == NMLX_OK,
               "%s: quantize: %s", dir, nmlx_last_error());
        nmlx_weights_close(ws);
        ws = q;
    }
    int64_t V = 0, Ve = 0;
    float *a = NULL, *b = NULL;
    nmlx_backend *emu = NULL;
    EXPECT(emu_create(cpu, &emu) == NMLX_OK, "emu backend");
    if (f && ws && emu) a = run_on(cpu, f, cfg, ws, ids, T, force, kv_bits, &V);
    if (a) b = run_on(emu, f, cfg, ws, ids, T, force, kv_bits, &Ve);
    if (a && b && V == Ve) {
        size_t n = (size_t)((T + N_STEPS) * V);
        size_t differ = 0;
        double md = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&a[i], &b[i], sizeof(float))) {
                differ++;
                md = fmax(md, fabs((double)a[i] - b[i]));
            }
        EXPECT(differ == 0, "%s kv_bits %d: %zu logits differ on emu (max |diff| %.3g)", dir,
               kv_bits, differ, md);
        printf("%-28s %s kv_bits %d  emu == cpu: %s, %ld op violations\n", name,
               qbits ? "q4-on-load" : "as stored", kv_bits, differ ? "NO" : "yes",
               emu_violations(emu));
    }
    free(a), free(b);
    a = b = NULL;
    if (f && f->forward_batch && ws && emu)
        a = run_batch(cpu, f, cfg, ws, ids, T, force, kv_bits, &V);
    if (a) b = run_batch(emu, f, cfg, ws, ids, T, force, kv_bits, &Ve);
    if (a && b && V == Ve) {
        size_t n = (size_t)(N_STEPS * B_ROWS * V), differ = 0;
        for (size_t i = 0; i < n; i++)
            differ += memcmp(&a[i], &b[i], sizeof(float)) != 0;
        EXPECT(differ == 0, "%s kv_bits %d: %zu batched logits differ on emu", dir, kv_bits,
               differ);
        printf("%-28s %s kv_bits %d  batch of %d: emu == cpu: %s\n", name,
               qbits ? "q4-on-load" : "as stored", kv_bits, B_ROWS, differ ? "NO" : "yes");
    }
    if (emu) {
        EXPECT(emu_violations(emu) == 0, "%s: %ld violations, first: %s", dir, emu_violations(emu),
               emu_first_violation(emu));
        emu_free(emu);
    }
    free(a), free(b), free(ids);
    nmlx_weights_close(ws);
    nmlx_cfg_free(cfg);
}

#endif
