// Errors: every error nmlx throws or rejects with is an Error with a stable
// string `code`. Codes from the C library are the nmlx_status names
// (NMLX_ERR_IO, NMLX_ERR_UNSUPPORTED, ...); the package adds its own below.
export const codes = Object.freeze({
  INVALID_ARG: "NMLX_ERR_INVALID_ARG",
  UNLOADED: "NMLX_ERR_UNLOADED", // the model (or chat) was unloaded / closed
  BUSY: "NMLX_ERR_BUSY",
  QUEUE_FULL: "NMLX_ERR_QUEUE_FULL", // the server's scheduler has no room for another request
  NO_TOKENIZER: "NMLX_ERR_NO_TOKENIZER",
  NO_CHAT_TEMPLATE: "NMLX_ERR_NO_CHAT_TEMPLATE",
  TEMPLATE: "NMLX_ERR_TEMPLATE", // the chat template failed to render
  NOT_BUILT: "NMLX_ERR_NOT_BUILT", // the native addon is missing
  DOWNLOAD: "NMLX_ERR_DOWNLOAD", // an HTTP or network failure
  NOT_FOUND: "NMLX_ERR_NOT_FOUND", // no such repository, revision or file
  OFFLINE: "NMLX_ERR_OFFLINE", // HF_HUB_OFFLINE and the model is not cached
  INTEGRITY: "NMLX_ERR_INTEGRITY", // a downloaded file has the wrong size or hash
});

export class NmlxError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "NmlxError";
    this.code = code;
  }
}

export function invalid(message) {
  return new NmlxError(codes.INVALID_ARG, message);
}
