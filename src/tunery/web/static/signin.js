// Signing in: a token pasted into the form or brought by the link `tunery serve` prints,
// and asking again when the server rejects the stored one.

import { session } from "./api.js";
import { $, hideBanner } from "./dom.js";
import { show } from "./router.js";

/** `start` opens the studio with the stored token; `stream` is stopped when it is rejected. */
export function setUpSignIn({ start, stream }) {
  session.onUnauthorized = (error) => {
    stream.stop();
    session.token = null;
    $("#signin-reason").textContent = `The server did not accept the token (${error.message}). `
      + "It may have been revoked: paste a valid one.";
    $("#signin-reason").hidden = false;
    hideBanner();
    $("#connection").hidden = true;
    $("#balance").hidden = true;
    show("signin");
  };
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    session.token = $("#signin-token").value.trim();
    $("#signin-token").value = "";
    start();
  });
}

/**
 * Store the token a sign-in link carries and take it out of the address bar. It comes in
 * the fragment, which browsers never send to a server.
 */
export function takeTokenFromLink() {
  const token = new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
  if (!token) return;
  session.token = token;
  history.replaceState(null, "", `${location.pathname}#/runs`);
}
