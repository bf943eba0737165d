// Connection: the API's address, the credential, the user; and what /health says about the server.
// The credential is the operator's API key (any user: the User field says which) or an end user's
// token (OIDC, or minted by POST /users/{id}/tokens): then GET /me names the user, and the User
// field shows it read-only. An app can pass the token in the URL fragment (#token=...), which
// no server ever receives; it is taken out of the address at once.
import {health, looksLikeToken, whoAmI} from "../api.js";
import {$, clearError, setBadge, showError} from "../dom.js";
import {state} from "../state.js";
import {refreshEmptyChat} from "../transcript.js";
import {syncButtons} from "../turn.js";
import {loadConversations} from "./history.js";
import {loadSettings} from "./settings.js";
import {loadSkills} from "./skills.js";
import {loadUsage, renderUsage} from "./usage.js";
import {forgetSession} from "../session.js";

export function showHealth(answer) {
  $("offline-badge").hidden = !answer || answer.offlineModel !== true;
  if (answer) setBadge("server-badge", `${answer.environment || "server"} · ${answer.storage || "storage"}`, "ok");
  else setBadge("server-badge", "server unreachable", "bad");
}

export async function checkHealth() {
  const answer = await health();
  showHealth(answer);
  return answer;
}

// The key or token stays in this tab (sessionStorage) unless the user ticks Remember.
function storeKey(key, remember) {
  localStorage.setItem("console.rememberKey", remember ? "1" : "0");
  (remember ? localStorage : sessionStorage).setItem("console.key", key);
  (remember ? sessionStorage : localStorage).removeItem("console.key");
}

/** With a user token the user is the token's: the field is read-only (and not required). */
function lockUser(locked) {
  const field = $("user-id");
  field.readOnly = locked;
  field.required = !locked;
  field.placeholder = locked ? "from the token" : "alice";
  $("user-hint").hidden = !locked;
  $("key-hint").hidden = locked;
}

/**
 * `#token=<user token>` (and optionally `&user=<userId>`, the user the app means: a token of
 * another user is then refused, not silently used). The fragment never reaches a server or its
 * logs; it is removed from the address bar and history at once, and the token kept in this tab
 * only (sessionStorage), as a pasted one is.
 */
export function takeTokenFromFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const token = params.get("token");
  if (!token) return false;
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  state.key = token.trim();
  storeKey(state.key, false);
  state.requestedUser = params.get("user") || null;
  $("api-key").value = state.key;
  $("remember-key").checked = false;
  $("user-id").value = state.requestedUser || "";
  lockUser(true);
  return true;
}

function failLoad(err, user) {
  showError(err.message, err.code);
  // What the page showed for the last user no longer holds: say what to do instead.
  state.loadError = user || "the user";
  state.usage = null;
  $("connection-summary").textContent = "Connection";
  $("connection-box").open = true;
  $("skills").replaceChildren();
  $("conversations").replaceChildren();
  renderUsage();
  refreshEmptyChat();
}

export async function loadUser(event) {
  if (event) event.preventDefault();
  lockUser(looksLikeToken($("api-key").value));
  if (!$("connection").reportValidity()) return;
  state.api = $("api-base").value.trim() || window.location.origin;
  state.key = $("api-key").value.trim();
  localStorage.setItem("console.api", state.api);
  storeKey(state.key, $("remember-key").checked);
  state.loadedUser = null;
  state.usage = null;
  state.summaries.clear();
  syncButtons();
  clearError();
  checkHealth();
  const requested = state.requestedUser;
  state.requestedUser = null;
  try {
    state.caller = await whoAmI();
  } catch (err) {
    state.caller = null;
    failLoad(err, $("user-id").readOnly ? requested : $("user-id").value.trim());
    return;
  }
  if (state.caller.role === "user") {
    lockUser(true);
    $("user-id").value = state.caller.userId;
    state.user = requested || state.caller.userId;
  } else {
    lockUser(false);
    state.user = $("user-id").value.trim();
    if (!state.user) {
      failLoad(new Error("This credential is the operator's (the API key, or none where the server has none): enter the user to act for."), null);
      $("user-id").focus();
      return;
    }
  }
  localStorage.setItem("console.user", state.user);
  try {
    await Promise.all([loadSkills(), loadSettings(), loadConversations(), loadUsage()]);
  } catch (err) {
    if (err.code === "forbidden_user" && state.caller.role === "user" && state.user !== state.caller.userId) {
      err.message = `This token signs in as ${state.caller.userId}, not ${state.user}: it cannot open ${state.user}'s data. ` +
                    `Sign in with ${state.user}'s token, or load ${state.caller.userId}.`;
    }
    failLoad(err, state.user);
    return;
  }
  if (state.session && state.session.userId !== state.user) forgetSession();  // that chat was another user's
  state.loadedUser = state.user;
  state.loadError = null;
  $("connection-summary").textContent = `Connection · ${state.user}${state.caller.role === "user" ? " · token" : ""}`;
  $("connection-box").open = false;
  syncButtons();
  renderUsage();
  refreshEmptyChat();
}

export function wireConnection() {
  $("api-base").value = state.api;
  $("api-key").value = state.key;
  $("remember-key").checked = localStorage.getItem("console.rememberKey") === "1";
  $("user-id").value = state.user;
  lockUser(looksLikeToken(state.key));
  $("connection").addEventListener("submit", loadUser);
  $("user-id").addEventListener("input", () => {
    // Another user's name: their data must be loaded before a session can start for them.
    if ($("user-id").value.trim() !== state.loadedUser) { $("start-session").disabled = true; }
    else syncButtons();
  });
  $("api-key").addEventListener("input", () => {
    const token = looksLikeToken($("api-key").value);
    if (token !== $("user-id").readOnly) $("user-id").value = token ? "" : state.user;
    lockUser(token);
  });
  $("remember-key").addEventListener("change", () => storeKey($("api-key").value.trim(), $("remember-key").checked));
  // An app may hand the console a new token while it is open.
  window.addEventListener("hashchange", () => { if (takeTokenFromFragment()) loadUser(); });
}
