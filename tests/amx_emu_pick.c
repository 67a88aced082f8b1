/* Stands in for src/compute/cpu/quant_bf16_avx512.c in test executables
 * built with another NMLX_AMX_QUANT_DEFAULT_TERMS (tests/amx.cmake): the
 * same source, so the one-time pick runs as a library built with that
 * default would; it defines every symbol of quant_bf16_avx512.o, so the
 * archive's is not pulled in. */
#include "compute/cpu/quant_bf16_avx512.c"
