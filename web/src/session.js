// A session: /setup, then its WebSocket; forgotten when another user is loaded.
import {api} from "./api.js";
import {$, clearError, el, setBadge, showError} from "./dom.js";
import {plural} from "./format.js";
import {loadFiles, renderFiles} from "./panels/files.js";
import {closeSocket, connect} from "./socket.js";
import {state} from "./state.js";
import {resetTranscript} from "./transcript.js";
import {endTurn, syncButtons} from "./turn.js";

export async function startSession(conversationId) {
  if (!state.loadedUser) return;
  clearError();
  closeSocket();
  endTurn();
  const sessionId = `web-${Math.random().toString(36).slice(2, 10)}`;
  $("start-session").disabled = true;
  try {
    state.session = await api("POST", `/setup/${sessionId}?userId=${encodeURIComponent(state.user)}`);
  } catch (err) {
    showError(err.message, err.code);
    // Refused a new session (a quota, say): the one open before carries on.
    if (state.session) connect({action: "resume", afterSeq: state.lastSeq});
    syncButtons();
    return;
  }
  state.readOnly = null;  // a conversation continued here is live again
  $("saved-transcript").replaceChildren();
  const files = state.session.skillsLoaded;
  // The skill files are a disclosure of their own (their count opens the list), so they are not
  // counted twice on this one line.
  $("session-info").textContent = `Session ${sessionId} · ${state.session.setupMethod}${files.length ? " ·" : " · no skill files"}`;
  $("session-files").hidden = !files.length;
  $("session-files-summary").textContent = plural(files.length, "skill file", "skill files");
  $("skills-loaded").replaceChildren(...files.map((p) => el("li", {textContent: p})));
  $("start-session").textContent = "New session";
  resetTranscript();
  state.lastSeq = 0;
  connect({action: "start", ...(conversationId ? {conversationId} : {})});
  syncButtons();
  loadFiles().catch((err) => showError(err.message, err.code));
}

export function forgetSession() {
  closeSocket();
  state.session = null;
  state.readOnly = null;
  endTurn();
  resetTranscript();
  $("session-info").textContent = "No session.";
  $("session-files").hidden = true;
  $("start-session").textContent = "Start session";
  setBadge("turn-badge", "");
  renderFiles(null);
  syncButtons();
}
