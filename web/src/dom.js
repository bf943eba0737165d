// Small DOM helpers shared by every module.

export const $ = (id) => document.getElementById(id);

/** An element with properties (className, textContent, type...) and children. */
export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function setBadge(id, text, kind = "") {
  const badge = $(id);
  badge.textContent = text;
  badge.className = `badge ${kind}`;
  badge.hidden = !text;
}

const HINTS = {
  missing_api_key: "Enter the API key (the server's API_KEY) in the header.",
  invalid_api_key: "The API key is wrong: check it against the server's API_KEY.",
  api_key_not_configured: "The server has no API_KEY configured; its operator must set one.",
  anthropic_api_key_missing: "To try the console without a key: ./scripts/dev --offline-model.",
  storage_unavailable: "The server cannot reach its storage; retry in a moment.",
  invalid_token: "The user token was refused: get a new one from your app (or paste the API key) in Connection.",
  token_expired: "The sign-in has expired: get a new user token from your app and paste it in Connection.",
  forbidden_user: "A user token opens only its own user's data and sessions.",
  quota_exceeded: "A limit of this user is reached: Settings shows the usage and limits.",
  daily_budget_reached: "Today's budget is spent: Settings shows the usage and limits.",
  storage_quota_exceeded: "The user's storage is full: Settings shows the usage and limits.",
};
export const hintFor = (code) => HINTS[code];
const withHint = (message, code) => (code && HINTS[code] ? `${message} — ${HINTS[code]}` : message);

export function showError(message, code) {
  $("banner-text").textContent = withHint(message, code);
  $("banner").hidden = false;
}

export function clearError() { $("banner").hidden = true; }

/** A modal question; resolves true only when the user confirms. */
export function confirmAction(question, confirmLabel = "Delete") {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  $("confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true}));
}
