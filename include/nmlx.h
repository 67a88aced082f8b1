/*
 * nmlx.h - the one public header of nmlx: LLM inference in C.
 *
 * nmlx loads a HuggingFace model folder (config.json + *.safetensors, optional
 * tokenizer.json) and generates text on the CPU.
 *
 * Usage (error handling shortened):
 *
 *     nmlx_model_params mp = nmlx_model_default_params();
 *     nmlx_model *model;
 *     if (nmlx_model_load("path/to/Qwen3-0.6B", &mp, &model) != NMLX_OK) {
 *         fprintf(stderr, "nmlx: %s\n", nmlx_last_error());
 *         return 1;
 *     }
 *     nmlx_session *s;
 *     nmlx_session_create(model, NULL, &s);
 *     nmlx_generate_params gp = nmlx_generate_default_params();
 *     gp.max_tokens = 64;
 *     gp.on_token = print_piece;               // gets UTF-8-complete text
 *     int32_t prompt[] = {9707, 11, 1879};
 *     nmlx_generate_result r;
 *     nmlx_generate(s, prompt, 3, &gp, &r);
 *     nmlx_session_free(s);
 *     nmlx_model_free(model);
 *
 * Conventions (they hold for every function below):
 *  - Fallible calls return nmlx_status. On failure the output arguments are
 *    left untouched (or NULL) and nmlx_last_error() returns a message naming
 *    the file, tensor or field at fault. The message is kept per thread.
 *  - Whoever creates frees: nmlx_X_free() for each nmlx_X_create/load; all
 *    destructors accept NULL. Memory returned through `char **` / `int32_t **`
 *    outputs is released with nmlx_free().
 *  - Thread safety: a model and a tokenizer are immutable after load and may
 *    be shared by threads; a session is used by one thread at a time, except
 *    nmlx_session_cancel(), which any thread may call at any time. On a GPU
 *    (device "cuda"), calls on sessions of one model take turns (one stream
 *    serves them all); nmlx_generate lets waiting threads in between tokens.
 *  - A session holds a reference on its model: nmlx_model_free() on a model
 *    with live sessions defers the free until the last session is freed.
 *  - Nothing in the library writes to stdout/stderr or calls exit()/abort()
 *    on bad input.
 *
 * Enums only grow; struct params are obtained from nmlx_*_default_params()
 * so that fields added later keep their defaults.
 */
#ifndef NMLX_H
#define NMLX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NMLX_VERSION_STRING "0.1.0"

/* ---- status and errors ------------------------------------------------ */

typedef enum nmlx_status {
    NMLX_OK = 0,
    NMLX_ERR_INVALID_ARG = 1,      /* a NULL handle, a bad parameter value */
    NMLX_ERR_IO = 2,               /* a file is missing or cannot be read */
    NMLX_ERR_FORMAT = 3,           /* a file is malformed (JSON, safetensors) */
    NMLX_ERR_UNSUPPORTED = 4,      /* unknown model_type, rope type, dtype... */
    NMLX_ERR_NOMEM = 5,            /* an allocation failed */
    NMLX_ERR_CONTEXT_OVERFLOW = 6, /* more tokens than the session can hold */
    NMLX_ERR_CANCELLED = 7,        /* nmlx_session_cancel() stopped the call */
    NMLX_ERR_INTERNAL = 8,         /* a bug: please report it */
    NMLX_ERR_INVALID_MODEL = 9     /* a model file holds a value outside its domain (a config
                                      field out of range or unknown, fields that disagree with
                                      each other or with a tensor's shape); the message names
                                      the file, the field and the value */
} nmlx_status;

/* The message of the last failed call on this thread ("" if none). Valid
 * until the next nmlx call on the same thread. */
const char *nmlx_last_error(void);
/* A short constant name for a status ("io error", ...). */
const char *nmlx_status_string(nmlx_status status);
const char *nmlx_version(void);
/* Releases memory that nmlx returned through an output pointer. */
void nmlx_free(void *ptr);

typedef struct nmlx_model nmlx_model;
typedef struct nmlx_session nmlx_session;
typedef struct nmlx_tokenizer nmlx_tokenizer;
typedef struct nmlx_detokenizer nmlx_detokenizer;

/* ---- model ------------------------------------------------------------ */

typedef struct nmlx_model_params {
    int n_threads;   /* worker threads; 0 = number of online CPUs */
    int max_context; /* cap on tokens per session; 0 = the model's
                        max_position_embeddings clamped to [4096, 8192] */
    int no_tokenizer; /* 1 = do not load tokenizer.json even if present */
    int quantize_bits; /* 0 = weights as stored; 2,3,4,5,6,8 = quantize float
                          Linear/Embedding weights on load (MLX affine, as
                          nmlx_convert would, in memory; nothing written) */
    int quantize_group_size; /* 0 = 64; else 32, 64 or 128 */
    const char *device; /* NULL or "cpu" (default), "cuda" (= "cuda:0") or "cuda:N":
                           where the model computes. CUDA needs a build with
                           -DNMLX_CUDA=ON (npm: nvcc and cuBLAS found, or
                           NMLX_CUDA=1) and runs every family (llama, qwen2, qwen3,
                           mistral, ..., MoE, Gemma 3n, Llama 4) in F32/F16/BF16,
                           MLX affine and MXFP4, with the quantized KV cache too.
                           Not copied: the string must
                           live until nmlx_model_load returns. */
    const char *precision; /* activations of the matmuls: NULL or "default": in
                              the prefill matmuls (>= 24 tokens) on the CPU,
                              never the LM head,
                              quantized weights on int16 x per token and weight
                              group where the CPU has AVX512_VNNI (as accurate as
                              f32 on the fixtures, ~1.5x faster), bf16 weights on
                              bf16 x where it has AVX512_BF16 (as decode does),
                              else f32; "int8": quantized weights on int8 x
                              (AVX512_VNNI; ~2x faster, over the quantized
                              fixtures' precision contract); "f32": f32 x in
                              every matmul, decode mat-vecs included (the
                              default decode rounds x to int16 or bf16).
                              On CUDA: the default runs decode mat-vecs of
                              affine 4/8-bit weights on int16 x per 16 inputs;
                              "f32" keeps f32 x there; "int8" is refused.
                              docs/quantization.md. Not copied. */
} nmlx_model_params;

nmlx_model_params nmlx_model_default_params(void);

/* Quantizes a float (F32/F16/BF16) checkpoint folder into an MLX affine
 * checkpoint mlx-lm can load (docs/quantization.md): every 2-D `*.weight`
 * whose input width is a multiple of group_size becomes weight (U32) +
 * scales + biases; config.json gains `quantization` and
 * `quantization_config`; tokenizer and generation files are copied. Written
 * into `<out_dir>.tmp-<pid>` and renamed to out_dir only when complete;
 * out_dir must not exist. */
typedef struct nmlx_convert_params {
    int bits;       /* 2, 3, 4, 5, 6, 8 (default 4) */
    int group_size; /* 32, 64, 128 (default 64) */
    const char *dtype; /* NULL = as stored, or "float32"/"float16"/"bfloat16":
                          the dtype of unquantized tensors and of scales/biases */
    /* Progress (NULL = none): called on the calling thread after each tensor
     * is converted, with its 1-based index, the tensor count and its name;
     * after the last one the output file is written. */
    void (*on_progress)(void *user, size_t done, size_t total, const char *name);
    void *user; /* passed to on_progress */
} nmlx_convert_params;
nmlx_convert_params nmlx_convert_default_params(void);
nmlx_status nmlx_convert(const char *src_dir, const char *out_dir, const nmlx_convert_params *p);

/* Loads a model folder: config.json, generation_config.json (optional),
 * model.safetensors or model.safetensors.index.json + shards, and the
 * tokenizer files if present. Weights are mmapped read-only. */
nmlx_status nmlx_model_load(const char *dir, const nmlx_model_params *params,
                            nmlx_model **out);
void nmlx_model_free(nmlx_model *model);

const char *nmlx_model_type(const nmlx_model *model); /* config model_type */
int32_t nmlx_model_vocab_size(const nmlx_model *model);
int32_t nmlx_model_max_context(const nmlx_model *model);
/* End-of-sequence ids from config.json and generation_config.json. */
size_t nmlx_model_eos_ids(const nmlx_model *model, const int32_t **ids);
/* The model's tokenizer, or NULL if the folder has none. Owned by the model. */
const nmlx_tokenizer *nmlx_model_tokenizer(const nmlx_model *model);

/* ---- sampling --------------------------------------------------------- */

typedef struct nmlx_sampler_params {
    float temperature;           /* 0 = greedy (argmax) */
    float top_p;                 /* 1 = off */
    int top_k;                   /* 0 = off */
    float min_p;                 /* 0 = off */
    float repetition_penalty;    /* 1 = off */
    int repetition_context_size; /* tokens looked back for the penalty */
    uint64_t seed;               /* same seed, same tokens */
} nmlx_sampler_params;

/* Greedy by default; generation_config.json values are applied by
 * nmlx_model_sampler_params(). */
nmlx_sampler_params nmlx_sampler_default_params(void);
/* The model's recommended sampling (generation_config.json), else defaults. */
nmlx_sampler_params nmlx_model_sampler_params(const nmlx_model *model);

/* ---- session: one conversation (KV cache, position, sampler) ---------- */

typedef struct nmlx_session_params {
    int max_context; /* 0 = the model's max_context */
    /* Quantized KV cache (mlx-lm QuantizedKVCache, kv_bits): keys and values
     * of full-attention layers are stored MLX-affine quantized, about
     * (bits + 64 / kv_group_size) / 32 of the f32 cache's bytes. Sliding-
     * window layers with a rotating cache stay full precision. */
    int kv_bits;       /* 0 = off (default); 2, 3, 4, 5, 6 or 8 */
    int kv_group_size; /* 0 = 64; else 32, 64 or 128 (8 and 16 are accepted
                          for tiny head dims); must divide head_dim */
    int quantized_kv_start; /* quantize once the cache holds this many tokens
                               (checked before each eval; default 0 = from
                               the first token) */
    /* How full-attention layers store keys and values when kv_bits is 0:
     * NULL or "auto" (default): in the checkpoint's own float dtype, as
     * mlx-lm and transformers do (bf16 / f16 checkpoints and quantized ones,
     * by their scales: half the memory and memory traffic of f32), f32 for
     * f32 checkpoints and on device backends; or "f32", "f16", "bf16".
     * Half precision runs on the CPU backend only. Not copied. */
    const char *kv_dtype;
} nmlx_session_params;

nmlx_session_params nmlx_session_default_params(void);
nmlx_status nmlx_session_create(nmlx_model *model,
                                const nmlx_session_params *params, /* NULL ok */
                                nmlx_session **out);
void nmlx_session_free(nmlx_session *session);

/* Appends tokens to the session (prefill). Afterwards nmlx_session_logits()
 * holds the logits of the last token; with all_logits != 0 the logits of
 * every token of this call are kept too (for tests and scoring). */
nmlx_status nmlx_session_eval(nmlx_session *session, const int32_t *ids,
                              size_t n, int all_logits);
/* Logits (vocab_size floats) of the last evaluated token; NULL before any
 * eval. Valid until the next call on the session. */
const float *nmlx_session_logits(const nmlx_session *session);
/* Logits of every token of the last eval with all_logits set: n_rows x
 * vocab_size, row-major. NULL if not kept. */
const float *nmlx_session_all_logits(const nmlx_session *session,
                                     size_t *n_rows);
/* Number of tokens in the session's cache. */
size_t nmlx_session_position(const nmlx_session *session);
/* Drops the last n tokens from the cache (n <= position). */
nmlx_status nmlx_session_trim(nmlx_session *session, size_t n);
/* Empties the cache and the sampler history. */
void nmlx_session_reset(nmlx_session *session);
/* Asks a running eval/generate to stop; callable from any thread. The
 * running call returns NMLX_ERR_CANCELLED (generate: finish reason
 * NMLX_FINISH_CANCELLED, status NMLX_OK). The flag clears when the next call
 * starts. Llama 4 (chunked attention) keeps the attention chunk in progress
 * and the one before: a prompt eval cancelled after it crossed two chunk
 * boundaries (or a trim that far back) cannot be rolled back; further evals
 * then fail with NMLX_ERR_INVALID_ARG until nmlx_session_reset. */
void nmlx_session_cancel(nmlx_session *session);

/* Samples the next id from the current logits with the given sampler and
 * this session's random state (seeded by nmlx_session_seed). */
nmlx_status nmlx_session_sample(nmlx_session *session,
                                const nmlx_sampler_params *sampler,
                                int32_t *out_id);
void nmlx_session_seed(nmlx_session *session, uint64_t seed);

/* ---- generation ------------------------------------------------------- */

/* Called once per generated token. `text` is the UTF-8-complete text this
 * token completes (may be empty; NULL when the model has no tokenizer).
 * Return non-zero to stop generation (finish reason NMLX_FINISH_STOPPED). */
typedef int (*nmlx_token_callback)(void *user, int32_t id, const char *text,
                                   size_t len);

typedef enum nmlx_finish_reason {
    NMLX_FINISH_EOS = 0,      /* an end-of-sequence id was sampled */
    NMLX_FINISH_LENGTH = 1,   /* max_tokens or the context was reached */
    NMLX_FINISH_STOPPED = 2,  /* the callback asked to stop */
    NMLX_FINISH_CANCELLED = 3 /* nmlx_session_cancel() */
} nmlx_finish_reason;

typedef struct nmlx_generate_params {
    int max_tokens;             /* default 256 */
    int ignore_eos;             /* 1 = generate exactly max_tokens */
    nmlx_sampler_params sampler;
    nmlx_token_callback on_token; /* may be NULL */
    void *user;
} nmlx_generate_params;

typedef struct nmlx_generate_result {
    size_t n_prompt;
    size_t n_generated;
    nmlx_finish_reason finish;
    double prefill_seconds; /* prompt eval up to the first sampled token */
    double decode_seconds;  /* everything after the first token */
} nmlx_generate_result;

nmlx_generate_params nmlx_generate_default_params(void);
/* Evaluates `prompt` (appended to what the session holds; n_prompt may be 0
 * if the session already has logits), then samples up to max_tokens tokens,
 * passing each to the callback. Generated tokens join the session; the last
 * one is evaluated lazily, at the start of the next eval/generate call, so
 * n tokens cost n - 1 decode steps. Generation also ends when the session's
 * context is full (NMLX_FINISH_LENGTH). `result` (may be NULL) gets counts
 * and timings. The seed in params->sampler reseeds the session's generator. */
nmlx_status nmlx_generate(nmlx_session *session, const int32_t *prompt,
                          size_t n_prompt, const nmlx_generate_params *params,
                          nmlx_generate_result *result);

/* ---- batched decode: several sessions, one token each, one pass -------- */

/* Work buffers for advancing up to max_batch sessions of one model together
 * (a server's concurrent streams): a step reads each weight once for all of
 * them instead of once per session. Used by one thread at a time. */
typedef struct nmlx_batch nmlx_batch;

nmlx_status nmlx_batch_create(nmlx_model *model, int max_batch, nmlx_batch **out);
/* Holds a model reference, like a session. */
void nmlx_batch_free(nmlx_batch *batch);
/* Evaluates ids[i] in sessions[i] for i < n (n <= max_batch; distinct
 * sessions of the batch's model), as nmlx_session_eval(sessions[i], &ids[i],
 * 1, 0) would; then nmlx_session_logits(sessions[i]) holds each one's
 * logits. On the CPU they equal those of the session's own one-token eval
 * bit for bit while n < 24; beyond that they agree within the precision of
 * the weights' format. On CUDA (standard families) a batch keeps f32
 * activations in its matmuls (up to 64 sessions; beyond, f16/bf16 weights
 * multiply bf16-rounded ones, as a prefill does) and agrees with the lone
 * eval to about 1e-5 of the logits' range; at the default precision a lone
 * decode step of affine 4/8-bit weights runs on int16 activations, so there
 * the two agree within the quantized contract (precision "f32": 1e-5). A
 * session's pending token (left by
 * nmlx_generate) is evaluated first, on its own. Arguments are checked
 * before anything runs (NMLX_ERR_INVALID_ARG, or NMLX_ERR_CONTEXT_OVERFLOW
 * for a full session, naming the session's index), and on any failure no
 * session has advanced. A step is not interrupted by nmlx_session_cancel(). */
nmlx_status nmlx_batch_eval(nmlx_batch *batch, nmlx_session *const *sessions,
                            const int32_t *ids, size_t n);

/* ---- tokenizer (HuggingFace tokenizer.json) --------------------------- */

/* Loads tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
 * from a folder; the folder needs no weights or config.json. */
nmlx_status nmlx_tokenizer_load(const char *dir, nmlx_tokenizer **out);
void nmlx_tokenizer_free(nmlx_tokenizer *tok);

/* Text (UTF-8, `len` bytes) to ids. add_special = 1 behaves like
 * HuggingFace add_special_tokens=True (post-processor adds BOS/EOS). *ids is
 * released with nmlx_free(). Invalid UTF-8 is not rejected: each maximal
 * invalid subsequence is read as U+FFFD (what a JS string conversion does). */
nmlx_status nmlx_tokenize(const nmlx_tokenizer *tok, const char *text,
                          size_t len, int add_special, int32_t **ids,
                          size_t *n_ids);
/* Ids to text; *text is NUL-terminated, released with nmlx_free(). */
nmlx_status nmlx_detokenize(const nmlx_tokenizer *tok, const int32_t *ids,
                            size_t n_ids, int skip_special, char **text,
                            size_t *len);
/* Vocabulary size including added tokens (max id + 1). */
int32_t nmlx_tokenizer_vocab_size(const nmlx_tokenizer *tok);
/* The token's string as stored in the vocabulary; NULL for unknown ids. */
const char *nmlx_tokenizer_id_to_token(const nmlx_tokenizer *tok, int32_t id);
/* -1 if the string is not a token. */
int32_t nmlx_tokenizer_token_to_id(const nmlx_tokenizer *tok,
                                   const char *token);
/* BOS / EOS ids from tokenizer_config.json; -1 if none. */
int32_t nmlx_tokenizer_bos_id(const nmlx_tokenizer *tok);
int32_t nmlx_tokenizer_eos_id(const nmlx_tokenizer *tok);
int nmlx_tokenizer_is_special(const nmlx_tokenizer *tok, int32_t id);

/* Streaming detokenizer: feed ids one at a time, get back only text that is
 * complete UTF-8 and final; the concatenation of all pieces plus the final
 * flush equals nmlx_detokenize() of the whole sequence. */
nmlx_status nmlx_detokenizer_create(const nmlx_tokenizer *tok,
                                    int skip_special, nmlx_detokenizer **out);
void nmlx_detokenizer_free(nmlx_detokenizer *d);
/* *text points into the detokenizer, valid until its next call. */
nmlx_status nmlx_detokenizer_push(nmlx_detokenizer *d, int32_t id,
                                  const char **text, size_t *len);
nmlx_status nmlx_detokenizer_flush(nmlx_detokenizer *d, const char **text,
                                   size_t *len);
void nmlx_detokenizer_reset(nmlx_detokenizer *d);

#ifdef __cplusplus
}
#endif
#endif /* NMLX_H */
