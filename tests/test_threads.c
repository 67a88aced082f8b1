/* One model on the CPU backend used from several threads at once
 * (tests/threads_checks.h): sessions created, evaluated, sampled, batched
 * and freed on different threads must give the ids they give alone. Prints
 * "N passed, N failed". Built with -fsanitize=thread it also looks for data
 * races (tests/README.md has the command). */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"
#include "threads_checks.h"

int main(void) {
    check_fixture("cpu", "qwen3", 21u);
    check_fixture("cpu", "quant_llama_q4g64_f16", 22u);
    check_fixture("cpu", "gpt_oss", 23u);
    check_fixture("cpu", "mistral_window", 24u); /* rotating cache */
    return test_summary();
}
