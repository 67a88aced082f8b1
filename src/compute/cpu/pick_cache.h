/* Per-machine cache of the CPU kernel picks.
 *
 * Where two kernels compute the same product at different speeds (and
 * slightly different rounding: int16 or bf16 x against f32 x), the CPU
 * backend times both once per process and takes the faster
 * (quant_bf16_avx512.c, quant_int16_avx2.c). A timing taken while other
 * processes load the machine can flip a close pick, and with it the last
 * bits of the logits: two runs of the same prompt would then differ. The
 * picks are therefore stored on first measurement and read back by every
 * later process on the same machine, so a machine's results stay the same
 * from run to run.
 *
 * File: <dir>/cpu-pick-<what>-<hash>.txt, a text record of the machine key
 * (nmlx version, /proc/cpuinfo vendor, family, model, stepping and model
 * name, and the caller's feature string) and the values. <dir> is
 * $NMLX_CACHE_DIR, else $XDG_CACHE_HOME/nmlx, else $HOME/.cache/nmlx;
 * NMLX_PICK_CACHE=0 turns the cache off. Best effort: a missing,
 * unreadable, foreign or malformed record reads as absent (the caller
 * measures), and a failed store leaves nothing behind (written to a
 * temporary name, then renamed). */
#ifndef NMLX_PICK_CACHE_H
#define NMLX_PICK_CACHE_H

#include <stdbool.h>
#include <stddef.h>

enum { NMLX_PICK_CACHE_MAX = 16 }; /* values a record holds at most */

/* Reads the n values stored for `what` on this machine with `features`;
 * false (vals untouched) where there is no valid record. */
bool nmlx_pick_cache_load(const char *what, const char *features, int *vals, int n);

/* Stores them (replacing any earlier record); silent on failure. */
void nmlx_pick_cache_store(const char *what, const char *features, const int *vals, int n);

/* The record's path for `what` and `features` (for logs and tests); false
 * where the cache is off or no directory is known. */
bool nmlx_pick_cache_path(const char *what, const char *features, char *out, size_t cap);

#endif
