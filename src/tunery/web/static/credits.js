// The balance in the top bar, and the Credits tab: the billing rules and the ledger.

import { $, h } from "./dom.js";
import { formatCredits, formatTime } from "./format.js";
import { state } from "./state.js";
import { refundRules } from "./vocabulary.js";

export function renderBalance() {
  const balance = $("#balance");
  balance.hidden = !state.credits;
  if (state.credits) balance.textContent = `${formatCredits(state.credits.balance)} credits`;
}

export function renderCredits() {
  if (!state.credits) return;
  $("#credits-balance").textContent = formatCredits(state.credits.balance);
  $("#billing-rules").replaceChildren(...refundRules().map((rule) => h("li", {}, rule)));
  $("#ledger-rows").replaceChildren(...[...state.credits.ledger].reverse().map(ledgerRow));
}

function ledgerRow(row) {
  return h("tr", {},
    h("td", {}, formatTime(row.created_at)),
    h("td", {}, row.kind),
    h("td", { class: row.amount < 0 ? "negative" : "positive" },
      `${row.amount > 0 ? "+" : ""}${formatCredits(row.amount)}`),
    h("td", {}, row.run_id ? state.runs.get(row.run_id)?.name || row.run_id : "–"),
    h("td", {}, row.note || ""));
}
