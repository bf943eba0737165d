// The protocol, as tables: every server event has a renderer (RENDER), and every turn status
// what it shows (STATUS).
import {setBadge} from "./dom.js";
import {plural, seconds} from "./format.js";
import {state} from "./state.js";
import {
  assistantBubble, dropThinking, errorCard, headNote, labelModel, note, permissionCard, renderEmptyChat, renderHistory,
  renderNow, resetTranscript, scheduleRender, settleAllPermissions, settlePermission, settleRunningTools,
  thinkingDelta, toolResult, toolUse,
} from "./transcript.js";
import {endTurn, setTurn} from "./turn.js";

/** Set by the app: what to refresh once a turn is over (the conversation list, the files, the
 * usage), and what a quota refusal adds to its card (when to retry, the way to the usage). */
export const hooks = {turnEnded: () => {}, quotaReached: (card, frame) => {}};

// A per-user limit: 429 `quota_exceeded` (sessions, messages a minute), the day's budget.
const QUOTA_CODES = new Set(["quota_exceeded", "daily_budget_reached", "storage_quota_exceeded"]);

const PERMISSION_OUTCOME = {user: null, remembered: "Remembered answer", timeout: "No answer in time: denied",
                            interrupted: "Interrupted: not run", turn_cut_off: "The turn was cut off: not run"};

const STATUS = {
  ready(frame) {
    // A prompt typed as the socket opened may be shown already: the start goes above it.
    headNote(`Ready: conversation ${frame.conversationId}${frame.continued ? ` (${plural(frame.messageCount, "earlier message", "earlier messages")})` : ""}.`);
    renderEmptyChat();
  },
  queued(frame) {
    if (state.unacked && state.unacked.messageId === frame.messageId) state.unacked = null;
    setBadge("turn-badge", frame.position ? `Queued · position ${frame.position}` : "Starting…", "busy");
  },
  running() {
    // A turn's text never continues another's bubble (a message run again after a crash starts afresh).
    if (state.current) { renderNow(state.current); state.current = null; }
    setBadge("turn-badge", "Working…", "busy"); setTurn({active: true});
  },
  rerun(frame) { note(frame.message); },
  interrupting() { setBadge("turn-badge", "Stopping…", "busy"); },
  retrying(frame) {
    if (state.current) { state.current.text = state.current.text.slice(0, -frame.discardStreamed || undefined); scheduleRender(state.current); }
    if (state.thinking && frame.discardThinking) {  // the regenerated reply thinks again
      dropThinking(frame.discardThinking);
      // Its new thinking comes before its text again, so an emptied text bubble goes too.
      if (state.current && !state.current.text) {
        if (state.turnStart === state.current.el) state.turnStart = null;
        state.current.el.remove();
        state.current = null;
      }
    }
    setBadge("turn-badge", "Model busy · retrying", "busy");
  },
  max_turns_reached(frame) {
    note(frame.maxTurns ? `Stopped after ${plural(frame.maxTurns, "model reply", "model replies")} (maxTurns). Send another message to continue.` : frame.message);
  },
  // The workspace could not be saved (kept trying at the next turn) or restored (started empty).
  workspace_save_failed(frame) { note(frame.message); },
  session_repaired(frame) { note(frame.message); },
  workspace_not_restored(frame) { note(frame.message); },
  sandbox_recreated() { note("The sandbox had gone away: a new one was made, its files restored from the last snapshot and the skills reloaded."); },
  compacted(frame) { note(frame.message || "Earlier messages were summarised to fit the model's context."); },
  idle() { endTurn(); },
  budget_reached(frame) { note(frame.message); },
  permission_received() {},  // the card already shows the answer
  resumed() {},
};

export const RENDER = {
  status(frame) {
    const show = STATUS[frame.status];
    if (show) show(frame);
    else note(frame.message ? `${frame.status}: ${frame.message}` : `Status: ${frame.status}`);
  },
  stream(frame) {
    if (frame.type === "thinking") { thinkingDelta(frame.content); return; }
    if (!state.current) state.current = assistantBubble();
    state.current.text += frame.content;
    scheduleRender(state.current);
  },
  message(frame) {
    if (frame.role !== "assistant") return;  // the user's own words are already shown
    if (state.current) renderNow(state.current);
    state.current = null;  // the streamed reply is complete
    state.thinking = null;
  },
  tool_use: (frame) => toolUse(frame),
  tool_result: toolResult,
  permission_request(frame) { permissionCard(frame); setTurn({}); },
  permission_resolved(frame) {
    settlePermission(frame.toolUseId, PERMISSION_OUTCOME[frame.reason] || (frame.decision === "allow" ? "Approved" : "Denied"));
    setTurn({});
  },
  result(frame) {
    state.current = null;
    state.thinking = null;
    settleRunningTools();
    settleAllPermissions("The turn ended: not run");
    labelModel(frame.model);
    const cost = frame.costUsd == null ? "cost unknown" : `$${frame.costUsd.toFixed(4)}`;
    const tokens = `${frame.usage.inputTokens} in / ${frame.usage.outputTokens} out tokens`;
    note(`${plural(frame.turns, "turn", "turns")} · ${tokens} · ${cost} · ${seconds(frame.durationMs)} · ${frame.stopReason}`,
         frame.interrupted ? "result interrupted" : "result");
    endTurn();
    hooks.turnEnded();
  },
  error(frame) {
    const card = errorCard(frame.code, frame.message);
    if (QUOTA_CODES.has(frame.code)) hooks.quotaReached(card, frame);
    // A turn's error (seq > 0) ends it; a refused frame (seq 0) ends only what it would have started.
    if (frame.seq || !state.turnActive) endTurn();
  },
  history(frame) { resetTranscript(); renderHistory(frame.messages); renderEmptyChat(); },
  cleared() { resetTranscript(); note("History cleared."); },
};

export function handleFrame(frame) {
  if (frame.seq) {
    if (frame.seq <= state.lastSeq) return;  // already shown (a resume can overlap)
    state.lastSeq = frame.seq;
  }
  (RENDER[frame.event] || ((f) => note(`Unknown event ${f.event}`)))(frame);
}
