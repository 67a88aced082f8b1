/* cuda_attention_mma.cu's kernel run on the CPU, for machines without a
 * GPU: the kernel source is compiled as host C++ (NMLX_ATTN_MMA_EMU drops
 * its PTX wrappers and launch code) on warp_emu.h: each CUDA thread of a
 * block is a fiber, __syncthreads a barrier of the 128, and the
 * warp-collective instructions (mma.m16n8k16, ldmatrix.x4 [.trans],
 * shfl.xor) exchange the 32 lanes' operands through a warp barrier and apply
 * the PTX ISA's fragment layouts (f16 products exact, sums in double then
 * rounded to f32: the tensor cores' own f32 rounding is not modelled). It checks the index
 * math (fragments, masks, tile walk, online softmax) and the split
 * precision against a double-precision reference of the `attention`
 * contract, every case of test_cuda_ops' mma list that is small enough.
 * Shared memory is poisoned (f16 NaN) before each block, and ldmatrix
 * addresses checked for alignment and bounds. Not built by cmake; by hand:
 *   g++ -std=c++20 -O2 -Wno-unknown-pragmas -DNMLX_ATTN_MMA_EMU -Isrc -Iinclude \
 *       -isystem /usr/local/cuda/include tests/cuda/attn_mma_emu.cpp -o /tmp/attn_mma_emu
 *   /tmp/attn_mma_emu        (exit 0: every case within 2e-5 of max|ref|) */
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "compute/backend.h"
}

/* the kernel's `extern __shared__ sm[]`; __half from the toolkit */
#define WARP_EMU_CUDA_HEADERS
#define WARP_EMU_SMEM sm
#include "warp_emu.h"

#include "attn_ref.h"

namespace {
void mma_f16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    emu_mma_m16n8k16<EMU_F16>(c, a, b0, b1);
}
void ldsm_x4(uint32_t *r, const uint16_t *p) { emu_ldmatrix_x4(r, p, false); }
void ldsm_x4_trans(uint32_t *r, const uint16_t *p) { emu_ldmatrix_x4(r, p, true); }
} // namespace

#include "compute/cuda/cuda_attention_mma.cu"

/* the host side of nmlx_cuda_attention_mma: the instance by head size */
template <int D, int TK> static void emu_launch_mma(const nmlx_attn_args &a) {
    const size_t sm_bytes = (size_t)(MQ + 2 * TK) * 2 * (size_t)(a.HD + PAD) * sizeof(uint16_t) +
                            (size_t)(MQ + 2 * TK) * sizeof(float);
    emu_launch(dim3((unsigned)a.H, (unsigned)((a.T + MQ - 1) / MQ)), MT, sm_bytes,
               [&a] { attention_mma_kernel<D, TK>(a); });
}

static void emu_attention(const nmlx_attn_args &a) {
    assert(a.HD % 16 == 0 && a.HD <= 256);
    if (a.HD <= 64)
        emu_launch_mma<64, 64>(a);
    else if (a.HD <= 128)
        emu_launch_mma<128, 64>(a);
    else
        emu_launch_mma<256, 32>(a);
}

static int failures;

/* q scaled by qmul (peaky softmax for qmul > 1); each k and v row by
 * e^u, u uniform in [-spread, spread] (the f16 pairs' row scales) */
static void run_case(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap, int64_t q_pos,
                     int64_t n_kv, int64_t window, float softcap, bool sinks, float qmul,
                     float spread = 0) {
    attn_case c;
    attn_case_init(c, T, H, KVH, HD, cap, q_pos, n_kv, window, softcap, sinks, qmul, spread,
                   emu_urand);
    emu_attention(c.a);
    std::vector<double> ref;
    ref_attention(c.a, ref);
    double mx, err;
    attn_err(c.out, ref, mx, err);
    const double rel = err / (mx > 1e-30 ? mx : 1e-30);
    const bool ok = rel <= 2e-5;
    failures += !ok;
    printf("%s T=%lld H=%lld KVH=%lld HD=%lld q_pos=%lld n_kv=%lld win=%lld cap=%g sinks=%d "
           "q x%g spread %g: rel err %.2e\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)H, (long long)KVH, (long long)HD,
           (long long)q_pos, (long long)n_kv, (long long)window, softcap, sinks, qmul, spread, rel);
    fflush(stdout);
}

int main(void) {
    /* test_cuda_ops' prefill cases, heads cut to keep the emulation short */
    run_case(7, 6, 2, 80, 20, 3, 10, 0, 0, false, 1);
    run_case(19, 4, 4, 64, 300, 150, 169, 16, 0, false, 1);
    run_case(5, 2, 1, 256, 70, 60, 65, 0, 30.0f, true, 1);
    run_case(3, 2, 1, 96, 8, 0, 3, 2, 0, true, 1);
    run_case(130, 2, 1, 128, 160, 0, 130, 0, 0, false, 1);
    run_case(77, 2, 2, 64, 300, 101, 178, 0, 0, false, 1);
    run_case(200, 2, 1, 80, 260, 33, 233, 40, 0, true, 1);
    run_case(64, 2, 1, 256, 70, 0, 64, 0, 50.0f, true, 1);
    run_case(45, 2, 1, 64, 50, 0, 45, 7, 0, false, 1);
    /* the mma kernel's edges */
    run_case(63, 2, 2, 128, 100, 0, 63, 0, 0, false, 1);
    run_case(65, 4, 1, 128, 100, 0, 65, 0, 0, true, 1);    /* group 4 */
    run_case(129, 8, 1, 64, 300, 70, 199, 0, 0, false, 1); /* group 8 */
    run_case(2, 8, 1, 128, 10, 0, 2, 0, 0, false, 1);
    run_case(100, 2, 1, 96, 400, 250, 350, 0, 30.0f, true, 1);
    run_case(70, 2, 1, 112, 200, 5, 75, 130, 0, false, 1);
    run_case(150, 2, 2, 256, 400, 100, 250, 90, 20.0f, true, 1);
    run_case(200, 2, 1, 80, 300, 0, 200, 3, 0, false, 1);
    run_case(90, 2, 1, 128, 100, 0, 20, 8, 0, false, 1);  /* t >= 27 see nothing */
    run_case(200, 2, 1, 64, 300, 30, 60, 16, 0, true, 1); /* whole blocks see nothing */
    run_case(150, 2, 1, 128, 300, 100, 180, 0, 0, false, 1);
    /* peaky softmax (scores up to ~±40): the running max moves tile to tile */
    run_case(140, 2, 1, 128, 200, 0, 140, 0, 0, false, 12);
    run_case(100, 2, 1, 64, 200, 20, 120, 50, 0, true, 12);
    run_case(70, 2, 1, 256, 100, 0, 70, 0, 0, false, 12);
    /* q and k far from 1 (the f16 pairs' row scaling): tiny and huge rows */
    run_case(80, 2, 1, 128, 100, 0, 80, 0, 0, false, 1e-6f);
    run_case(80, 2, 1, 128, 100, 0, 80, 0, 0, true, 3e3f);
    /* k and v rows from e^-7 to e^7 of each other: u grows tile to tile */
    run_case(300, 2, 1, 128, 300, 0, 300, 0, 0, false, 1, 7);
    run_case(200, 2, 1, 64, 300, 50, 250, 100, 0, true, 4, 7);
    /* the fixtures' small heads (HD 16, 32; 48) */
    run_case(40, 2, 1, 16, 60, 5, 45, 0, 0, false, 1);
    run_case(70, 4, 2, 32, 100, 0, 70, 9, 0, true, 1);
    run_case(66, 2, 2, 48, 100, 3, 69, 0, 15.0f, false, 1);
    /* the Llama-3.1-8B layer's prefill (T 512, HD 128, group 4), 4 of its 32 heads */
    run_case(512, 4, 1, 128, 512, 0, 512, 0, 0, false, 1);
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures != 0;
}
