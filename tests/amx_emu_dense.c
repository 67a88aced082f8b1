/* Stands in for src/compute/cpu/matmul_amx.c in test executables linked
 * with it (tests/amx.cmake): the same source with its tile operations
 * emulated in C (tests/amx_emulate.h) and AMX reported usable, so that the
 * whole CPU backend (the one-time pick, the op drivers, both AMX prefills)
 * runs its AMX paths on any CPU with AVX512_BF16. Linked before libnmlx.a,
 * this object, amx_emu_quant.c and amx_emu_int8.c define every symbol of
 * matmul_amx.o, quant_amx.o and quant_int8_amx.o, so the archive's are never pulled in. Never built
 * into the library. */
#define NMLX_AMX_EMULATE 1
#define nmlx_amx_ok probe_amx_ok
#define nmlx_amx_status probe_amx_status
#define nmlx_amx_int8_ok probe_amx_int8_ok
#include "compute/cpu/matmul_amx.c"
#undef nmlx_amx_ok
#undef nmlx_amx_status
#undef nmlx_amx_int8_ok

bool nmlx_amx_ok(void);
const char *nmlx_amx_status(void);
bool nmlx_amx_int8_ok(void);

/* AMX "usable" wherever the emulation can run (it needs AVX512_BF16 and
 * AVX-512 BW for the kernels' own x and W rounding) */
bool nmlx_amx_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
}

const char *nmlx_amx_status(void) {
    return nmlx_amx_ok() ? "usable (tiles emulated in C)" : "no AVX512_BF16 for the emulation";
}

/* AMX-INT8 likewise (quant_int8_amx.c's TDPBSUD / TDPBUUD emulated) */
bool nmlx_amx_int8_ok(void) { return nmlx_amx_ok(); }
