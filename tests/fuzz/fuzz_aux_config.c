/* libFuzzer harness: the side files a load reads besides config.json. Byte
 * 0 picks the file (mod 3): generation_config.json beside the qwen3
 * fixture's config and weights (nmlx_model_load), or tokenizer_config.json /
 * special_tokens_map.json beside a slim tokenizer.json (nmlx_tokenizer_load);
 * the rest is its contents. The load must fail cleanly, or give eos/bos ids
 * inside the vocabulary (-1 = none for the tokenizer). */
#define _XOPEN_SOURCE 700 /* realpath */
#include "fuzz_util.h"

#include <sys/stat.h>

static char model_dir[256], tok_dir[256];

static void link_into(const char *src, const char *dir, const char *name) {
    char *abs = realpath(src, NULL), dst[512];
    if (!abs) {
        fprintf(stderr, "fuzz_aux_config: %s missing (run from the repository root)\n", src);
        abort();
    }
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    if (symlink(abs, dst) != 0) abort();
    free(abs);
}

static void cleanup(void) {
    char p[512];
    const char *const links[4][2] = {{model_dir, "config.json"},
                                     {model_dir, "model.safetensors"},
                                     {tok_dir, "tokenizer.json"},
                                     {NULL, NULL}};
    for (int i = 0; links[i][0]; i++) {
        snprintf(p, sizeof p, "%s/%s", links[i][0], links[i][1]);
        unlink(p);
    }
    rmdir(model_dir);
    rmdir(tok_dir);
}

static void setup(void) {
    const char *root = getenv("NMLX_FIXTURES_DIR");
    if (!root) root = "tests/fixtures";
    char src[512];
    snprintf(model_dir, sizeof model_dir, "%s/model", fuzz_dir());
    snprintf(tok_dir, sizeof tok_dir, "%s/tok", fuzz_dir());
    mkdir(model_dir, 0700);
    mkdir(tok_dir, 0700);
    snprintf(src, sizeof src, "%s/qwen3/config.json", root);
    link_into(src, model_dir, "config.json");
    snprintf(src, sizeof src, "%s/qwen3/model.safetensors", root);
    link_into(src, model_dir, "model.safetensors");
    link_into("tests/fuzz/corpus/tokenizer_load/qwen3.json", tok_dir, "tokenizer.json");
    atexit(cleanup); /* runs before fuzz_util's removal of the scratch folder */
}

static void write_file(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model_dir[0]) setup();
    if (size < 1) return 0;
    static const char *const names[3] = {"generation_config.json", "tokenizer_config.json",
                                         "special_tokens_map.json"};
    int which = data[0] % 3;
    char path[300];
    snprintf(path, sizeof path, "%s/%s", which ? tok_dir : model_dir, names[which]);
    write_file(path, data + 1, size - 1);
    if (which == 0) {
        nmlx_model_params mp = nmlx_model_default_params();
        mp.n_threads = 1;
        nmlx_model *m = NULL;
        nmlx_status st = nmlx_model_load(model_dir, &mp, &m);
        fuzz_expect_error(st);
        if (st == NMLX_OK) {
            const int32_t *eos = NULL;
            size_t n = nmlx_model_eos_ids(m, &eos);
            for (size_t i = 0; i < n; i++)
                if (eos[i] < 0 || eos[i] >= nmlx_model_vocab_size(m)) __builtin_trap();
            nmlx_sampler_params sp = nmlx_model_sampler_params(m);
            if (!(sp.temperature >= 0) || !(sp.top_p >= 0 && sp.top_p <= 1)) __builtin_trap();
            nmlx_model_free(m);
        } else if (m) {
            __builtin_trap();
        }
    } else {
        nmlx_tokenizer *t = NULL;
        nmlx_status st = nmlx_tokenizer_load(tok_dir, &t);
        fuzz_expect_error(st);
        if (st == NMLX_OK) {
            int32_t V = nmlx_tokenizer_vocab_size(t);
            int32_t b = nmlx_tokenizer_bos_id(t), e = nmlx_tokenizer_eos_id(t);
            if (b < -1 || b >= V || e < -1 || e >= V) __builtin_trap();
            int32_t *ids = NULL;
            size_t n = 0;
            fuzz_expect_error(nmlx_tokenize(t, "Hello, fuzz!", 12, 1, &ids, &n));
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= V) __builtin_trap();
            nmlx_free(ids);
            nmlx_tokenizer_free(t);
        } else if (t) {
            __builtin_trap();
        }
    }
    unlink(path);
    return 0;
}
