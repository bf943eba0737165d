// Connection: the API's address, the key, the user; and what /health says about the server.
import {health} from "../api.js";
import {$, clearError, setBadge, showError} from "../dom.js";
import {keyRemembered, state} from "../state.js";
import {refreshEmptyChat} from "../transcript.js";
import {syncButtons} from "../turn.js";
import {loadConversations} from "./history.js";
import {loadSettings} from "./settings.js";
import {loadSkills} from "./skills.js";
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

function storeKey(key, remember) {
  localStorage.setItem("console.rememberKey", remember ? "1" : "0");
  (remember ? localStorage : sessionStorage).setItem("console.key", key);
  (remember ? sessionStorage : localStorage).removeItem("console.key");
}

export async function loadUser(event) {
  if (event) event.preventDefault();
  if (!$("connection").reportValidity()) return;
  state.api = $("api-base").value.trim() || window.location.origin;
  state.key = $("api-key").value;
  state.user = $("user-id").value.trim();
  localStorage.setItem("console.api", state.api);
  localStorage.setItem("console.user", state.user);
  storeKey(state.key, $("remember-key").checked);
  state.loadedUser = null;
  state.summaries.clear();
  syncButtons();
  clearError();
  checkHealth();
  try {
    await Promise.all([loadSkills(), loadSettings(), loadConversations()]);
  } catch (err) {
    showError(err.message, err.code);
    // What the page showed for the last user no longer holds: say what to do instead.
    state.loadError = state.user;
    $("connection-summary").textContent = "Connection";
    $("connection-box").open = true;
    $("skills").replaceChildren();
    $("conversations").replaceChildren();
    refreshEmptyChat();
    return;
  }
  if (state.session && state.session.userId !== state.user) forgetSession();  // that chat was another user's
  state.loadedUser = state.user;
  state.loadError = null;
  $("connection-summary").textContent = `Connection · ${state.user}`;
  $("connection-box").open = false;
  syncButtons();
  refreshEmptyChat();
}

export function wireConnection() {
  $("api-base").value = state.api;
  $("api-key").value = state.key;
  $("remember-key").checked = keyRemembered;
  $("user-id").value = state.user;
  $("connection").addEventListener("submit", loadUser);
  $("user-id").addEventListener("input", () => {
    // Another user's name: their data must be loaded before a session can start for them.
    if ($("user-id").value.trim() !== state.loadedUser) { $("start-session").disabled = true; }
    else syncButtons();
  });
  $("remember-key").addEventListener("change", () => storeKey($("api-key").value, $("remember-key").checked));
}
