/* The Gemma 3n family beyond the transformers fixtures (test_fixtures checks
 * the logits): every allocation of load + session + eval failing in turn
 * gives a clean error and no leak (sanitizer builds), and bad configs fail
 * with messages naming the field at fault. */
#define _POSIX_C_SOURCE 200809L

#include "common.h"
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_fault_injection(const char *name) {
    const int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    test_fixture_fault_sweep(name, ids, 6);
}

/* A copy of the main fixture with one config field replaced (JSON text);
 * loading must fail with a message containing `want`. */
static void expect_bad_config(const char *tmp, const char *key, const char *json_value,
                              const char *want) {
    char src[512], cmd[2048], path[1024];
    snprintf(src, sizeof src, "%s/tests/fixtures/gemma3n", test_src_dir());
    snprintf(cmd, sizeof cmd, "rm -rf '%s/m' && mkdir -p '%s/m' && cp '%s'/* '%s/m/'", tmp, tmp,
             src, tmp);
    EXPECT(system(cmd) == 0, "copy the fixture");
    snprintf(path, sizeof path, "%s/m/config.json", tmp);
    json_t *cfg = json_load_file(path, 0, NULL);
    json_t *v = json_loads(json_value, JSON_DECODE_ANY, NULL);
    EXPECT(cfg && v, "config and value parse");
    if (!cfg || !v) return;
    json_object_set_new(cfg, key, v);
    json_dump_file(cfg, path, 0);
    json_decref(cfg);
    snprintf(path, sizeof path, "%s/m", tmp);
    nmlx_model_params mp = nmlx_model_default_params();
    nmlx_model *m = NULL;
    nmlx_status st = nmlx_model_load(path, &mp, &m);
    EXPECT(st != NMLX_OK && strstr(nmlx_last_error(), want), "%s = %s: got '%s', want '%s'", key,
           json_value, nmlx_last_error(), want);
    printf("  bad %-28s -> \"%s\"\n", key, nmlx_last_error());
    nmlx_model_free(m);
}

int main(void) {
    test_fault_injection("gemma3n");
    char tmp[] = "/tmp/nmlx_test_gemma3n_XXXXXX";
    if (!mkdtemp(tmp)) {
        EXPECT(false, "mkdtemp");
        return test_summary();
    }
    /* the shared full layer 3 has no earlier full layer */
    expect_bad_config(tmp, "layer_types",
                      "[\"sliding_attention\", \"sliding_attention\", \"full_attention\", "
                      "\"full_attention\"]",
                      "no earlier full_attention layer");
    expect_bad_config(tmp, "altup_num_inputs", "3", "altup_projections.1");
    expect_bad_config(tmp, "altup_active_idx", "2", "altup_active_idx");
    expect_bad_config(tmp, "intermediate_size", "[64, 64, 64]", "intermediate_size");
    expect_bad_config(tmp, "activation_sparsity_pattern", "[0.95, 1.5, 0, 0]",
                      "activation_sparsity_pattern[1]");
    expect_bad_config(tmp, "num_kv_shared_layers", "7", "num_kv_shared_layers");
    expect_bad_config(tmp, "laurel_rank", "5", "laurel.linear_left");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    EXPECT(system(cmd) == 0, "cleanup");
    return test_summary();
}
