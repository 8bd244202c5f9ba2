// The Hub tab: completed runs' LoRA and GGUF bundles, downloaded through signed links.

import { api, followLink } from "./api.js";
import { $, confirmAction, fill, h, reportError } from "./dom.js";
import { formatBytes, formatTime } from "./format.js";
import { state } from "./state.js";

const shortName = (kind) => (kind === "lora" ? "LoRA" : "GGUF");

/** Download a bundle through a fresh signed URL (each click mints one); `note` says so. */
export async function downloadArtifact(entryId, kind, note) {
  try {
    const { url, expires_at: expiresAt } = await api(`/hub/${entryId}/artifacts/${kind}/url`,
      { method: "POST" });
    followLink(url);
    note.textContent = `Started the ${shortName(kind)} download with a fresh signed link `
      + `(valid until ${new Date(expiresAt * 1000).toLocaleTimeString()}).`;
  } catch (error) {
    reportError(error, `Downloading the ${kind} bundle`);
  }
}

export function renderHub() {
  $("#hub-empty").hidden = state.hub.length > 0;
  fill($("#hub-list"), state.hub.map(hubEntry));
}

function hubEntry(entry) {
  const note = h("p", { class: "muted link-note", role: "status" });
  return h("li", { class: "card hub-entry", dataset: { entryId: entry.id } },
    h("h2", {}, entry.name),
    h("p", { class: "muted" }, `${entry.base_model} · ${formatTime(entry.created_at)}`),
    h("ul", { class: "artifacts" }, Object.entries(entry.artifacts).map(([kind, info]) => h("li", {},
      h("span", {}, `${kind === "lora" ? "LoRA adapter" : "GGUF bundle"}: ${info.filename} · `
        + `${formatBytes(info.size)}`),
      h("button", { type: "button", onclick: () => downloadArtifact(entry.id, kind, note) },
        `Download ${shortName(kind)}`)))),
    note,
    h("button", { type: "button", class: "danger-outline", onclick: () => deleteEntry(entry) },
      "Delete entry"));
}

async function deleteEntry(entry) {
  const confirmed = await confirmAction({
    title: `Delete ${entry.name} from the Hub?`,
    body: "Its LoRA and GGUF files are deleted for good. The run record stays.",
    confirm: "Delete entry",
  });
  if (!confirmed) return;
  try {
    await api(`/hub/${entry.id}`, { method: "DELETE" });
    state.hub = state.hub.filter((other) => other.id !== entry.id);
    renderHub();
  } catch (error) {
    reportError(error, "Deleting the Hub entry");
  }
}
