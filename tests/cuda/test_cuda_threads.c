/* One model on the CUDA backend used from several threads at once
 * (tests/threads_checks.h). The backend's state is shared by every call
 * (one stream, its scratch, the graph being captured, the LM head's row),
 * so the library's entry points take its call lock (backend.h
 * nmlx_backend_enter); without it `nmlx serve` died at 32 streams
 * (sessions created and freed on the JS thread while the scheduler's
 * thread decoded), and this test segfaults. Prints "N passed, N failed";
 * exits 77 (ctest: skipped) without a GPU. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"
#include "threads_checks.h"

int main(void) {
    if (test_no_cuda_device()) return 77; /* skip, not fail */
    check_fixture("cuda", "qwen3", 11u);
    check_fixture("cuda", "quant_llama_q4g64_f16", 12u);
    check_fixture("cuda", "gpt_oss", 13u);
    return test_summary();
}
