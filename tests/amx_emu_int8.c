/* Stands in for src/compute/cpu/quant_int8_amx.c in test executables linked
 * with tests/amx_emu_dense.c (which says why): the AMX-INT8 quantized
 * prefill with its tile operations emulated in C. */
#define NMLX_AMX_EMULATE 1
#include "compute/cpu/quant_int8_amx.c"
