// The session's WebSocket: connect, send, and reconnect after a drop. Reconnecting backs off
// (a quarter second doubling up to 10 s) and keeps trying for RECONNECT_FOR_MS, then rejoins
// the same session with `resume`: the server replays what was missed, and `seq` drops what
// was already shown.
import {health} from "./api.js";
import {setBadge, showError} from "./dom.js";
import {handleFrame} from "./protocol.js";
import {RECONNECT_FOR_MS, RECONNECT_MAX_DELAY_MS, state} from "./state.js";
import {renderEmptyChat} from "./transcript.js";
import {endTurn, socketOpen, syncButtons} from "./turn.js";

/** Set by the app: shows what /health said (the server badges). */
export const hooks = {health: () => {}};

let retryTimer = null;

export function closeSocket() {
  clearTimeout(retryTimer);
  state.reconnect = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
}

// Signed in with a user token, the socket carries it (`access_token`: a browser cannot set a
// websocket's Authorization header; the server keeps it out of its logs); with the API key, the
// session's own token from /setup.
function socketUrl() {
  const credential = state.caller?.role === "user" ? `access_token=${encodeURIComponent(state.key)}`
    : `token=${encodeURIComponent(state.session.token)}`;
  return `${state.session.websocketUrl}&${credential}`;
}

export function connect(firstFrame) {
  const ws = new WebSocket(socketUrl());
  state.ws = ws;
  state.opened = false;
  ws.onopen = () => {
    state.opened = true;
    const wasReconnecting = Boolean(state.reconnect);
    state.reconnect = null;
    ws.send(JSON.stringify(firstFrame));
    // A message whose `queued` answer never came may or may not be queued: resend it with the
    // same messageId, which the server queues at most once.
    if (state.unacked && firstFrame.action === "resume") ws.send(JSON.stringify(state.unacked));
    syncButtons();
    if (wasReconnecting) checkHealth();
    renderEmptyChat();
  };
  ws.onmessage = (event) => { const frame = joinParts(JSON.parse(event.data)); if (frame) handleFrame(frame); };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    syncButtons();
    // A first socket that never opened was refused (or the server is gone): retrying will not
    // help. One that was open dropped: keep trying to rejoin, the turn went on without us.
    if (!state.opened && !state.reconnect) { giveUp(event.code, false); return; }
    scheduleReconnect(ws, event.code, !state.opened);
  };
}

// A frame larger than API Gateway's 128 KB limit arrives in parts ({event, seq, part, parts,
// data}): the data of parts 1..parts, joined, is the whole frame's JSON.
const partsInFlight = {};
function joinParts(frame) {
  if (!frame.parts) return frame;
  const key = `${frame.event}:${frame.seq}`;
  const got = (partsInFlight[key] ||= []);
  got[frame.part - 1] = frame.data;
  if (got.filter((piece) => piece !== undefined).length < frame.parts) return null;
  delete partsInFlight[key];
  return JSON.parse(got.join(""));
}

// A server that answers /health but keeps refusing the socket will not take this session back
// (its token or record is gone): after this many refusals, say so instead of retrying.
const REFUSALS_WHILE_UP = 3;

async function scheduleReconnect(ws, code, refused) {
  const now = Date.now();
  state.reconnect ||= {since: now, attempt: 0, refusals: 0};
  if (now - state.reconnect.since >= RECONNECT_FOR_MS) { giveUp(code, true); return; }
  if (refused) {
    const answer = await health();
    if (state.ws !== ws || !state.reconnect) return;  // a new session, or closed, meanwhile
    hooks.health(answer);
    if (answer && ++state.reconnect.refusals >= REFUSALS_WHILE_UP) { giveUp(code, false); return; }
  }
  const attempt = ++state.reconnect.attempt;
  const delay = Math.min(RECONNECT_MAX_DELAY_MS, 250 * 2 ** (attempt - 1)) * (0.8 + Math.random() * 0.4);
  setBadge("turn-badge", `Reconnecting… (attempt ${attempt})`, "busy");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => rejoin(ws), delay);
}

function rejoin(dropped) {
  if (state.ws !== dropped || !state.session) return;
  connect({action: "resume", afterSeq: state.lastSeq});
}

/** Back online (the browser says so): try at once instead of waiting out the backoff. */
export function retryNow() {
  if (state.reconnect && state.ws && state.ws.readyState !== WebSocket.OPEN) {
    clearTimeout(retryTimer);
    rejoin(state.ws);
  }
}

async function checkHealth() { hooks.health(await health()); }

// Browsers hide why a WebSocket closed (a refused upgrade is just 1006), so ask /health.
async function giveUp(code, afterRetrying) {
  const minutes = Math.round(RECONNECT_FOR_MS / 60000);
  state.ws = null;
  state.reconnect = null;
  endTurn();
  setBadge("turn-badge", "Disconnected", "bad");
  const answer = await health();
  hooks.health(answer);
  if (!answer) {
    showError(`The server is not running or not reachable at ${state.api} (WebSocket closed with code ${code}` +
              `${afterRetrying ? `; retried for ${minutes} minutes` : ""}). Start it (./scripts/dev) or check the address in Connection, then choose Start session.`);
  } else if (!afterRetrying && state.caller?.role === "user") {
    showError(`The server is up but refused the WebSocket (code ${code}). Your user token may have expired: ` +
              "get a new one from your app, paste it in Connection and choose Load user, then Start session.");
  } else if (!afterRetrying) {
    showError(`The server is up but refused the WebSocket (code ${code}). The session's token is stale or the ` +
              "session is gone (each Start session issues a new token): choose Start session. If it happens again, the server's log says why.");
  } else {
    showError(`The connection dropped (code ${code}) and reconnecting for ${minutes} minutes failed, though the server answers /health. ` +
              "Choose Start session; the conversation is saved and continues.");
  }
}

export function send(frame) {
  if (!socketOpen()) { showError("Not connected: choose Start session."); return false; }
  state.ws.send(JSON.stringify(frame));
  return true;
}
