/* The device paths of the families, checked without a GPU: an emulated
 * device backend ("emu", tests/device_emu.h) keeps every buffer and prepared
 * weight in one arena that is PROT_NONE except while one of its ops runs,
 * and runs the CPU ops inside. So on this backend
 *  - a host-side read or write of a backend buffer (what would crash on
 *    CUDA) faults;
 *  - an op handed a pointer outside the arena (a weight the loader forgot to
 *    prepare, a host array) is recorded as a violation;
 *  - prepare_tensor of memory already in the arena (CUDA would copy from a
 *    device address as if it were host memory) is a violation.
 * Each fixture of the families with device paths of their own (MoE gpt_oss /
 * qwen3_moe / Llama 4 in every expert layout the fixtures have, Gemma 3n,
 * Llama 4 dense, chunked, interleaved RoPE, quantized) runs a prompt and
 * decode steps on the CPU backend and on emu: logits must be equal bit for
 * bit (the same CPU kernels on the same bytes; copies keep the weights'
 * alignment) and no violation recorded. The quantized KV cache (kv_bits 8
 * and 4, host-staged on a device backend) the same on standard fixtures,
 * and the MoE fixtures quantized on load (4-bit: quantized stacked
 * experts). Families with batched decode also run a batch of 3 sessions
 * (different positions) through forward_batch, which on emu takes CUDA's
 * rows path (rope_rows / attention_rows): equal bit for bit too.
 * gpt-oss's HF MXFP4 `_blocks` layout: test_moe_quant.c (emu_check.h).
 * What it cannot check: the CUDA kernels (tests/cuda/). */
#define _GNU_SOURCE
#include "emu_check.h"

#include <signal.h>
#include <unistd.h>

/* A fault here is most likely a host-side access to emulated device memory. */
static void on_segv(int sig) {
    static const char msg[] = "FAIL: SIGSEGV: a host-side read or write of a backend buffer "
                              "(emulated device memory is PROT_NONE outside ops)\n";
    (void)sig;
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

static void check_fixture(nmlx_backend *cpu, const char *name, int kv_bits, int qbits) {
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", test_src_dir(), name) < (int)sizeof dir)
        emu_check(cpu, dir, dir, name, kv_bits, qbits);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGSEGV, on_segv);
    nmlx_backend *cpu = NULL;
    EXPECT(nmlx_backend_cpu_create(2, &cpu) == NMLX_OK, "cpu backend");
    static const char *const fam[] = {"gpt_oss",           "qwen3_moe", "gemma3n",
                                      "llama4_text",       "llama4_mm", "llama4_mm_stacked",
                                      "llama4_text_q4g32", "qwen3",     NULL};
    for (size_t i = 0; fam[i]; i++)
        check_fixture(cpu, fam[i], 0, 0);
    static const char *const moe[] = {"gpt_oss", "qwen3_moe", "llama4_mm_stacked", NULL};
    for (size_t i = 0; moe[i]; i++)
        check_fixture(cpu, moe[i], 0, 4);
    static const char *const kv[] = {"qwen3", "qwen3_moe", "gpt_oss", "gemma3_text", NULL};
    for (size_t i = 0; kv[i]; i++) {
        check_fixture(cpu, kv[i], 8, 0);
        check_fixture(cpu, kv[i], 4, 0);
    }
    nmlx_backend_free(cpu);
    return test_summary();
}
