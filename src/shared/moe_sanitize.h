/* The MoE weight sanitizer: reads one MoE block's experts from whichever
 * layout the checkpoint has and fills a SwitchGLU (ported/switch_layers.h),
 * the way mlx-lm's Model.sanitize turns HF layouts into switch layers, but
 * at load time and without copying where a view suffices:
 *
 *  1. per expert (HF Qwen3-MoE, ...): `<p>.experts.<e>.{gate,up,down}_proj.weight`
 *     [+ `.bias`], dense or MLX-quantized: zero-copy views of the mmap.
 *  2. stacked (mlx-lm sanitized, mlx-community checkpoints):
 *     `<p>.<stacked>.{gate,up,down}_proj.weight` [E, out, in] (or quantized
 *     weight/scales/biases with a leading E axis) [+ `.bias` [E, out]]:
 *     zero-copy per-expert views.
 *  3. gpt-oss HF (float): `<p>.experts.gate_up_proj` [E, in, 2*hidden] with
 *     gate/up columns interleaved (+ `gate_up_proj_bias` [E, 2*hidden]) and
 *     `<p>.experts.down_proj` [E, hidden, in] (+ `down_proj_bias` [E, in]):
 *     transposed and de-interleaved ONCE into backend memory, in the
 *     checkpoint's dtype. Memory cost: one extra copy of every expert weight
 *     (about the whole model for gpt-oss); the mmapped original pages are
 *     only read once and stay reclaimable.
 *     Llama 4 HF (gate_up_halves): the same tensors without biases, gate
 *     in columns [0, hidden) and up in [hidden, 2*hidden) instead of
 *     interleaved; repacked the same way.
 *
 *  4. gpt-oss HF MXFP4 (the original release): `<p>.experts.gate_up_proj_blocks`
 *     U8 [E, 2*hidden, in/32, 16] + `_scales` U8 [E, 2*hidden, in/32] (rows =
 *     outputs, gate/up rows interleaved), `down_proj_blocks` [E, in, hidden/32,
 *     16] + `_scales`, float biases as in 3. A row of blocks is byte for byte
 *     an MLX mxfp4 row (docs/quantization.md), so down_proj is a zero-copy
 *     view; gate/up rows are split ONCE into backend memory. Memory cost:
 *     one extra copy of gate_up_proj (E * 2*hidden * in * 17/32 bytes, about
 *     2/3 of the expert weights: ~6.8 GB for gpt-oss-20b); the mmapped
 *     original pages are read once and stay reclaimable. */
#ifndef NMLX_MOE_SANITIZE_H
#define NMLX_MOE_SANITIZE_H

#include "ported/switch_layers.h"
#include "io/safetensors.h"

typedef struct nmlx_moe_experts_spec {
    const char *prefix;  /* "model.layers.3.mlp" */
    const char *stacked; /* layout 2's module name: "switch_mlp" (qwen3_moe), "experts" (gpt-oss) */
    int64_t n_experts, in, hidden;
    bool bias;           /* experts carry biases */
    bool gate_up_halves; /* layout 3: gate/up columns as two halves (Llama 4) */
} nmlx_moe_experts_spec;

/* Fills g's gate/up/down (g->act etc. are left to the caller). *owned
 * receives backend memory the experts point into (layout 3), else NULL;
 * free it with be->ops->free after the experts. On failure nothing is left
 * allocated. */
nmlx_status nmlx_moe_experts_load(nmlx_switch_glu *g, void **owned, const nmlx_weights *ws,
                                  nmlx_backend *be, const nmlx_moe_experts_spec *s);
void nmlx_moe_experts_free(nmlx_switch_glu *g, void *owned, nmlx_backend *be);

#endif
