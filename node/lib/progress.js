// The download progress line of the `nmlx` command: bytes, rate and ETA,
// redrawn in place on a terminal (at most 10 times a second), nothing at
// all when stderr is not a terminal (pipes and logs stay clean).
//   const bar = downloadProgress();   // onProgress handler of loadModel / snapshotDownload
//   ...; bar.done();                  // clears the line
// The rate counts only bytes fetched in this run: files already in the cache
// and the part of a resumed file fetched earlier are not "downloaded now".

const MB = 1e6;

function duration(s) {
  if (!Number.isFinite(s) || s < 0) return "--:--";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(sec).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function bytes(n, scale = n) {
  return scale >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / MB).toFixed(1)} MB`;
}

/** One progress line: "[###---]  42%  12.3/45.6 MB  5.1 MB/s  ETA 0:07  file". */
export function formatProgress({ totalDownloaded, totalBytes, rate, file, width = 24 }) {
  const frac = totalBytes ? Math.min(1, totalDownloaded / totalBytes) : 1;
  const fill = Math.round(frac * width);
  const eta = rate > 0 ? (totalBytes - totalDownloaded) / rate : NaN;
  return `[${"#".repeat(fill)}${"-".repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}%  ` +
    `${bytes(totalDownloaded, totalBytes).split(" ")[0]}/${bytes(totalBytes)}  ` +
    `${rate > 0 ? bytes(rate) : "-- MB"}/s  ` +
    `ETA ${duration(eta)}  ${file}`;
}

/**
 * An onProgress handler drawing formatProgress() on `stream` (default
 * process.stderr) if it is a TTY; a no-op otherwise. `now` (ms) is for tests.
 */
export function downloadProgress({ stream = process.stderr, now = () => Date.now() } = {}) {
  const tty = !!stream.isTTY;
  let file = null, prev = 0, fetched = 0, start = 0, lastDraw = -Infinity, drawn = false;
  const handler = (p) => {
    if (p.file !== file) { // a new file: a complete first report means it was cached
      file = p.file;
      prev = p.downloaded;
    } else {
      if (!fetched && p.downloaded > prev) start = now();
      fetched += Math.max(0, p.downloaded - prev);
      prev = p.downloaded;
    }
    if (!tty) return;
    const t = now(), last = p.totalDownloaded >= p.totalBytes;
    if (t - lastDraw < 100 && !last) return;
    lastDraw = t;
    const secs = (t - start) / 1000;
    const rate = fetched && secs > 0.2 ? fetched / secs : 0;
    const cols = stream.columns || 100;
    stream.write(`\r${formatProgress({ ...p, rate }).slice(0, cols - 1)}\x1b[K`);
    drawn = true;
  };
  handler.done = () => {
    if (drawn) stream.write("\r\x1b[K");
    drawn = false;
  };
  return handler;
}
