/* nmlx_backend_prefill_chunk: the environment's NMLX_PREFILL_CHUNK (clamped
 * to 16..8192) over the backend's wish over the model's default; a real
 * CPU backend keeps the model's default (the prefill chunk bounds its
 * activation memory). */
#define _DEFAULT_SOURCE
#include "compute/backend.h"
#include "harness.h"

#include <stdlib.h>

int main(void) {
    unsetenv("NMLX_PREFILL_CHUNK");
    nmlx_backend fake = {0};
    EXPECT(nmlx_backend_prefill_chunk(NULL, 256) == 256, "no backend: the default");
    EXPECT(nmlx_backend_prefill_chunk(&fake, 256) == 256, "no wish: the default");
    fake.prefill_chunk = 512;
    EXPECT(nmlx_backend_prefill_chunk(&fake, 256) == 512, "the backend's wish");
    nmlx_backend *cpu = NULL;
    EXPECT(nmlx_backend_create("cpu", 1, &cpu) == NMLX_OK && cpu, "cpu backend");
    if (cpu) {
        EXPECT(nmlx_backend_prefill_chunk(cpu, 256) == 256, "cpu: the model's default");
        nmlx_backend_free(cpu);
    }
    const struct {
        const char *env;
        int64_t want;
    } cases[] = {{"100", 100}, {"5", 16}, {"0", 16}, {"-3", 16}, {"99999", 8192}, {"8192", 8192}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("NMLX_PREFILL_CHUNK", cases[i].env, 1);
        int64_t got = nmlx_backend_prefill_chunk(&fake, 256);
        EXPECT(got == cases[i].want, "NMLX_PREFILL_CHUNK=%s: %lld, want %lld", cases[i].env,
               (long long)got, (long long)cases[i].want);
    }
    setenv("NMLX_PREFILL_CHUNK", "", 1); /* empty: as unset */
    EXPECT(nmlx_backend_prefill_chunk(&fake, 256) == 512, "empty setting: the backend's wish");
    return test_summary();
}
