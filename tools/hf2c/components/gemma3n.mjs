// Emits a Gemma 3n-style family: the model skeleton is the shared
// src/shared/gemma3n_model.h (embeddings, AltUp streams, caches, final
// mix); this emitter writes the family's decoder layer body from component
// snippets chosen by features (AltUp predict/correct around the layer,
// Laurel beside attention, per-layer input gates) and the def with the
// config defaults.
import { cDouble, cString, header } from "./c.mjs";
import { FEATURES } from "../features.mjs";

/** Features this emitter understands; `required` must be on (the shared
 * skeleton implements them unconditionally). */
const GEMMA3N_FEATURES = new Set([
  "altup", "laurel", "perLayerInputs", "kvSharing", "activationSparsity", "vNorm",
  "qkNorm", "slidingWindow", "layerTypes", "sandwichNorms", "embedScale", "localRope",
  "finalLogitSoftcap", "activationKey",
]);
const REQUIRED = ["altup", "qkNorm", "sandwichNorms", "embedScale", "localRope"];

export function canEmit(def) {
  const f = def.features;
  return f.altup === true &&
    Object.entries(f).every(([k, v]) => GEMMA3N_FEATURES.has(k) || v === FEATURES[k].default);
}

// ---- layer snippets: each a list of C lines inside the layer function ----

const predict = () => [
  "    /* AltUp predict: every stream from all K, routed by the active one */",
  "    nmlx_altup_predict(be, &l->altup, s->streams, s->stride, s->router, s->xn, s->pred, T);",
  "    const float *x = s->pred + m->active * s->stride; /* the active prediction */",
  "    nmlx_rmsnorm_forward(be, &l->input_norm, x, s->xn, T, D);",
];

const laurel = () => [
  "    /* Laurel: low-rank residual of the normed input, joined after attention */",
  "    nmlx_laurel_forward(be, &l->laurel, s->xn, s->low, s->aux, T);",
];

const attention = (f) => [
  "    /* attention (sandwich norms): h = x + post_attn_norm(attn(xn)) */",
  "    nmlx_g3n_attention(be, m, s, layer, s->xn, s->tmp, T);",
  "    nmlx_rmsnorm_forward(be, &l->post_attn_norm, s->tmp, s->tmp, T, D);",
  "    be->ops->add(be, x, s->tmp, s->h, n);",
  ...(f.laurel ? [
    "    be->ops->add(be, s->h, s->aux, s->h, n); /* (h + laurel) / sqrt(2) */",
    "    be->ops->scale(be, s->h, 0.70710678118654752f, n);",
  ] : []),
];

const mlp = () => [
  "    /* MLP (sandwich norms): h += post_ffn_norm(mlp(pre_ffn_norm(h))) */",
  "    nmlx_rmsnorm_forward(be, &l->pre_ffn_norm, s->h, s->xn, T, D);",
  "    nmlx_g3n_mlp(be, m, s, layer, s->xn, s->tmp, T);",
  "    nmlx_rmsnorm_forward(be, &l->post_ffn_norm, s->tmp, s->tmp, T, D);",
  "    be->ops->add(be, s->h, s->tmp, s->h, n);",
];

const correct = () => [
  "    /* AltUp correct: the layer output corrects all K predictions */",
  "    nmlx_altup_correct(be, &l->altup, s->pred, s->stride, s->h, s->router, s->xn, T);",
];

const perLayerInput = () => [
  "    /* per-layer input, gated by the corrected active stream, into streams 1.. */",
  "    nmlx_g3n_per_layer_input(be, m, s, layer, s->pred + m->active * s->stride, s->tmp, T);",
  "    for (int64_t k = 1; k < m->K; k++)",
  "        be->ops->add(be, s->pred + k * s->stride, s->tmp, s->pred + k * s->stride, n);",
];

function layerBody(f) {
  return [
    ...predict(f),
    ...(f.laurel ? laurel(f) : []),
    ...attention(f),
    ...mlp(f),
    ...correct(f),
    ...(f.perLayerInputs ? perLayerInput(f) : []),
  ].join("\n");
}

export function emitGemma3nFamily(def) {
  const f = def.features, d = def.defaults, n = def.family;
  for (const k of REQUIRED)
    if (f[k] !== true) throw new Error(`model-def ${n}: the gemma3n emitter needs feature '${k}'`);
  if (f.slidingWindow !== "always" || f.layerTypes !== true)
    throw new Error(`model-def ${n}: the gemma3n emitter needs slidingWindow "always" and layerTypes`);
  const types = def.modelTypes.map(cString).join(", ");
  const fn = `static void ${n}_layer(`;
  return `${header(def)}
#include "shared/gemma3n_model.h"

static const char *const ${n}_model_types[] = {${types}, NULL};

/* One decoder layer: the K AltUp streams s->streams -> s->pred. */
${fn}nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s,
${" ".repeat(fn.length)}int64_t layer, int64_t T) {
    const nmlx_g3n_layer *l = &m->layers[layer];
    const int64_t D = m->hidden, n = T * D;
${layerBody(f)}
}

static const nmlx_g3n_def ${n}_def = {
    .laurel = ${f.laurel},
    .per_layer_inputs = ${f.perLayerInputs},
    .kv_sharing = ${f.kvSharing},
    .activation_sparsity = ${f.activationSparsity},
    .v_norm = ${f.vNorm},
    .rms_norm_eps = ${cDouble(d.rms_norm_eps)},
    .rope_theta = ${cDouble(d.rope_theta)},
    .rope_local_theta = ${cDouble(d.rope_local_base_freq)},
    .final_logit_softcapping = ${cDouble(f.finalLogitSoftcap ? d.final_logit_softcapping : 0)},
    .altup_coef_clip = ${cDouble(d.altup_coef_clip)},
    .max_position_embeddings = ${d.max_position_embeddings},
    .head_dim = ${d.head_dim},
    .sliding_window = ${d.sliding_window},
    .full_layer_every = ${d.sliding_window_pattern},
    .altup_num_inputs = ${d.altup_num_inputs},
    .altup_active_idx = ${d.altup_active_idx},
    .laurel_rank = ${d.laurel_rank},
    .hidden_size_per_layer_input = ${d.hidden_size_per_layer_input},
    .vocab_size_per_layer_input = ${d.vocab_size_per_layer_input},
    .num_kv_shared_layers = ${d.num_kv_shared_layers},
    .altup_correct_scale = ${d.altup_correct_scale},
    .tie_word_embeddings = ${d.tie_word_embeddings},
    .hidden_act = ${cString(d.hidden_act)},
    .act_key = ${cString(f.activationKey)},
    .layer_forward = ${n}_layer,
};

const nmlx_family nmlx_family_${n} = {
    .name = ${cString(n)},
    .model_types = ${n}_model_types,
    .def = &${n}_def,
    .build = nmlx_g3n_build,
    .destroy = nmlx_g3n_destroy,
    .state_create = nmlx_g3n_state_create,
    .state_free = nmlx_g3n_state_free,
    .state_position = nmlx_g3n_state_position,
    .state_trim = nmlx_g3n_state_trim,
    .forward = nmlx_g3n_forward,
};
`;
}
