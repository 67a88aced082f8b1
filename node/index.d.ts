// Types of the nmlx package (ESM). See README.md.

/** Stable error codes: the C library's nmlx_status names plus the package's own. */
export type ErrorCode =
  | "NMLX_ERR_INVALID_ARG" | "NMLX_ERR_IO" | "NMLX_ERR_FORMAT" | "NMLX_ERR_UNSUPPORTED"
  | "NMLX_ERR_NOMEM" | "NMLX_ERR_CONTEXT_OVERFLOW" | "NMLX_ERR_CANCELLED" | "NMLX_ERR_INTERNAL"
  | "NMLX_ERR_INVALID_MODEL"
  | "NMLX_ERR_UNLOADED" | "NMLX_ERR_BUSY" | "NMLX_ERR_NO_TOKENIZER" | "NMLX_ERR_NO_CHAT_TEMPLATE"
  | "NMLX_ERR_TEMPLATE" | "NMLX_ERR_NOT_BUILT" | "NMLX_ERR_DOWNLOAD" | "NMLX_ERR_NOT_FOUND"
  | "NMLX_ERR_OFFLINE" | "NMLX_ERR_INTEGRITY" | "NMLX_ERR_QUEUE_FULL";

/** Every error nmlx throws or rejects with is an Error with a `code`. */
export class NmlxError extends Error {
  code: ErrorCode;
}
export const codes: Readonly<Record<string, ErrorCode>>;

export interface GenerationOptions {
  /** Most tokens to generate (default 256). Generation also ends at the context length. */
  maxTokens?: number;
  /** 0 = greedy. Defaults (temperature, topP, topK, minP, repetitionPenalty) come from the model's generation_config.json. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** Tokens looked back for the repetition penalty (default 20). */
  repetitionContextSize?: number;
  /** Same seed, same tokens. Without one each call draws a random seed. */
  seed?: number | bigint;
  /** Generation ends before the first occurrence of any of these strings (which is not returned). */
  stop?: string | string[];
  /** Aborting ends generation within one token, with finishReason "abort". */
  signal?: AbortSignal;
  /** Keep generating past end-of-sequence tokens. */
  ignoreEos?: boolean;
  /** Called with each piece of text as it is generated. */
  onToken?: (piece: string) => void;
}

export type FinishReason = "stop" | "length" | "abort";

export interface GenerationResult {
  text: string;
  /** "stop": an end-of-sequence token or a stop string; "length": maxTokens or the context; "abort": signal or unload(). */
  finishReason: FinishReason;
  /** Tokens evaluated for the prompt (for a chat turn: only the new ones). */
  promptTokens: number;
  completionTokens: number;
  /** Decode speed: tokens after the first / seconds after the first. */
  tokensPerSecond: number;
  /** Prompt evaluation up to the first sampled token. */
  timeToFirstTokenMs: number;
  prefillTokensPerSecond: number;
  /** The generated token ids (a stop string's tokens included). */
  tokens: number[];
  /** All generated text, the stop string and anything after it included. */
  rawText: string;
}

export interface ChatResult extends GenerationResult {
  /** Tokens of the conversation reused from the KV cache (not evaluated again). */
  cachedTokens: number;
}

/** An async iterator of text pieces; `result` settles when generation ends. Breaking out aborts. */
export interface GenerationStream extends AsyncIterableIterator<string> {
  result: Promise<GenerationResult>;
}
export interface ChatStream extends AsyncIterableIterator<string> {
  result: Promise<ChatResult>;
}

export interface Message {
  role: "system" | "user" | "assistant" | string;
  content: string;
  [key: string]: unknown;
}

export interface ChatOptions {
  system?: string;
  /** A Jinja chat template to use instead of the model's. */
  template?: string;
  /** Picks one template of a named list in tokenizer_config.json (default "default"). */
  templateName?: string;
  /** Extra template variables, e.g. { enable_thinking: false } for Qwen3. */
  templateArgs?: Record<string, unknown>;
}

export interface ModelInfo {
  modelType: string;
  vocabSize: number;
  contextLength: number;
  eosTokenIds: number[];
  bosTokenId: number | null;
  hasTokenizer: boolean;
  /** The model's recommended sampling (generation_config.json). */
  sampling: { temperature: number; topP: number; topK: number; minP: number;
    repetitionPenalty: number; repetitionContextSize: number };
}

/** Text, token ids, or chat messages (rendered with the model's chat template). */
export type Prompt = string | number[] | Int32Array | Message[];

export class Model {
  private constructor();
  readonly path: string;
  readonly id: string;
  readonly loaded: boolean;
  readonly info: ModelInfo;
  generate(prompt: Prompt, options?: GenerationOptions): Promise<GenerationResult>;
  stream(prompt: Prompt, options?: GenerationOptions): GenerationStream;
  chat(options?: ChatOptions): Chat;
  /** special: add the tokenizer's BOS/EOS (default true). */
  tokenize(text: string, options?: { special?: boolean }): number[];
  detokenize(ids: number[] | Int32Array, options?: { skipSpecial?: boolean }): string;
  applyChatTemplate(messages: Message[], options?: { addGenerationPrompt?: boolean; templateName?: string;
    tokenize?: false; [variable: string]: unknown }): string;
  /** tokenize: true gives the prompt's ids (no BOS/EOS added beyond what the template writes). */
  applyChatTemplate(messages: Message[], options: { addGenerationPrompt?: boolean; templateName?: string;
    tokenize: true; [variable: string]: unknown }): number[];
  chatTemplate(name?: string): ChatTemplate;
  /** Ends a running generation ("abort"), rejects queued calls, frees the model. Idempotent. */
  unload(): Promise<void>;
}

export class Chat {
  private constructor();
  readonly messages: Message[];
  /** Number of tokens in the chat's KV cache. */
  readonly cachedTokens: number;
  /** The token ids in the chat's KV cache. */
  readonly tokens: number[];
  send(content: string, options?: GenerationOptions): Promise<ChatResult>;
  stream(content: string, options?: GenerationOptions): ChatStream;
  /** Forgets the conversation, keeps the system prompt. */
  reset(): void;
  /** Frees the chat's KV cache now. */
  close(): void;
}

export class ChatTemplate {
  constructor(source: string, tokens?: Record<string, string>);
  readonly source: string;
  readonly tokens: Record<string, string>;
  render(messages: Message[], options?: { addGenerationPrompt?: boolean; [variable: string]: unknown }): string;
}
export function findChatTemplate(dir: string, name?: string): { source: string; tokens: Record<string, string> } | null;

export interface DownloadProgress {
  file: string;
  /** Bytes of this file so far, and its size. */
  downloaded: number;
  total: number;
  /** Over all files of the snapshot. */
  totalDownloaded: number;
  totalBytes: number;
}

export interface HubOptions {
  revision?: string;
  /** Default: $HF_ENDPOINT or https://huggingface.co */
  endpoint?: string;
  /** Default: $HF_TOKEN (or the token file under $HF_HOME). */
  token?: string;
  /** The hub cache folder. Default: $HF_HUB_CACHE or $HF_HOME/hub or ~/.cache/huggingface/hub */
  cacheDir?: string;
  /** Use only the cache. Default: $HF_HUB_OFFLINE */
  offline?: boolean;
  onProgress?: (p: DownloadProgress) => void;
  signal?: AbortSignal;
}

export interface LoadOptions extends HubOptions {
  /** Worker threads (0 = all CPUs). */
  threads?: number;
  /** Cap on tokens per session (0 = the model's, at most 8192). */
  contextLength?: number;
  noTokenizer?: boolean;
  /** Where the model computes: "cpu" (default), "cuda" or "cuda:N" (a CUDA build). */
  device?: string;
  /** "default" (activations may be rounded inside the matmuls, as MLX does;
   * docs/quantization.md), "f32" (f32 activations throughout) or "int8"
   * (opt-in int8 activations for quantized weights, as llama.cpp). */
  precision?: "default" | "f32" | "int8";
}

export interface SchedulerOptions {
  /** Sequences generating at once, each on its own session (default 4). */
  maxBatch?: number;
  /** Requests waiting beyond those; more reject with NMLX_ERR_QUEUE_FULL (default 64). */
  maxQueue?: number;
  /** Finished sessions kept for prompt-prefix reuse (default maxBatch; 0 = none). */
  cacheSize?: number;
  /** Tokens per sequence, prompt + completion (0 = the model's). */
  contextLength?: number;
  /** Prompt tokens evaluated per round, between other sequences' decode steps (default 256; 0 = whole prompt). */
  prefillChunk?: number;
}

export interface ScheduledResult extends GenerationResult {
  /** Prompt tokens reused from a cached session (not evaluated again). */
  cachedTokens: number;
}

/**
 * Runs many requests on one model (used exclusively): up to maxBatch advance together
 * round-robin on one native thread, one forward pass each per round; the rest wait.
 */
export class Scheduler {
  constructor(model: Model, options?: SchedulerOptions);
  readonly contextLength: number;
  readonly maxBatch: number;
  /**
   * Counts for /health; rounds and the *Seconds: the scheduler thread's rounds and its time in the
   * batched decode steps, the sequences' own forwards, sampling and delivery, and waiting for work.
   */
  readonly stats: {
    active: number; waiting: number; cached: number; completed: number; cancelled: number; failed: number;
    batchedSteps: number; batchedTokens: number; rounds: number;
    batchSeconds: number; forwardSeconds: number; sampleSeconds: number; idleSeconds: number;
  };
  /** Generates from token ids; `signal` in options cancels (finishReason "abort"). */
  submit(ids: number[], options?: GenerationOptions, onPiece?: (piece: string) => void): Promise<ScheduledResult>;
  /** Rejects waiting requests, lets running ones finish for graceMs (5000), cancels the rest. */
  close(options?: { graceMs?: number }): Promise<void>;
}

export interface ServerOptions extends SchedulerOptions {
  /** A folder, repository id or alias to load, or a loaded Model; none = the built-in demo model. */
  model?: string | Model;
  /** Default "127.0.0.1". */
  host?: string;
  /** Default 8080; 0 = any free port. */
  port?: number;
  /** Require `Authorization: Bearer <apiKey>` (all but /health). */
  apiKey?: string;
  device?: string;
  /** As LoadOptions.precision. */
  precision?: "default" | "f32" | "int8";
  threads?: number;
  /** The model id clients send and /v1/models lists (default: the repository id or folder name). */
  modelName?: string;
  /** Larger request bodies get 413 (default 8 MiB). */
  maxBodyBytes?: number;
  /** Default grace period of close() (5000 ms). */
  graceMs?: number;
}

export interface NmlxServer {
  readonly http: import("node:http").Server;
  readonly model: Model;
  readonly scheduler: Scheduler;
  readonly modelName: string;
  readonly host: string;
  readonly port: number;
  /** e.g. "http://127.0.0.1:8080" */
  readonly url: string;
  /**
   * Stops accepting (503 for new requests), lets running requests finish for graceMs, cancels
   * the rest, closes connections, and unloads the model if the server loaded it. Idempotent.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

/**
 * An OpenAI-compatible HTTP server (POST /v1/chat/completions, POST /v1/completions,
 * GET /v1/models, GET /health); resolves once it listens. See README.md, "Server".
 */
export function createServer(options?: ServerOptions): Promise<NmlxServer>;

/**
 * Loads a local folder, a HuggingFace repository id (downloaded into the HF cache) or an alias.
 * Without one (`loadModel()`, `loadModel(undefined, options)` or `loadModel(options)`), the
 * built-in demo model at demoModelPath(), with one line on stderr saying so; rejects with
 * NMLX_ERR_IO if that folder has no config.json.
 */
export function loadModel(idOrPath?: string, options?: LoadOptions): Promise<Model>;
export function loadModel(options: LoadOptions): Promise<Model>;
/** The built-in demo model's folder: $NMLX_DEMO_MODEL, else the package's models/demo. */
export function demoModelPath(): string;
/** Load, generate, unload. */
export function generate(modelIdOrAlias: string, prompt: Prompt,
  options?: GenerationOptions & LoadOptions): Promise<GenerationResult>;
/** Downloads what inference needs of a repository into the HF cache; resolves with the snapshot folder. */
export function snapshotDownload(repoId: string, options?: HubOptions): Promise<string>;
export function hubCacheDir(): string;

export const RECOMMENDED_MODELS: Readonly<Record<string, string>>;
export function resolveModelId(idOrAlias: string): string;
export function isSupported(): boolean;
/** The package version. */
export function getVersion(): string;
/** The C library's version. */
export function getLibraryVersion(): string;
