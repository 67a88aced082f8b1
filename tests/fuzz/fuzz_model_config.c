/* libFuzzer harness: the input is a config.json placed beside a real
 * fixture's weights (byte 0 picks the fixture, the rest is the file). The
 * load must fail cleanly, or give a model that evaluates a few ids. Needs
 * the whole library (build.sh builds it with NMLX_FUZZ_FULL=1). */
#define _XOPEN_SOURCE 700 /* realpath */
#include "fuzz_util.h"

#include <sys/stat.h>

static const char *const FIXTURES[] = {"qwen3", "llama3_tied", "gemma3_text", "phi3_longrope",
                                       "ministral3_yarn", "quant_llama_q4g64_f16", "mistral_window",
                                       "smollm3", "llama4_mm"};
enum { N_FX = sizeof FIXTURES / sizeof FIXTURES[0] };
static char dirs[N_FX][256];

/* the links and folders setup made; fuzz_util then removes the scratch
 * folder (each ctest replay used to leave one behind in /tmp) */
static void cleanup(void) {
    char p[sizeof dirs + 32]; /* gcc bounds a dirs[i] argument by the whole array */
    for (size_t i = 0; i < N_FX; i++) {
        snprintf(p, sizeof p, "%s/model.safetensors", dirs[i]);
        unlink(p);
        rmdir(dirs[i]);
    }
}

static void setup(void) {
    const char *root = getenv("NMLX_FIXTURES_DIR");
    if (!root) root = "tests/fixtures";
    for (size_t i = 0; i < N_FX; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/m%zu", fuzz_dir(), i);
        mkdir(dirs[i], 0700);
        char src[512], dst[512];
        snprintf(src, sizeof src, "%s/%s/model.safetensors", root, FIXTURES[i]);
        char *abs = realpath(src, NULL);
        if (!abs) {
            fprintf(stderr, "fuzz_model_config: %s missing (run from the repository root)\n", src);
            abort();
        }
        snprintf(dst, sizeof dst, "%s/model.safetensors", dirs[i]);
        if (symlink(abs, dst) != 0) abort();
        free(abs);
    }
    atexit(cleanup); /* registered after fuzz_util's: runs first */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dirs[0][0]) setup();
    if (size < 1) return 0;
    const char *dir = dirs[data[0] % N_FX];
    char path[300];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite(data + 1, 1, size - 1, f);
    fclose(f);
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    nmlx_model *m = NULL;
    nmlx_status st = nmlx_model_load(dir, &mp, &m);
    fuzz_expect_error(st);
    unlink(path);
    if (st != NMLX_OK) return 0;
    nmlx_session *s = NULL;
    if (nmlx_session_create(m, NULL, &s) == NMLX_OK) {
        int32_t V = nmlx_model_vocab_size(m);
        int32_t ids[3] = {0, V / 2, V - 1};
        fuzz_expect_error(nmlx_session_eval(s, ids, 3, 1));
        nmlx_session_free(s);
    }
    nmlx_model_free(m);
    return 0;
}
