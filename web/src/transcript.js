// The transcript: what the conversation shows, and how it follows new text while the reader
// is at the bottom.
import {$, el, hintFor} from "./dom.js";
import {plural, seconds, toolLine, toolOutcome} from "./format.js";
import {renderMarkdown} from "./markdown.js";
import {state} from "./state.js";

let target = null;  // a saved conversation's own log while it renders, else the live one
const transcript = () => target || $("transcript");
let following = true;

/** Set by the app: sends a permission answer; returns false when not connected. */
export const hooks = {answerPermission: () => false};

export function atBottom() {
  const t = transcript();
  return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
}

export function setFollowing(value) {
  following = value;
  if (following) $("jump-latest").hidden = true;
}

export function follow() {
  if (following) transcript().scrollTop = transcript().scrollHeight;
  else $("jump-latest").hidden = false;
}

export function append(node) {
  transcript().querySelector(".empty-chat")?.remove();
  transcript().append(node);
  follow();
  return node;
}

export function resetTranscript() {
  transcript().replaceChildren();
  state.current = null;
  state.thinking = null;
  state.tools = {};
  state.permissions = {};
  state.awaitingPermission = 0;
  state.turnStart = null;
  following = true;
  $("jump-latest").hidden = true;
}

/** What to do next, when there is nothing to read yet. */
export function renderEmptyChat() {
  if (transcript().querySelector(".msg, .error-card, details, .empty-chat")) return;
  const title = el("strong");
  const hint = el("span");
  if (state.loadError && !state.session) {
    title.textContent = `Could not load ${state.loadError}.`;
    hint.textContent = "The message above says why. Check the address and the key or token in Connection, then choose Load user.";
  } else if (!state.loadedUser) {
    title.textContent = "Who are you chatting as?";
    hint.textContent = "In Connection, enter a user (for example alice) with the API key, or paste a user token, and choose Load user.";
  } else if (!state.session) {
    const count = $("skills").querySelectorAll(".skill").length;
    title.textContent = `Ready when you are, ${state.loadedUser}.`;
    hint.textContent = count
      ? `Choose Start session: ${plural(count, "skill", "skills")} will be copied into a fresh sandbox for the agent.`
      : "Choose Start session for a fresh sandbox. No skills yet: add one (or the sample) so the agent knows your ways.";
  } else {
    title.textContent = "Ask anything.";
    hint.textContent = "For example: “What skills do I have?”";
  }
  transcript().append(el("div", {className: "empty-chat"}, title, hint));
}

export function refreshEmptyChat() {
  transcript().querySelector(".empty-chat")?.remove();
  renderEmptyChat();
}

/** The empty-chat guidance says what is true only while the server answers: drop it otherwise. */
export function dropEmptyChat() { transcript().querySelector(".empty-chat")?.remove(); }

// Streaming re-renders the whole reply at most once per frame.
const dirty = new Set();
export function scheduleRender(entry) {
  if (!dirty.size) requestAnimationFrame(flushRenders);
  dirty.add(entry);
}
function flushRenders() {
  for (const entry of dirty) renderMarkdown(entry.el, entry.text);
  dirty.clear();
  follow();
}
export function renderNow(entry) {
  dirty.delete(entry);
  renderMarkdown(entry.el, entry.text);
  follow();
}

export function userBubble(text) {
  state.turnStart = null;
  return append(el("div", {className: "msg user", textContent: text}));
}

// The first assistant node of a turn: the result names the model above it.
function markTurnStart(node) { if (!state.turnStart) state.turnStart = node; }

export function assistantBubble(text = "") {
  const div = el("div", {className: "msg assistant"});
  const entry = {el: div, text};
  renderMarkdown(div, text);
  append(div);
  markTurnStart(div);
  return entry;
}

/** The model that answered, above the turn's first assistant node. */
export function labelModel(model) {
  const first = state.turnStart;
  state.turnStart = null;
  if (!model || !first || !first.isConnected) return;
  first.before(el("span", {className: "model-tag", textContent: model}));
}

export function note(text, kind = "note") {
  return append(el("div", {className: kind, textContent: text}));
}

/** A note about the whole conversation (its start), above anything already shown. */
export function headNote(text) {
  const div = el("div", {className: "note", textContent: text});
  transcript().querySelector(".empty-chat")?.remove();
  transcript().prepend(div);
  return div;
}

/** One card per failure: the same error again (the same cause, a second frame) moves the card
 * to the end instead of adding another. */
export function errorCard(code, message) {
  const last = [...transcript().querySelectorAll(".error-card")].pop();
  let settled = false;  // a result since the last card means that failure is over
  for (let n = last?.nextElementSibling; n; n = n.nextElementSibling) settled ||= n.matches(".result");
  if (last && !settled && last.dataset.code === code && last.dataset.message === message) last.remove();
  const div = el("div", {className: "error-card"}, el("strong", {textContent: `Error: ${code}`}),
                 el("p", {textContent: message}));  // the server's message already says what to do
  div.dataset.code = code;
  div.dataset.message = message;
  if (hintFor(code)) div.append(el("p", {className: "tip", textContent: hintFor(code)}));
  return append(div);
}

export function thinkingDelta(content) {
  if (!state.thinking) {
    const thought = el("div", {className: "thought"});
    const details = el("details", {className: "thinking"}, el("summary", {textContent: "Thinking"}), thought);
    append(details);
    markTurnStart(details);
    state.thinking = {el: thought, text: ""};
  }
  state.thinking.text += content;
  state.thinking.el.textContent = state.thinking.text;
}

export function dropThinking(count) {
  state.thinking.text = state.thinking.text.slice(0, -count);
  state.thinking.el.textContent = state.thinking.text;
  if (!state.thinking.text) { state.thinking.el.closest("details").remove(); state.thinking = null; }
}

const json = (value) => (typeof value === "string" ? value : JSON.stringify(value, null, 2));

/** A tool call on one line (`bash: ls · exit 0 · 0.2 s`), opened to show its input and output. */
export function toolUse(frame, {live = true} = {}) {
  const line = toolLine(frame.name, frame.input);
  // Server tools (web search, web fetch, MCP) ran on Anthropic's side, not in the sandbox.
  const where = frame.server ? (frame.serverName ? `MCP · ${frame.serverName} · ` : "Server tool · ") : "";
  const status = el("span", {className: "tool-status"});
  const spinner = live ? el("span", {className: "spinner", role: "img"}) : null;
  if (spinner) spinner.setAttribute("aria-label", "running");
  const summary = el("summary", {}, el("span", {className: "tool-line", title: line, textContent: `${where}${line}`}), spinner, status);
  const details = el("details", {className: live ? "tool running" : "tool"}, summary,
                     el("span", {className: "io-label", textContent: "Input"}),
                     el("pre", {className: "tool-input", textContent: json(frame.input)}));
  state.tools[frame.id] = {el: details, name: frame.name, started: performance.now(), live};
  append(details);
  markTurnStart(details);
  state.current = null;  // text after a tool call starts a new bubble
  state.thinking = null;
}

export function toolResult(frame) {
  const call = state.tools[frame.tool_use_id];
  const details = call ? call.el : append(el("details", {className: "tool"}, el("summary", {}, el("span", {className: "tool-line", textContent: "tool result"}))));
  const content = typeof frame.content === "string" ? frame.content : JSON.stringify(frame.content);
  details.append(el("span", {className: "io-label", textContent: "Output"}),
                 el("pre", {className: frame.is_error ? "tool-result error" : "tool-result", textContent: content}));
  const outcome = toolOutcome(call?.name, frame.content, frame.is_error);
  const parts = [outcome.text];
  if (call?.live) parts.push(seconds(performance.now() - call.started));
  details.querySelector(".spinner")?.remove();
  details.classList.remove("running");
  details.classList.toggle("failed", outcome.failed);
  const status = details.querySelector(".tool-status");
  if (status) status.textContent = `· ${parts.join(" · ")}`;
  follow();
}

/** A call the turn ended without answering (interrupted, cut off): it is no longer running. */
export function settleRunningTools() {
  for (const call of Object.values(state.tools)) {
    if (!call.el.classList.contains("running")) continue;
    call.el.classList.remove("running");
    call.el.querySelector(".spinner")?.remove();
    call.el.querySelector(".tool-status").textContent = "· not finished";
  }
}

/** The agent waits for an answer (the user's settings say "ask" for this tool): what it wants
 * to run, Approve / Deny, and whether to remember the answer for the rest of the session. */
export function permissionCard(frame) {
  if (state.permissions[frame.toolUseId]) return;  // replayed after a reconnect: already shown
  // A server tool (web, MCP) is approved for a whole message, before the model starts.
  const perMessage = frame.input && frame.input.scope === "this message";
  const title = el("strong", {}, perMessage ? "The agent asks to use " : "The agent wants to run ",
                   el("code", {textContent: frame.name}), perMessage ? " for this message" : "");
  const remember = el("input", {type: "checkbox", className: "remember"});
  const approve = el("button", {type: "button", className: "approve", textContent: "Approve"});
  const deny = el("button", {type: "button", className: "deny secondary", textContent: "Deny"});
  const outcome = el("span", {className: "outcome"});
  outcome.setAttribute("role", "status");
  const answer = (decision) => {
    if (!hooks.answerPermission({toolUseId: frame.toolUseId, decision, remember: remember.checked})) return;
    settlePermission(frame.toolUseId, decision === "allow" ? "Approved" : "Denied");
  };
  approve.addEventListener("click", () => answer("allow"));
  deny.addEventListener("click", () => answer("deny"));
  const card = el("div", {className: "permission"}, title,
                  el("pre", {className: "tool-input", textContent: json(frame.input)}),
                  el("label", {className: "check remember-row"}, remember, ` Remember for ${frame.name} in this session`),
                  el("div", {className: "row"}, approve, deny, outcome));
  card.setAttribute("role", "group");
  card.setAttribute("aria-label", `Permission for ${frame.name}`);
  if (frame.timeoutSeconds) card.append(el("p", {className: "tip", textContent: `Unanswered, it is denied after ${Math.round(frame.timeoutSeconds)} s.`}));
  state.permissions[frame.toolUseId] = card;
  state.awaitingPermission += 1;
  append(card);
  markTurnStart(card);
  approve.focus({preventScroll: true});
}

export function settlePermission(toolUseId, text) {
  const card = state.permissions[toolUseId];
  if (!card || card.classList.contains("settled")) return;
  card.querySelectorAll("button, input").forEach((n) => { n.disabled = true; });
  card.querySelector(".outcome").textContent = text;
  card.querySelector(".tip")?.remove();  // the timeout no longer applies
  card.classList.add("settled");
  state.awaitingPermission = Math.max(0, state.awaitingPermission - 1);
}

/** Every card still waiting is over when its turn is (a turn cannot wait past its end). */
export function settleAllPermissions(text) {
  for (const id of Object.keys(state.permissions)) settlePermission(id, text);
}

/** A saved conversation's messages, as the live transcript would have shown them. */
export function renderHistory(messages) {
  for (const message of messages) {
    const blocks = typeof message.content === "string" ? [{type: "text", text: message.content}] : message.content || [];
    for (const block of blocks) {
      if (block.type === "text") message.role === "user" ? userBubble(block.text) : assistantBubble(block.text);
      else if (block.type === "thinking") { thinkingDelta(block.thinking || ""); state.thinking = null; }
      else if (block.type === "tool_use") toolUse({id: block.id, name: block.name, input: block.input}, {live: false});
      else if (block.type === "tool_result") toolResult({tool_use_id: block.tool_use_id, content: block.content, is_error: block.is_error});
      else if (block.type === "server_tool_use" || block.type === "mcp_tool_use") toolUse({id: block.id, name: block.name, input: block.input, server: true, serverName: block.server_name}, {live: false});
      else if (/_tool_result$/.test(block.type)) toolResult({tool_use_id: block.tool_use_id, content: block.content, is_error: block.is_error});
    }
    state.current = null;
  }
  state.turnStart = null;
}

/** A saved conversation, rendered read-only into its own log; the live session's transcript,
 * and the reply it may be streaming, stay as they are underneath. */
export function renderSaved(container, messages) {
  const live = {current: state.current, thinking: state.thinking, tools: state.tools, turnStart: state.turnStart,
                permissions: state.permissions, awaitingPermission: state.awaitingPermission};
  container.replaceChildren();
  target = container;
  try {
    Object.assign(state, {current: null, thinking: null, tools: {}, turnStart: null, permissions: {}});
    renderHistory(messages);
    if (!messages.length) container.append(el("div", {className: "empty-chat"}, el("strong", {textContent: "No messages yet."})));
  } finally {
    target = null;
    Object.assign(state, live);
  }
  container.scrollTop = 0;
}
