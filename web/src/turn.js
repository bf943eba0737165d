// What the composer, its buttons and the status badge show: the one place that decides it.
import {$, setBadge} from "./dom.js";
import {state} from "./state.js";

export const socketOpen = () => Boolean(state.ws && state.ws.readyState === WebSocket.OPEN);

export function setTurn({pending = state.pending, active = state.turnActive} = {}) {
  state.pending = pending;
  state.turnActive = active;
  syncButtons();
}

export function endTurn() { setTurn({pending: false, active: false}); }

// A busy badge with its own words (queued, retrying, stopping) stays until the state changes.
const keepsBusy = () => $("turn-badge").classList.contains("busy") && $("turn-badge").textContent !== "Working…";

export function syncButtons() {
  const open = socketOpen();
  const running = state.pending || state.turnActive;
  const readOnly = Boolean(state.readOnly);
  $("start-session").disabled = !state.loadedUser;
  $("chat-form").hidden = readOnly;
  $("read-only").hidden = !readOnly;
  $("transcript").hidden = readOnly;
  $("saved-transcript").hidden = !readOnly;
  $("back-to-session").hidden = !state.session;
  $("prompt").disabled = !open || readOnly;
  $("send").disabled = !open || readOnly;
  $("interrupt").disabled = !open || !running;
  $("interrupt").hidden = !running;
  $("clear").disabled = !open || running || readOnly;
  // Read-only, the live session may still need the user: say so, Back to the live session is there.
  if (readOnly) setBadge("turn-badge", state.awaitingPermission ? "Read-only · the live session waits for your approval" : "Read-only",
                         state.awaitingPermission ? "warn" : "");
  else if (state.reconnect) return;  // the reconnecting badge says it
  else if (running && state.awaitingPermission) setBadge("turn-badge", "Waiting for your approval", "warn");
  else if (running) { if (!keepsBusy()) setBadge("turn-badge", "Working…", "busy"); }
  else if (open) setBadge("turn-badge", "Connected", "ok");
}

/** The composer starts at one line and grows with what is typed, up to its CSS max-height. */
export function autosize() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = `${prompt.scrollHeight}px`;
}
