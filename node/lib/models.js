// Short aliases for models nmlx runs (node-mlx's names where the family is
// supported). Checkpoints are HuggingFace bf16 releases: MLX-quantized
// (mlx-community *-4bit) checkpoints are not supported yet.
export const RECOMMENDED_MODELS = Object.freeze({
  qwen: "Qwen/Qwen3-0.6B",
  qwen3: "Qwen/Qwen3-0.6B",
  "qwen3-0.6b": "Qwen/Qwen3-0.6B",
  "qwen3-1.7b": "Qwen/Qwen3-1.7B",
  "qwen3-4b": "Qwen/Qwen3-4B",
  "qwen3-8b": "Qwen/Qwen3-8B",
  "qwen2.5": "Qwen/Qwen2.5-0.5B-Instruct",
  "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
  "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
  llama: "meta-llama/Llama-3.2-1B-Instruct",
  "llama3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
  "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
  "llama3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
  mistral: "mistralai/Mistral-7B-Instruct-v0.3",
  smollm: "HuggingFaceTB/SmolLM2-135M-Instruct",
  "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
  "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
});

/** An alias's repository id; anything else is returned as given. */
export function resolveModelId(idOrAlias) {
  return Object.hasOwn(RECOMMENDED_MODELS, idOrAlias) ? RECOMMENDED_MODELS[idOrAlias] : idOrAlias;
}
