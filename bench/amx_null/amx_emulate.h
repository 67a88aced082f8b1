/* No-op AMX tile operations for bench/bench_amx_quant.c's "pack" kernel:
 * quant_amx.c built with these does all its panel dequantization and x
 * splitting but no tile arithmetic, so its cost can be timed on any
 * AVX512_BF16 CPU. The memory clobbers keep the packed buffers written. */
#ifndef NMLX_AMX_NULL_H
#define NMLX_AMX_NULL_H

#undef _tile_loadconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stored
#undef _tile_dpbf16ps
#undef _tile_zero
#define _tile_loadconfig(cfg) ((void)(cfg))
#define _tile_release() ((void)0)
#define _tile_loadd(t, base, stride)                                                               \
    __asm__ volatile("" ::"r"(base), "r"((long)(stride)) : "memory")
#define _tile_stored(t, base, stride)                                                              \
    __asm__ volatile("" ::"r"(base), "r"((long)(stride)) : "memory")
#define _tile_dpbf16ps(c, a, b) ((void)0)
#define _tile_zero(t) ((void)0)

#endif
