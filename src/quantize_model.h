/* Quantizing a whole checkpoint the way mlx-lm's convert does, into a
 * safetensors file: shared by nmlx_convert (a file renamed into place) and
 * quantize-on-load (an anonymous in-memory file, mmapped back).
 *
 * First mlx-lm's sanitize of MoE experts: per-expert
 * `<p>.experts.<e>.<proj>.weight` are stacked into `<p>.switch_mlp.<proj>.weight`
 * [E, out, in] (Qwen3-MoE), gpt-oss's `<p>.experts.gate_up_proj` [E, D, 2I]
 * / `down_proj` [E, I, D] (+ biases) become `<p>.experts.{gate,up,down}_proj.
 * {weight,bias}` ([E, I, D], [E, D, I]). Then every float `*.weight` of a
 * Linear/Embedding (2-D) or SwitchLinear (3-D, under `switch_mlp`/`experts`)
 * whose input width is a multiple of the group size is quantized (a
 * SwitchLinear expert by expert, written stacked: weight [E, out, in*bits/32],
 * scales/biases [E, out, in/group]). MoE routers (`*mlp.gate`, `*router`
 * beside experts) get mlx-lm's override {"group_size": 64, "bits": 8}
 * (left float when their width is not a multiple of 64, where mlx-lm would
 * fail). Temporary memory: one stacked/transposed copy of the float experts
 * of a projection at a time, plus every quantized output until written.
 * The mapped float source is read once and released as it is quantized
 * (nmlx_weights_release, every 8 MiB), so it does not stay resident. */
#ifndef NMLX_QUANTIZE_MODEL_H
#define NMLX_QUANTIZE_MODEL_H

#include "common.h"
#include "compute/tensor.h"
#include "io/safetensors.h"

/* sdtype: the dtype of unquantized float tensors and scales/biases;
 * NMLX_DT_COUNT = keep each weight's own dtype. Writes to fd. overrides (a
 * JSON object, or NULL) receives the per-module entries for config.json's
 * `quantization` ("model.layers.0.mlp.gate": {"group_size": 64, "bits": 8}). */
struct json_t;
nmlx_status nmlx_quantize_weights_fd(const nmlx_weights *ws, int bits, int group_size,
                                     nmlx_dtype sdtype, int fd, const char *label,
                                     struct json_t *overrides);
/* The same, calling progress(user, i, n, name) after each of the n tensors
 * (nmlx_convert_params.on_progress; progress may be NULL). gate_up_halves:
 * fused `experts.gate_up_proj` tensors hold gate then up columns (Llama 4)
 * instead of interleaved ones (gpt-oss): nmlx_fused_experts_halves().
 * n_threads: the rows of each tensor are split over that many threads
 * (0: one per online CPU; the output does not depend on it). */
nmlx_status nmlx_quantize_weights_fd_progress(
    const nmlx_weights *ws, int bits, int group_size, nmlx_dtype sdtype, int fd, const char *label,
    struct json_t *overrides, bool gate_up_halves, int n_threads,
    void (*progress)(void *, size_t, size_t, const char *), void *user);

/* Quantize-on-load: returns a weights set that holds the quantized tensors
 * (in an anonymous memory file) and every other tensor of ws copied.
 * n_threads as above (the model's n_threads). */
nmlx_status nmlx_quantize_weights_mem(const nmlx_weights *ws, int bits, int group_size,
                                      bool gate_up_halves, int n_threads, nmlx_weights **out);

/* Whether the family serving model_type reads fused experts as gate / up
 * halves (the Llama 4 model). */
bool nmlx_fused_experts_halves(const char *model_type);

#endif
