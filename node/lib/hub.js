// placeholder: replaced by the HuggingFace downloader
export function hubCacheDir() { return ""; }
export async function snapshotDownload(id) {
  throw new Error(`downloads not implemented yet (${id})`);
}
