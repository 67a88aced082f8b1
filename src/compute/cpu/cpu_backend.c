/* CPU backend: creation, kernel-set choice (cpuid + NMLX_CPU), host memory
 * ops and the op table. The compute ops live in cpu_ops.c and
 * cpu_attention.c; kernels in kernels_*.c. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/cpu/cpu_internal.h"
#if NMLX_HAVE_CUDA
#include "compute/cuda/cuda_backend.h"
#endif
#include "compute/cpu/quant_kernels.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* 64-byte aligned, zeroed. The raw pointer is kept just before the aligned
 * block so free can find it; nmlx_malloc keeps fault injection working. */
static void *cpu_alloc(nmlx_backend *be, size_t bytes) {
    (void)be;
    if (bytes > SIZE_MAX - 128) return NULL;
    char *raw = nmlx_malloc(bytes + 64 + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63;
    memcpy((char *)a - sizeof(void *), &raw, sizeof raw);
    memset((void *)a, 0, bytes);
    return (void *)a;
}

static void cpu_free(nmlx_backend *be, void *ptr) {
    (void)be;
    if (!ptr) return;
    void *raw;
    memcpy(&raw, (char *)ptr - sizeof(void *), sizeof raw);
    free(raw);
}

static void cpu_copy(nmlx_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}

static void cpu_sync(nmlx_backend *be) { (void)be; }

/* Host memory is what the CPU computes on: the mmapped tensor as it is. */
static nmlx_status cpu_prepare_tensor(nmlx_backend *be, const nmlx_tensor *t,
                                      const nmlx_tensor **out) {
    (void)be;
    *out = t;
    return NMLX_OK;
}

/* The sampler's argmax (first on ties) on the logits where the LM head left
 * them: greedy decoding copies no logits (layers.h nmlx_logits_defer). */
static int32_t cpu_argmax(nmlx_backend *be, const float *x, int64_t n) {
    (void)be;
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

static const nmlx_backend_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .argmax = cpu_argmax,
    .prepare_tensor = cpu_prepare_tensor,
    .matmul = nmlx_cpu_matmul,
    .matmul_multi = nmlx_cpu_matmul_multi,
    .embed = nmlx_cpu_embed,
    .rmsnorm = nmlx_cpu_rmsnorm,
    .rope = nmlx_cpu_rope,
    .attention = nmlx_cpu_attention,
    .rope_rows = NULL,      /* per-row calls: the CPU's batched decode is bitwise */
    .attention_rows = NULL, /* per-row calls (each row's scratch is its session's) */
    .add_rmsnorm = nmlx_cpu_add_rmsnorm,
    .rope_kv = nmlx_cpu_rope_kv,
    .gate_up_act = nmlx_cpu_gate_up_act,
    .act_mul = nmlx_cpu_act_mul,
    .act = nmlx_cpu_act,
    .swiglu_clipped = nmlx_cpu_swiglu_clipped,
    .add = nmlx_cpu_add,
    .scale = nmlx_cpu_scale,
    .softmax = nmlx_cpu_softmax,
    .gaussian_topk = nmlx_cpu_gaussian_topk,
    .rms_match = nmlx_cpu_rms_match,
    .mul_rows = nmlx_cpu_mul_rows,
    .altup_predict = nmlx_cpu_altup_predict,
    .altup_correct = nmlx_cpu_altup_correct,
    .rope_interleaved = NULL, /* llama4_attention.c rotates host memory directly */
};

#if NMLX_CPU_HAVE_AVX2
static bool cpu_has_avx2_fma_f16c(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    bool f16c = (c >> 29) & 1u;
    __builtin_cpu_init();
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}
#endif

#if NMLX_CPU_HAVE_AVX2
static bool cpu_has_avx512(void) {
    __builtin_cpu_init();
    return cpu_has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
}
#endif

#if NMLX_CPU_HAVE_AVX2
static bool cpu_has_avx512bf16(void) {
    __builtin_cpu_init();
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}

/* The bf16 mat-vec variant: NMLX_BF16_MATVEC=<name> (see
 * nmlx_avx512bf16_matvec_name), else the default (variant 0). */
static int bf16_matvec_variant(void) {
    const char *env = getenv("NMLX_BF16_MATVEC");
    if (env)
        for (int v = 0; v < nmlx_avx512bf16_matvec_variants(); v++)
            if (!strcmp(env, nmlx_avx512bf16_matvec_name(v))) return v;
    return 0;
}
#endif

/* Fills impl->k for the named set; false if unknown or unsupported here. */
static bool pick_kernels(const char *isa, cpu_impl *impl) {
    if (!strcmp(isa, "portable")) {
        impl->k = &nmlx_cpu_kernels_portable;
        return true;
    }
#if NMLX_CPU_HAVE_AVX2
    if (!strcmp(isa, "avx2") && cpu_has_avx2_fma_f16c()) {
        impl->k = &nmlx_cpu_kernels_avx2;
        return true;
    }
    if (!strcmp(isa, "avx512") && cpu_has_avx512()) {
        impl->own = nmlx_cpu_kernels_avx2;
        impl->own.isa = "avx512";
        impl->own.attn_flash_ok = nmlx_avx512_attn_flash_ok;
        impl->own.attn_flash = nmlx_avx512_attn_flash;
        impl->own.matmul_rows = nmlx_avx512_matmul_rows;
        impl->own.matmul_few = nmlx_avx512_matmul_few;
        impl->k = &impl->own;
        return true;
    }
    if (!strcmp(isa, "avx512bf16") && cpu_has_avx512bf16()) {
        impl->own = nmlx_cpu_kernels_avx2;
        impl->own.isa = "avx512bf16";
        impl->own.attn_flash_ok = nmlx_avx512_attn_flash_ok;
        impl->own.attn_flash = nmlx_avx512_attn_flash;
        impl->own.matmul_rows = nmlx_avx512_matmul_rows;
        impl->own.matvec_bf16 = nmlx_avx512bf16_matvec;
        impl->own.matvec_bf16_variant = bf16_matvec_variant();
        impl->own.matmul_few = nmlx_avx512bf16_matmul_few;
        impl->k = &impl->own;
        return true;
    }
#endif
    return false;
}

nmlx_status nmlx_backend_cpu_create_isa(int n_threads, const char *isa, nmlx_backend **out) {
    nmlx_status st = NMLX_OK;
    nmlx_backend *be = NULL;
    cpu_impl *impl = NULL;
    CHECK(out != NULL, NMLX_ERR_INVALID_ARG, "cpu backend: out is NULL");
    *out = NULL;
    CHECK(n_threads >= 0, NMLX_ERR_INVALID_ARG, "cpu backend: n_threads must be >= 0 (got %d)",
          n_threads);
    if (n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)(n < 256 ? n : 256) : 1;
    }
    be = nmlx_calloc(1, sizeof *be);
    impl = nmlx_calloc(1, sizeof *impl);
    CHECK(be && impl, NMLX_ERR_NOMEM, "cpu backend: out of memory");
    if (isa) {
        CHECK(pick_kernels(isa, impl), NMLX_ERR_UNSUPPORTED,
              "cpu backend: kernel set \"%s\" is unknown or not supported by this CPU", isa);
    } else {
        const char *env = getenv("NMLX_CPU");
        const char *order[] = {"avx512bf16", "avx512", "avx2", "portable"};
        int first = 0;
        if (env && !strcmp(env, "portable")) first = 3;
        if (env && !strcmp(env, "avx2")) first = 2;
        if (env && !strcmp(env, "avx512")) first = 1;
        for (int i = first; i < 4 && !impl->k; i++)
            pick_kernels(order[i], impl);
    }
    /* NMLX_FEW_TOKEN_KERNELS=0: matmuls of 2..15 tokens run the one-token
     * mat-vec per token instead (the same bits; for comparisons) */
    const char *few = getenv("NMLX_FEW_TOKEN_KERNELS");
    if (few && !strcmp(few, "0") && impl->k->matmul_few) {
        if (impl->k != &impl->own) impl->own = *impl->k;
        impl->own.matmul_few = NULL;
        impl->k = &impl->own;
    }
    be->ops = &cpu_ops;
    nmlx_backend_apply_env(be);
    be->n_threads = n_threads;
    be->impl = impl;
    be->pool = nmlx_pool_create(n_threads);
    if (!be->pool) {
        st = NMLX_ERR_NOMEM;
        nmlx_error_prefix("cpu backend");
        goto cleanup;
    }
    *out = be;
    return NMLX_OK;
cleanup:
    nmlx_free(impl);
    nmlx_free(be);
    return st;
}

nmlx_status nmlx_backend_cpu_create(int n_threads, nmlx_backend **out) {
    return nmlx_backend_cpu_create_isa(n_threads, NULL, out);
}

void nmlx_backend_free(nmlx_backend *be) {
    if (!be) return;
    nmlx_backend_profile_detach(be, stderr); /* NMLX_PROFILE: the table, then the real ops */
    if (be->ops && be->ops->release) be->ops->release(be);
    nmlx_pool_free(be->pool);
    nmlx_free(be->impl);
    nmlx_backend_drop_serial(be);
    nmlx_free(be);
}

nmlx_status nmlx_backend_set_precision(nmlx_backend *be, const char *precision) {
    if (!be) return nmlx_fail(NMLX_ERR_INVALID_ARG, "precision: no backend");
    int prec;
    if (!precision || !*precision || !strcmp(precision, "default"))
        prec = CPU_PREC_DEFAULT;
    else if (!strcmp(precision, "int8"))
        prec = CPU_PREC_INT8;
    else if (!strcmp(precision, "f32"))
        prec = CPU_PREC_F32;
    else
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "precision '%s' is not one of default, int8, f32",
                         precision);
    bool cpu = be->impl && !strcmp(be->ops->name, "cpu");
    if (prec == CPU_PREC_INT8 && !cpu)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "precision int8 runs on the CPU backend only (device backend '%s')",
                         be->ops->name);
#if NMLX_CPU_HAVE_AVX2
    if (prec == CPU_PREC_INT8 &&
        !(strncmp(cpu_kernels_of(be)->isa, "avx512", 6) == 0 && nmlx_qint8_cpu_ok()))
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "precision int8 needs a CPU with AVX512_VNNI (kernel set '%s')",
                         cpu_kernels_of(be)->isa);
#else
    if (prec == CPU_PREC_INT8)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "precision int8 needs an x86-64 CPU with AVX512_VNNI");
#endif
    if (cpu) ((cpu_impl *)be->impl)->prefill_precision = prec;
#if NMLX_HAVE_CUDA
    if (be->impl && !strcmp(be->ops->name, "cuda"))
        nmlx_cuda_set_f32_activations(be, prec == CPU_PREC_F32);
#endif
    return NMLX_OK;
}

const char *nmlx_backend_cpu_isa(const nmlx_backend *be) {
    if (!be || !be->impl || strcmp(be->ops->name, "cpu") != 0) return "none";
    return cpu_kernels_of(be)->isa;
}
