// How numbers, durations, sizes and dates read in the studio. No DOM, no state.

const missing = (value) => value === null || value === undefined;

/** "1h 05m", "4m 09s", "17s"; an en dash when unknown. */
export function formatDuration(seconds) {
  if (missing(seconds)) return "–";
  const total = Math.max(0, Math.round(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const rest = total % 60;
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  if (minutes) return `${minutes}m ${String(rest).padStart(2, "0")}s`;
  return `${rest}s`;
}

/** Credits with two decimals, the precision the ledger keeps. */
export const formatCredits = (value) => (missing(value) ? "–" : Number(value).toFixed(2));

export function formatBytes(bytes) {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KB`;
  return `${bytes} B`;
}

/** An ISO timestamp in the reader's locale and time zone. */
export const formatTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

/** "1 minute", "3 minutes". */
export const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;

/** The effective batch: "16 examples per step (4 per device × 2 GPUs × 2 accumulated)";
 * ``gpus`` says whether the tier's devices are GPUs or CPU processes. */
export function formatEffectiveBatch(batch, devices, accumulation, gpus) {
  const parts = [`${batch} per device`];
  if (devices > 1) parts.push(`${devices} ${gpus ? "GPUs" : "processes"}`);
  if (accumulation > 1) parts.push(`${accumulation} accumulated`);
  const examples = batch * devices * accumulation;
  return `${plural(examples, "example")} per step`
    + (parts.length > 1 ? ` (${parts.join(" × ")})` : "");
}
