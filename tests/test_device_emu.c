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
 * Each fixture of the families behind NMLX_CUDA_EXPERIMENTAL (MoE gpt_oss /
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
 * First, without NMLX_CUDA_EXPERIMENTAL, the MoE and Llama 4 builds on emu
 * must be refused naming the variable.
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

/* Without NMLX_CUDA_EXPERIMENTAL a device backend refuses the family's build
 * (MoE, Llama 4; Gemma 3n is refused by model.c), naming the variable. */
static void check_refused(nmlx_backend *cpu, const char *name) {
    char dir[4096], p[4200];
    if (snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", test_src_dir(), name) >= (int)sizeof dir)
        return;
    snprintf(p, sizeof p, "%s/config.json", dir);
    nmlx_cfg *cfg = NULL;
    nmlx_weights *ws = NULL;
    nmlx_backend *emu = NULL;
    void *arch = NULL;
    nmlx_arch_info info = {0};
    if (nmlx_cfg_open(p, &cfg) == NMLX_OK && nmlx_weights_open_dir(dir, &ws) == NMLX_OK &&
        emu_create(cpu, &emu) == NMLX_OK) {
        const nmlx_family *f = family_of(cfg);
        nmlx_load_ctx ctx = {.cfg = cfg, .weights = ws, .be = emu};
        nmlx_status st = f ? f->build(f->def, &ctx, &arch, &info) : NMLX_ERR_INVALID_ARG;
        EXPECT(st == NMLX_ERR_UNSUPPORTED && strstr(nmlx_last_error(), "NMLX_CUDA_EXPERIMENTAL"),
               "%s on a device backend without NMLX_CUDA_EXPERIMENTAL: %s", name,
               st == NMLX_OK ? "built" : nmlx_last_error());
        if (arch) f->destroy(arch, emu);
    }
    emu_free(emu);
    nmlx_weights_close(ws);
    nmlx_cfg_free(cfg);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGSEGV, on_segv);
    nmlx_backend *cpu = NULL;
    EXPECT(nmlx_backend_cpu_create(2, &cpu) == NMLX_OK, "cpu backend");
    unsetenv("NMLX_CUDA_EXPERIMENTAL");
    check_refused(cpu, "gpt_oss");
    check_refused(cpu, "qwen3_moe");
    check_refused(cpu, "llama4_text");
    setenv("NMLX_CUDA_EXPERIMENTAL", "1", 1); /* emu is a device backend */
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
