// Webhook endpoints on the Credits tab: list, add (the secret is shown once), delete, and
// the newest deliveries (GET/POST/DELETE /api/v1/webhooks).

import { ApiError, api } from "./api.js";
import { $, h, reportError } from "./dom.js";
import { formatTime } from "./format.js";

// The secret of the endpoint added last: shown until the page reloads, since the tab is
// redrawn whenever the balance changes and the server never shows a secret again.
let secretNote = "";
let secretShownFor = null;  // the endpoint whose one-time secret the note shows

export async function renderWebhooks() {
  const box = $("#webhooks");
  if (!box) return;
  try {
    const [endpoints, deliveries] = await Promise.all([
      api("/webhooks"), api("/webhooks/deliveries")]);
    box.replaceChildren(
      h("h2", {}, "Webhooks"),
      h("p", { class: "muted" }, "Job events (fine_tuning.job.succeeded, failed, cancelled) "
        + "are posted to these URLs, signed as OpenAI signs them (Standard Webhooks)."),
      h("ul", { class: "hub-list" }, ...endpoints.map(endpointRow)),
      addForm(),
      h("p", { id: "webhook-secret", class: "muted", role: "status" }, secretNote),
      deliveries.length ? deliveryTable(deliveries) : null);
  } catch (error) {
    reportError(error, "Webhooks");
  }
}

function endpointRow(endpoint) {
  return h("li", {}, h("code", {}, endpoint.url), " ",
    h("button", { type: "button", class: "danger-outline", onclick: async () => {
      try {
        await api(`/webhooks/${endpoint.id}`, { method: "DELETE" });
        if (endpoint.id === secretShownFor) [secretNote, secretShownFor] = ["", null];
        renderWebhooks();
      } catch (error) {
        reportError(error, "Delete webhook");
      }
    } }, "Delete"));
}

function addForm() {
  const url = h("input", { type: "url", required: true, placeholder: "https://example.com/hooks",
    "aria-label": "Webhook URL" });
  // The server's reason for refusing a URL, under the field (the banner is a screen away
  // from this form, at the top of the Credits tab).
  const problem = h("p", { class: "field-error", id: "webhook-url-error", hidden: true });
  return h("form", { class: "stack", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const endpoint = await api("/webhooks", { method: "POST", json: { url: url.value } });
      secretNote = `Signing secret for ${endpoint.url} (shown once): ${endpoint.secret}`;
      secretShownFor = endpoint.id;
      await renderWebhooks();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 422)) {
        reportError(error, "Add webhook");
        return;
      }
      problem.textContent = error.problems.map((each) => each.message).join("; ")
        || error.message;
      problem.hidden = false;
      url.setAttribute("aria-invalid", "true");
      url.setAttribute("aria-describedby", problem.id);
    }
  } }, url, problem,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Add webhook")));
}

function deliveryTable(deliveries) {
  return h("div", { class: "table-wrap" }, h("table", { class: "ledger" },
    h("caption", {}, "Deliveries (newest first)"),
    h("thead", {}, h("tr", {}, ...["When", "Event", "Job", "Status", "Tries", "Last answer"]
      .map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, ...deliveries.map((row) => h("tr", {},
      h("td", {}, formatTime(row.created_at)), h("td", {}, row.event_type),
      h("td", {}, row.job_id), h("td", {}, row.status), h("td", {}, String(row.attempts)),
      h("td", {}, row.last_error || String(row.last_status_code ?? "")))))));
}
