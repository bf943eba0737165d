// Claude Agent Console: manage a user's skills and settings, and chat with their agent.
// Plain JavaScript, no build step; a working reference for your own frontend. Markdown is
// rendered by marked and sanitised by DOMPurify, both vendored in web/vendor/.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_REMEMBERED = localStorage.getItem("console.rememberKey") === "1";
const state = {
  api: localStorage.getItem("console.api") || window.location.origin,
  // The key stays in this tab (sessionStorage) unless the user asks to remember it.
  key: (KEY_REMEMBERED ? localStorage : sessionStorage).getItem("console.key") || "",
  user: localStorage.getItem("console.user") || "",
  loadedUser: null,    // the user whose skills, settings and conversations are shown
  skills: {},          // name -> detail (for folder files)
  session: null,       // the /setup answer
  ws: null,
  opened: false,       // whether the current socket ever opened (a refusal never does)
  lastSeq: 0,
  pending: false,      // a message was sent and its turn has not ended
  unacked: null,       // the last message frame sent whose `queued` answer has not come (resent on reconnect)
  turnActive: false,   // a turn is running on the server
  reconnects: 0,
  current: null,       // {el, text}: the assistant reply receiving stream deltas
  thinking: null,      // {el, text}: the reply's thinking, collapsed
  tools: {},           // tool_use_id -> <details>
  permissions: {},     // toolUseId -> the Approve / Deny card
  conversations: [],   // the listed page(s): {conversationId, size, updated}
  conversationsCursor: null,
  summaries: new Map(),  // conversationId -> {updated, prompt, count}: fetched once per version
};
const MAX_RECONNECTS = 5;
const CONVERSATIONS_PAGE = 10;
const SAMPLE_SKILL = {
  name: "debugging.md",
  content: "# Debugging\n\nWhen the user reports a bug:\n\n1. Ask for the exact error message and what changed last.\n" +
           "2. Read the logs before guessing.\n3. Bisect: halve the change until the culprit is found.\n",
};

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

// -- errors -------------------------------------------------------------------------------

const HINTS = {
  missing_api_key: "Enter the API key (the server's API_KEY) in the header.",
  invalid_api_key: "The API key is wrong: check it against the server's API_KEY.",
  api_key_not_configured: "The server has no API_KEY configured; its operator must set one.",
  anthropic_api_key_missing: "To try the console without a key: ./scripts/dev --offline-model.",
  storage_unavailable: "The server cannot reach its storage; retry in a moment.",
};
const withHint = (message, code) => (code && HINTS[code] ? `${message} — ${HINTS[code]}` : message);

function showError(message, code) {
  $("banner-text").textContent = withHint(message, code);
  $("banner").hidden = false;
}

function clearError() { $("banner").hidden = true; }

// -- REST -----------------------------------------------------------------------------------

const base = () => state.api.replace(/\/$/, "");

async function api(method, path, body, extraHeaders = {}) {
  const headers = {...extraHeaders};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(base() + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    const error = new Error(`Cannot reach ${state.api} (${err.message}). Is the server running, and does it allow this origin (CORS)?`);
    error.code = "unreachable";
    throw error;
  }
  const text = await response.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch { data = {error: `HTTP ${response.status}: ${text.slice(0, 200)}`}; }
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.code = data.code;
    error.status = response.status;
    throw error;
  }
  return data;
}

const userPath = () => `/users/${encodeURIComponent(state.user)}`;

// /health is open: it says whether the server runs and whether the model is the offline stand-in.
async function checkHealth() {
  try {
    const response = await fetch(`${base()}/health`);
    const health = await response.json();
    $("offline-badge").hidden = health.offlineModel !== true;
    setBadge("server-badge", `${health.environment || "server"} · ${health.storage || "storage"}`, "ok");
    return health;
  } catch {
    $("offline-badge").hidden = true;
    setBadge("server-badge", "server unreachable", "bad");
    return null;
  }
}

function setBadge(id, text, kind = "") {
  const badge = $(id);
  badge.textContent = text;
  badge.className = `badge ${kind}`;
  badge.hidden = !text;
}

// -- views (tabs at a phone's width; side by side otherwise) ----------------------------------

function showView(panelId) {
  $("views").dataset.view = panelId;
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    const selected = tab.getAttribute("aria-controls") === panelId;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
  }
}

function onTabKey(event) {
  const tabs = [...document.querySelectorAll("#tabs [role=tab]")];
  const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
  if (!step) return;
  const next = tabs[(tabs.indexOf(event.target) + step + tabs.length) % tabs.length];
  showView(next.getAttribute("aria-controls"));
  next.focus();
}

// -- transcript: follows new text while the reader is at the bottom ---------------------------

const transcript = () => $("transcript");
let following = true;

function atBottom() {
  const t = transcript();
  return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
}

function follow() {
  if (following) transcript().scrollTop = transcript().scrollHeight;
  else $("jump-latest").hidden = false;
}

function append(node) {
  transcript().querySelector(".empty-chat")?.remove();
  transcript().append(node);
  follow();
  return node;
}

function resetTranscript() {
  transcript().replaceChildren();
  state.current = null;
  state.thinking = null;
  state.tools = {};
  following = true;
  $("jump-latest").hidden = true;
}

// What to do next, when there is nothing to read yet.
function renderEmptyChat() {
  if (transcript().querySelector(".msg, .error-card, details, .empty-chat")) return;
  const box = document.createElement("div");
  box.className = "empty-chat";
  const title = document.createElement("strong");
  const hint = document.createElement("span");
  if (!state.loadedUser) {
    title.textContent = "Who are you chatting as?";
    hint.textContent = "Enter a user name above (for example alice) and choose Load user.";
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
  box.append(title, hint);
  transcript().append(box);
}

// -- markdown: rendered, then sanitised (a reply may carry hostile HTML) -----------------------

const markdown = new marked.Marked({
  gfm: true,
  renderer: {
    // Images are not loaded: a hostile reply could leak the conversation through an image URL.
    image({href, text}) { return `<a href="${encodeURI(href || "")}">${text || "image"}</a>`; },
    checkbox({checked}) { return checked ? "☑ " : "☐ "; },
  },
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});
const PURIFY = {FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "svg", "math"],
                FORBID_ATTR: ["style"]};

function renderMarkdown(el, text) {
  el.innerHTML = DOMPurify.sanitize(markdown.parse(text), PURIFY);
  for (const pre of el.querySelectorAll("pre")) {
    const wrap = document.createElement("div");
    wrap.className = "code";
    pre.replaceWith(wrap);
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    copy.addEventListener("click", () => copyText(pre.textContent, copy));
    wrap.append(pre, copy);
  }
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

// Streaming re-renders the whole reply at most once per frame.
const dirty = new Set();
function scheduleRender(entry) {
  if (!dirty.size) requestAnimationFrame(flushRenders);
  dirty.add(entry);
}
function flushRenders() {
  for (const entry of dirty) renderMarkdown(entry.el, entry.text);
  dirty.clear();
  follow();
}

function userBubble(text) {
  const div = document.createElement("div");
  div.className = "msg user";
  div.textContent = text;
  return append(div);
}

function assistantBubble(text = "") {
  const div = document.createElement("div");
  div.className = "msg assistant";
  const entry = {el: div, text};
  renderMarkdown(div, text);
  append(div);
  return entry;
}

function note(text, kind = "note") {
  const div = document.createElement("div");
  div.className = kind;
  div.textContent = text;
  return append(div);
}

// One card per failure: the same error again (the same cause, a second frame) moves the card
// to the end instead of adding another.
function errorCard(code, message) {
  const last = [...transcript().querySelectorAll(".error-card")].pop();
  let settled = false;  // a result since the last card means that failure is over
  for (let el = last?.nextElementSibling; el; el = el.nextElementSibling) settled ||= el.matches(".result");
  if (last && !settled && last.dataset.code === code && last.dataset.message === message) last.remove();
  const div = document.createElement("div");
  div.className = "error-card";
  div.dataset.code = code;
  div.dataset.message = message;
  const title = document.createElement("strong");
  title.textContent = `Error: ${code}`;
  const body = document.createElement("p");
  body.textContent = message;  // the server's message already says what to do
  div.append(title, body);
  if (code === "anthropic_api_key_missing") div.append(Object.assign(document.createElement("p"), {className: "tip", textContent: HINTS[code]}));
  return append(div);
}

function thinkingDelta(content) {
  if (!state.thinking) {
    const details = document.createElement("details");
    details.className = "thinking";
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    const thought = document.createElement("div");
    thought.className = "thought";
    details.append(summary, thought);
    append(details);
    state.thinking = {el: thought, text: ""};
  }
  state.thinking.text += content;
  state.thinking.el.textContent = state.thinking.text;
}

function toolUse(frame) {
  const details = document.createElement("details");
  details.className = "tool";
  const summary = document.createElement("summary");
  const name = document.createElement("code");
  name.textContent = frame.name;
  // Server tools (web search, web fetch, MCP) ran on Anthropic's side, not in the sandbox.
  summary.append(frame.server ? (frame.serverName ? `MCP · ${frame.serverName} · ` : "Server tool · ") : "Tool · ", name);
  const input = document.createElement("pre");
  input.className = "tool-input";
  input.textContent = JSON.stringify(frame.input, null, 2);
  details.append(summary, input);
  state.tools[frame.id] = details;
  append(details);
  state.current = null;  // text after a tool call starts a new bubble
  state.thinking = null;
}

function toolResult(frame) {
  const details = state.tools[frame.tool_use_id] || append(Object.assign(document.createElement("details"), {className: "tool"}));
  const output = document.createElement("pre");
  output.className = frame.is_error ? "tool-result error" : "tool-result";
  output.textContent = typeof frame.content === "string" ? frame.content : JSON.stringify(frame.content);
  details.append(output);
  follow();
}

// The agent waits for an answer (the user's settings say "ask" for this tool): show what it
// wants to run, Approve / Deny, and whether to remember the answer for the rest of the session.
function permissionCard(frame) {
  if (state.permissions[frame.toolUseId]) return;  // replayed after a reconnect: already shown
  const card = document.createElement("div");
  card.className = "permission";
  card.setAttribute("role", "group");
  card.setAttribute("aria-label", `Permission for ${frame.name}`);
  const title = document.createElement("strong");
  // A server tool (web, MCP) is approved for a whole message, before the model starts.
  const perMessage = frame.input && frame.input.scope === "this message";
  title.append(perMessage ? "The agent asks to use " : "The agent wants to run ", Object.assign(document.createElement("code"), {textContent: frame.name}),
               perMessage ? " for this message" : "");
  const input = Object.assign(document.createElement("pre"), {className: "tool-input", textContent: JSON.stringify(frame.input, null, 2)});
  const remember = Object.assign(document.createElement("input"), {type: "checkbox", className: "remember"});
  const rememberLabel = Object.assign(document.createElement("label"), {className: "check"});
  rememberLabel.append(remember, ` Remember for ${frame.name} in this session`);
  const approve = Object.assign(document.createElement("button"), {type: "button", className: "approve", textContent: "Approve"});
  const deny = Object.assign(document.createElement("button"), {type: "button", className: "deny secondary", textContent: "Deny"});
  const outcome = Object.assign(document.createElement("span"), {className: "outcome"});
  outcome.setAttribute("role", "status");
  const row = Object.assign(document.createElement("div"), {className: "row"});
  row.append(approve, deny, outcome);
  const answer = (decision) => {
    if (!send({action: "permission", toolUseId: frame.toolUseId, decision, remember: remember.checked})) return;
    settlePermission(frame.toolUseId, decision === "allow" ? "Approved" : "Denied");
  };
  approve.addEventListener("click", () => answer("allow"));
  deny.addEventListener("click", () => answer("deny"));
  card.append(title, input, rememberLabel, row);
  if (frame.timeoutSeconds) card.append(Object.assign(document.createElement("p"), {className: "tip",
    textContent: `Unanswered, it is denied after ${Math.round(frame.timeoutSeconds)} s.`}));
  state.permissions[frame.toolUseId] = card;
  append(card);
  approve.focus({preventScroll: true});
}

function settlePermission(toolUseId, text) {
  const card = state.permissions[toolUseId];
  if (!card) return;
  card.querySelectorAll("button, input").forEach((el) => { el.disabled = true; });
  card.querySelector(".outcome").textContent = text;
  card.querySelector(".tip")?.remove();  // the timeout no longer applies
  card.classList.add("settled");
}

const PERMISSION_OUTCOME = {user: null, remembered: "Remembered answer", timeout: "No answer in time: denied", interrupted: "Interrupted: not run"};

function renderHistory(messages) {
  for (const message of messages) {
    const blocks = typeof message.content === "string" ? [{type: "text", text: message.content}] : message.content || [];
    for (const block of blocks) {
      if (block.type === "text") message.role === "user" ? userBubble(block.text) : assistantBubble(block.text);
      else if (block.type === "thinking") { thinkingDelta(block.thinking || ""); state.thinking = null; }
      else if (block.type === "tool_use") toolUse({id: block.id, name: block.name, input: block.input});
      else if (block.type === "tool_result") toolResult({tool_use_id: block.tool_use_id, content: block.content, is_error: block.is_error});
      else if (block.type === "server_tool_use" || block.type === "mcp_tool_use") toolUse({id: block.id, name: block.name, input: block.input, server: true, serverName: block.server_name});
      else if (/_tool_result$/.test(block.type)) toolResult({tool_use_id: block.tool_use_id, content: block.content, is_error: block.is_error});
    }
    state.current = null;
  }
}

// -- turn state: what the buttons and the badge show ------------------------------------------

function setTurn({pending = state.pending, active = state.turnActive} = {}) {
  state.pending = pending;
  state.turnActive = active;
  syncButtons();
}

function endTurn() { setTurn({pending: false, active: false}); }

// Every server event has a renderer: this is the protocol, as a table.
const RENDER = {
  status(frame) {
    const s = frame.status;
    if (s === "ready") {
      note(`Ready: conversation ${frame.conversationId}${frame.continued ? ` (${plural(frame.messageCount, "earlier message", "earlier messages")})` : ""}.`);
      renderEmptyChat();
    }
    else if (s === "queued") {
      if (state.unacked && state.unacked.messageId === frame.messageId) state.unacked = null;
      setBadge("turn-badge", frame.position ? `Queued · position ${frame.position}` : "Starting…", "busy");
    }
    else if (s === "running") { setBadge("turn-badge", "Working…", "busy"); setTurn({active: true}); }
    else if (s === "interrupting") setBadge("turn-badge", "Interrupting…", "busy");
    else if (s === "retrying") {
      if (state.current) { state.current.text = state.current.text.slice(0, -frame.discardStreamed || undefined); scheduleRender(state.current); }
      if (state.thinking && frame.discardThinking) {  // the regenerated reply thinks again
        state.thinking.text = state.thinking.text.slice(0, -frame.discardThinking);
        state.thinking.el.textContent = state.thinking.text;
        if (!state.thinking.text) { state.thinking.el.closest("details").remove(); state.thinking = null; }
        // Its new thinking comes before its text again, so an emptied text bubble goes too.
        if (state.current && !state.current.text) { state.current.el.remove(); state.current = null; }
      }
      setBadge("turn-badge", "Model busy · retrying", "busy");
    }
    else if (s === "max_turns_reached") note(frame.maxTurns ? `Stopped after ${plural(frame.maxTurns, "model reply", "model replies")} (maxTurns). Send another message to continue.` : frame.message);
    else if (s === "sandbox_recreated") note("The sandbox had gone away: a new one was made, its files restored from the last snapshot and the skills reloaded.");
    else if (s === "compacted") note(frame.message || "Earlier messages were summarised to fit the model's context.");
    else if (s === "idle") endTurn();
    else if (s === "budget_reached") note(frame.message);
    else if (s === "permission_received") return;  // the card already shows the answer
    else if (s !== "resumed") note(frame.message ? `${s}: ${frame.message}` : `Status: ${s}`);
  },
  stream(frame) {
    if (frame.type === "thinking") { thinkingDelta(frame.content); return; }
    if (!state.current) state.current = assistantBubble();
    state.current.text += frame.content;
    scheduleRender(state.current);
  },
  message(frame) {
    if (frame.role !== "assistant") return;  // the user's own words are already shown
    if (state.current) { dirty.delete(state.current); renderMarkdown(state.current.el, state.current.text); follow(); }
    state.current = null;  // the streamed reply is complete
    state.thinking = null;
  },
  tool_use: toolUse,
  tool_result: toolResult,
  permission_request: permissionCard,
  permission_resolved(frame) {
    settlePermission(frame.toolUseId, PERMISSION_OUTCOME[frame.reason] || (frame.decision === "allow" ? "Approved" : "Denied"));
  },
  result(frame) {
    state.current = null;
    state.thinking = null;
    const cost = frame.costUsd == null ? "cost unknown" : `$${frame.costUsd.toFixed(4)}`;
    const tokens = `${frame.usage.inputTokens} in / ${frame.usage.outputTokens} out tokens`;
    note(`${plural(frame.turns, "turn", "turns")} · ${tokens} · ${cost} · ${(frame.durationMs / 1000).toFixed(1)} s · ${frame.stopReason}`,
         frame.interrupted ? "result interrupted" : "result");
    endTurn();
    loadConversations().catch(() => {});
    loadFiles().catch(() => {});
  },
  error(frame) {
    errorCard(frame.code, frame.message);
    // A turn's error (seq > 0) ends it; a refused frame (seq 0) ends only what it would have started.
    if (frame.seq || !state.turnActive) endTurn();
  },
  history(frame) { resetTranscript(); renderHistory(frame.messages); renderEmptyChat(); },
  cleared() { resetTranscript(); note("History cleared."); },
};

function handleFrame(frame) {
  if (frame.seq) {
    if (frame.seq <= state.lastSeq) return;  // already shown (a resume can overlap)
    state.lastSeq = frame.seq;
  }
  (RENDER[frame.event] || ((f) => note(`Unknown event ${f.event}`)))(frame);
}

// -- skills -----------------------------------------------------------------------------------

async function loadSkills() {
  const data = await api("GET", `${userPath()}/skills`);
  const list = $("skills");
  list.replaceChildren();
  for (const item of data.items) {
    const li = document.createElement("li");
    li.className = "skill";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = item.name;
    button.setAttribute("aria-label", `Open skill ${item.name}`);
    if (item.name === $("skill-name").value.trim()) li.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openSkill(item.name));
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${item.form === "folder" ? "folder" : "file"} · ${item.description || "no description"}`;
    li.append(button, meta);
    list.append(li);
  }
  if (!data.items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    const text = document.createElement("p");
    text.textContent = "No skills yet. A skill is a markdown note the agent reads when it helps: how you debug, your team's conventions, a checklist.";
    const sample = document.createElement("button");
    sample.type = "button";
    sample.id = "add-sample";
    sample.className = "secondary small-button";
    sample.textContent = "Add a sample skill";
    sample.addEventListener("click", addSampleSkill);
    li.append(text, sample);
    list.append(li);
  }
}

async function addSampleSkill() {
  try {
    await api("POST", `${userPath()}/skills`, SAMPLE_SKILL);
    await loadSkills();
    await openSkill(SAMPLE_SKILL.name);
    $("skill-status").textContent = "Sample skill added ✓";
    refreshEmptyChat();
  } catch (err) {
    $("skill-error").textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
  }
}

async function openSkill(name) {
  const detail = await api("GET", `${userPath()}/skills/${encodeURIComponent(name)}`);
  state.skills[name] = detail;
  $("skill-name").value = name;
  $("skill-content").value = detail.content;
  for (const li of $("skills").querySelectorAll(".skill")) li.toggleAttribute("aria-current", li.querySelector("button").textContent === name);
  $("skill-error").textContent = "";
  $("skill-status").textContent = "";
  $("skill-content").focus();
}

async function saveSkill(event) {
  event.preventDefault();
  const name = $("skill-name").value.trim();
  const content = $("skill-content").value;
  const existing = state.skills[name];
  // A folder skill keeps its other files: send them back alongside the edited SKILL.md.
  const body = !name.endsWith(".md") && existing && existing.files && Object.keys(existing.files).length
    ? {name, files: {...existing.files, "SKILL.md": content}}
    : {name, content};
  $("skill-status").textContent = "";
  try {
    await api("POST", `${userPath()}/skills`, body);
    $("skill-error").textContent = "";
    $("skill-status").textContent = `Saved ${name} ✓`;
    await loadSkills();
    refreshEmptyChat();
  } catch (err) {
    $("skill-error").textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
  }
}

async function deleteSkill() {
  const name = $("skill-name").value.trim();
  if (!name) { $("skill-error").textContent = "Open a skill first: choose its name in the list."; return; }
  if (!await confirmAction(`Delete the skill “${name}”? Its files are removed from storage; this cannot be undone.`)) return;
  try {
    await api("DELETE", `${userPath()}/skills/${encodeURIComponent(name)}`);
    delete state.skills[name];
    $("skill-name").value = "";
    $("skill-content").value = "";
    $("skill-error").textContent = "";
    $("skill-status").textContent = `Deleted ${name}.`;
    await loadSkills();
    refreshEmptyChat();
  } catch (err) {
    $("skill-error").textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
  }
}

// A modal question; resolves true only when the user confirms.
function confirmAction(question, confirmLabel = "Delete") {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  $("confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true}));
}

// -- settings -----------------------------------------------------------------------------------

async function loadSettings() {
  const {settings} = await api("GET", `${userPath()}/settings`);
  $("set-model").value = settings.model || "";
  $("set-max-turns").value = settings.maxTurns || "";
  $("set-system").value = settings.systemPrompt || "";
  $("set-network").checked = settings.allowNetwork;
  $("set-perm-bash").value = settings.permissions?.bash || "allow";
  $("set-perm-edit").value = settings.permissions?.str_replace_based_edit_tool || "allow";
  $("set-budget").value = settings.maxBudgetUsd ?? "";
  $("set-web-search").checked = Boolean(settings.webSearch);
  $("set-web-fetch").checked = Boolean(settings.webFetch);
  state.webTools = {webSearch: settings.webSearch, webFetch: settings.webFetch};
  $("settings-status").textContent = "";
}

async function saveSettings(event) {
  event.preventDefault();
  const maxTurns = $("set-max-turns").value;
  const status = $("settings-status");
  status.textContent = "";
  try {
    await api("PATCH", `${userPath()}/settings`, {
      model: $("set-model").value.trim() || null,
      maxTurns: maxTurns ? Number(maxTurns) : null,
      systemPrompt: $("set-system").value || null,
      allowNetwork: $("set-network").checked,
      permissions: {bash: $("set-perm-bash").value, str_replace_based_edit_tool: $("set-perm-edit").value},
      maxBudgetUsd: $("set-budget").value ? Number($("set-budget").value) : null,
      // A domain list set through the API stays while the box stays ticked.
      webSearch: $("set-web-search").checked ? (state.webTools?.webSearch || true) : false,
      webFetch: $("set-web-fetch").checked ? (state.webTools?.webFetch || true) : false,
    });
    status.className = "saved";
    status.textContent = "Saved ✓";
  } catch (err) {
    status.className = "error";
    status.textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
  }
}

// -- conversations -------------------------------------------------------------------------------

const formatSize = (bytes) => (bytes < 1024 ? plural(bytes, "byte", "bytes") : `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`);
const formatDate = (iso) => new Date(iso).toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});

function firstPrompt(messages) {
  for (const message of messages || []) {
    if (message.role !== "user") continue;
    if (typeof message.content === "string") return message.content;
    const text = (message.content || []).find((b) => b.type === "text");
    if (text) return text.text;
  }
  return null;
}

// The list holds ids, sizes and dates; a conversation's first prompt needs its body, so only the
// shown page is read, and each version of a conversation only once.
async function summarise(item) {
  const known = state.summaries.get(item.conversationId);
  if (known && known.updated === item.updated) return known;
  const data = await api("GET", `${userPath()}/conversations/${encodeURIComponent(item.conversationId)}`);
  const messages = Array.isArray(data.conversation?.messages) ? data.conversation.messages : [];
  const summary = {updated: item.updated, prompt: firstPrompt(messages), count: messages.length};
  state.summaries.set(item.conversationId, summary);
  return summary;
}

async function loadConversations(more = false) {
  const cursor = more && state.conversationsCursor ? `&cursor=${encodeURIComponent(state.conversationsCursor)}` : "";
  const data = await api("GET", `${userPath()}/conversations?limit=${CONVERSATIONS_PAGE}${cursor}`);
  const page = data.conversations;
  state.conversations = more ? [...state.conversations, ...page] : page;
  state.conversationsCursor = data.nextCursor || null;
  renderConversations();
  await Promise.all(page.map((item) => summarise(item).then(renderConversations, () => {})));
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  for (const item of state.conversations) {
    const summary = state.summaries.get(item.conversationId);
    const prompt = summary && summary.updated === item.updated ? summary.prompt : null;
    const li = document.createElement("li");
    li.className = "conv";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conv-open";
    open.setAttribute("aria-label", `Open conversation ${prompt ? `“${prompt.slice(0, 80)}”` : item.conversationId} read-only`);
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = prompt || (summary ? "(no message yet)" : item.conversationId);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = [formatDate(item.updated), formatSize(item.size),
                        summary ? plural(summary.count, "message", "messages") : null].filter(Boolean).join(" · ");
    open.append(title, meta);
    open.addEventListener("click", () => openConversation(item.conversationId));
    const actions = document.createElement("span");
    actions.className = "conv-actions";
    const resume = document.createElement("button");
    resume.type = "button";
    resume.className = "secondary small-button";
    resume.textContent = "Continue";
    resume.setAttribute("aria-label", `Continue conversation ${item.conversationId} in a new session`);
    resume.addEventListener("click", () => { showView("chat-panel"); startSession(item.conversationId); });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger small-button";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete conversation ${item.conversationId}`);
    remove.addEventListener("click", () => deleteConversation(item.conversationId, prompt));
    actions.append(resume, remove);
    li.append(open, actions);
    list.append(li);
  }
  if (!state.conversations.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No conversations yet. Each chat is saved here as it goes.";
    list.append(li);
  }
  $("conversations-more").hidden = !state.conversationsCursor;
}

async function deleteConversation(id, prompt) {
  const what = prompt ? `“${prompt.slice(0, 60)}”` : id;
  if (!await confirmAction(`Delete the conversation ${what}? This cannot be undone.`)) return;
  try {
    await api("DELETE", `${userPath()}/conversations/${encodeURIComponent(id)}`);
    state.summaries.delete(id);
    await loadConversations();
  } catch (err) {
    showError(err.message, err.code);
  }
}

async function openConversation(id) {
  try {
    const data = await api("GET", `${userPath()}/conversations/${encodeURIComponent(id)}`);
    showView("chat-panel");
    resetTranscript();
    note(`Conversation ${id} (read-only): choose Continue in the list to carry it on.`);
    renderHistory(data.conversation.messages || []);
  } catch (err) {
    showError(err.message, err.code);
  }
}

// -- workspace files: a tree, download, upload by drag and drop --------------------------------------

const filesPath = () => `/sessions/${encodeURIComponent(state.session.sessionId)}/files`;

function fileSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

// The files API carries raw bytes, not JSON; its errors are JSON like every other route's.
async function rawRequest(method, path, {body, headers = {}} = {}) {
  const all = {...headers};
  if (state.key) all.Authorization = `Bearer ${state.key}`;
  let response;
  try {
    response = await fetch(base() + path, {method, headers: all, body});
  } catch (err) {
    const error = new Error(`Cannot reach ${state.api} (${err.message}).`);
    error.code = "unreachable";
    throw error;
  }
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.code = data.code;
    throw error;
  }
  return response;
}

async function loadFiles() {
  if (!state.session) { renderFiles(null); return; }
  renderFiles(await api("GET", filesPath()));
}

function renderFiles(listing) {
  const ready = Boolean(state.session && listing);
  $("files-refresh").disabled = !state.session;
  $("files-drop").setAttribute("aria-disabled", String(!state.session));
  if (!ready) {
    $("files-tree").replaceChildren();
    $("files-info").textContent = "Start a session to see its files.";
    return;
  }
  const count = listing.files.filter((f) => f.type === "file").length;
  $("files-info").textContent = `${plural(count, "file", "files")} in /workspace` +
    (listing.source === "snapshot" ? " (from the last snapshot: the sandbox is not running)" : "");
  // Each folder gets its own list; entries come sorted by path, so a folder precedes its content.
  const lists = new Map([["/workspace", $("files-tree")]]);
  $("files-tree").replaceChildren();
  for (const entry of listing.files) {
    const parent = entry.path.slice(0, entry.path.lastIndexOf("/"));
    const name = entry.path.slice(parent.length + 1);
    const li = document.createElement("li");
    if (entry.type === "dir") {
      const details = document.createElement("details");
      details.open = !name.startsWith(".");
      const inner = document.createElement("ul");
      details.append(Object.assign(document.createElement("summary"), {textContent: `${name}/`}), inner);
      li.append(details);
      lists.set(entry.path, inner);
    } else {
      li.className = "file";
      if (entry.type === "file") {
        const open = Object.assign(document.createElement("button"), {type: "button", className: "file-name", textContent: name});
        open.setAttribute("aria-label", `Download ${entry.path}`);
        open.addEventListener("click", () => downloadFile(entry.path).catch((err) => showError(err.message, err.code)));
        li.append(open, Object.assign(document.createElement("span"), {className: "meta", textContent: fileSize(entry.size)}));
      } else {
        li.append(Object.assign(document.createElement("span"), {textContent: `${name} (link)`}));
      }
      const remove = Object.assign(document.createElement("button"), {type: "button", className: "ghost", textContent: "✕"});
      remove.setAttribute("aria-label", `Delete ${entry.path}`);
      remove.addEventListener("click", () => deleteFile(entry.path));
      li.append(remove);
    }
    (lists.get(parent) || $("files-tree")).append(li);
  }
  if (!listing.files.length) {
    $("files-tree").append(Object.assign(document.createElement("li"), {className: "small", textContent: "Empty: drop files below, or ask the agent to make some."}));
  }
}

async function downloadFile(path) {
  const response = await rawRequest("GET", `${filesPath()}/content?path=${encodeURIComponent(path)}`, {headers: {Accept: "*/*"}});
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), {href: url, download: path.split("/").pop()});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

async function uploadFiles(files) {
  if (!state.session || !files.length) return;
  clearError();
  let done = 0;
  try {
    for (const file of files) {
      await rawRequest("PUT", `${filesPath()}/content?path=${encodeURIComponent(file.webkitRelativePath || file.name)}`,
                       {body: file, headers: {"Content-Type": "application/octet-stream"}});
      done += 1;
    }
  } catch (err) {
    showError(err.message, err.code);
  }
  if (done) $("files-status").textContent = `Uploaded ${plural(done, "file", "files")}.`;
  await loadFiles().catch((err) => showError(err.message, err.code));
}

async function deleteFile(path) {
  if (!await confirmAction(`Delete ${path} from the workspace?`)) return;
  try {
    await rawRequest("DELETE", `${filesPath()}/content?path=${encodeURIComponent(path)}`);
    $("files-status").textContent = `Deleted ${path.split("/").pop()}.`;
    await loadFiles();
  } catch (err) {
    showError(err.message, err.code);
  }
}

function wireFiles() {
  const drop = $("files-drop");
  const choose = () => { if (state.session) $("files-input").click(); };
  drop.addEventListener("click", choose);
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); choose(); } });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); if (state.session) drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadFiles([...event.dataTransfer.files]);
  });
  $("files-input").addEventListener("change", (event) => { uploadFiles([...event.target.files]); event.target.value = ""; });
  $("files-refresh").addEventListener("click", () => loadFiles().catch((err) => showError(err.message, err.code)));
}

// -- session and websocket ---------------------------------------------------------------------------

async function startSession(conversationId) {
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
    syncButtons();
    return;
  }
  const files = state.session.skillsLoaded;
  $("session-info").textContent = `Session ${sessionId} · ${state.session.setupMethod} · ${plural(files.length, "skill file", "skill files")}`;
  $("session-files").hidden = !files.length;
  $("session-files-summary").textContent = `${plural(files.length, "skill file", "skill files")} in the sandbox`;
  $("skills-loaded").replaceChildren(...files.map((p) => Object.assign(document.createElement("li"), {textContent: p})));
  $("start-session").textContent = "New session";
  resetTranscript();
  state.lastSeq = 0;
  state.reconnects = 0;
  connect({action: "start", ...(conversationId ? {conversationId} : {})});
  loadFiles().catch((err) => showError(err.message, err.code));
}

function forgetSession() {
  closeSocket();
  state.session = null;
  endTurn();
  resetTranscript();
  $("session-info").textContent = "No session.";
  $("session-files").hidden = true;
  $("start-session").textContent = "Start session";
  setBadge("turn-badge", "");
  renderFiles(null);
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

function closeSocket() {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
}

function connect(firstFrame) {
  const ws = new WebSocket(`${state.session.websocketUrl}&token=${encodeURIComponent(state.session.token)}`);
  state.ws = ws;
  state.opened = false;
  ws.onopen = () => {
    state.opened = true;
    state.reconnects = 0;
    ws.send(JSON.stringify(firstFrame));
    // A message whose `queued` answer never came may or may not be queued: resend it with the
    // same messageId, which the server queues at most once.
    if (state.unacked && firstFrame.action === "resume") ws.send(JSON.stringify(state.unacked));
    syncButtons();
    if (!state.pending && !state.turnActive) setBadge("turn-badge", "Connected", "ok");
    renderEmptyChat();
  };
  ws.onmessage = (event) => { const frame = joinParts(JSON.parse(event.data)); if (frame) handleFrame(frame); };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    syncButtons();
    // A socket that never opened was refused (or the server is gone): retrying will not help.
    // One that was open dropped: reconnect and catch up, the turn went on without us.
    if (!state.opened && state.reconnects === 0 || state.reconnects >= MAX_RECONNECTS) { giveUp(event.code); return; }
    const delay = Math.min(5000, 250 * 2 ** state.reconnects++);
    setBadge("turn-badge", `Reconnecting · attempt ${state.reconnects} of ${MAX_RECONNECTS}`, "busy");
    setTimeout(() => { if (state.ws === ws) connect({action: "resume", afterSeq: state.lastSeq}); }, delay);
  };
}

// Browsers hide why a WebSocket closed (a refused upgrade is just 1006), so ask /health.
async function giveUp(code) {
  state.ws = null;
  endTurn();
  setBadge("turn-badge", "Disconnected", "bad");
  const health = await checkHealth();
  if (!health) {
    showError(`The server is not running or not reachable at ${state.api} (WebSocket closed with code ${code}). ` +
              "Start it (./scripts/dev) or check the address above, then choose Start session.");
  } else if (!state.opened) {
    showError(`The server is up but refused the WebSocket (code ${code}). The session's token is stale or the ` +
              "session is gone (each Start session issues a new token): choose Start session. If it happens again, the server's log says why.");
  } else {
    showError(`The connection dropped (code ${code}) and ${MAX_RECONNECTS} reconnects failed, though the server answers /health. ` +
              "Choose Start session; the conversation is saved and continues.");
  }
}

function send(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { showError("Not connected: choose Start session."); return false; }
  state.ws.send(JSON.stringify(frame));
  return true;
}

// Each message gets its own id, so a resend after a lost answer runs once (see connect).
function newMessageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "m-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sendPrompt(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || $("send").disabled) return;
  const message = {action: "message", prompt, messageId: newMessageId()};
  if (!send(message)) return;
  state.unacked = message;
  following = true;
  userBubble(prompt);
  state.current = null;
  $("prompt").value = "";
  autosize();
  setTurn({pending: true});
}

function syncButtons() {
  const open = Boolean(state.ws && state.ws.readyState === WebSocket.OPEN);
  const running = state.pending || state.turnActive;
  $("start-session").disabled = !state.loadedUser;
  $("prompt").disabled = !open;
  $("send").disabled = !open;
  $("interrupt").disabled = !open || !running;
  $("clear").disabled = !open || running;
  if (running) { if (!$("turn-badge").classList.contains("busy")) setBadge("turn-badge", "Working…", "busy"); }
  else if (open) setBadge("turn-badge", "Connected", "ok");
}

// The composer grows with what is typed, up to its CSS max-height.
function autosize() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = `${prompt.scrollHeight}px`;
}

function refreshEmptyChat() {
  transcript().querySelector(".empty-chat")?.remove();
  renderEmptyChat();
}

// -- wiring -----------------------------------------------------------------------------------------

function storeKey(key, remember) {
  localStorage.setItem("console.rememberKey", remember ? "1" : "0");
  (remember ? localStorage : sessionStorage).setItem("console.key", key);
  (remember ? sessionStorage : localStorage).removeItem("console.key");
}

async function loadUser(event) {
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
    return;
  }
  if (state.session && state.session.userId !== state.user) forgetSession();  // that chat was another user's
  state.loadedUser = state.user;
  $("connection-summary").textContent = `Connection · ${state.user}`;
  if (window.matchMedia("(max-width: 760px)").matches) $("connection-box").open = false;
  syncButtons();
  refreshEmptyChat();
}

function init() {
  $("api-base").value = state.api;
  $("api-key").value = state.key;
  $("remember-key").checked = KEY_REMEMBERED;
  $("user-id").value = state.user;
  $("connection").addEventListener("submit", loadUser);
  wireFiles();
  $("user-id").addEventListener("input", () => {
    // Another user's name: their data must be loaded before a session can start for them.
    if ($("user-id").value.trim() !== state.loadedUser) { $("start-session").disabled = true; }
    else syncButtons();
  });
  $("remember-key").addEventListener("change", () => storeKey($("api-key").value, $("remember-key").checked));
  $("banner-close").addEventListener("click", clearError);
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    tab.addEventListener("click", () => showView(tab.getAttribute("aria-controls")));
    tab.addEventListener("keydown", onTabKey);
  }
  window.matchMedia("(max-width: 760px)").addEventListener("change", (m) => { if (!m.matches) $("connection-box").open = true; });
  $("skill-form").addEventListener("submit", saveSkill);
  $("skill-new").addEventListener("click", () => {
    $("skill-name").value = ""; $("skill-content").value = ""; $("skill-error").textContent = ""; $("skill-status").textContent = "";
    $("skill-name").focus();
  });
  $("skill-delete").addEventListener("click", deleteSkill);
  $("settings-form").addEventListener("submit", saveSettings);
  $("conversations-more").addEventListener("click", () => loadConversations(true).catch((err) => showError(err.message, err.code)));
  $("start-session").addEventListener("click", () => startSession());
  $("chat-form").addEventListener("submit", sendPrompt);
  $("prompt").addEventListener("input", autosize);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) sendPrompt(event);
  });
  $("interrupt").addEventListener("click", () => send({action: "interrupt"}));
  $("clear").addEventListener("click", () => send({action: "clear"}));
  transcript().addEventListener("scroll", () => {
    following = atBottom();
    if (following) $("jump-latest").hidden = true;
  });
  $("jump-latest").addEventListener("click", () => { following = true; follow(); $("jump-latest").hidden = true; });
  renderEmptyChat();
  checkHealth();
  if (state.user) loadUser();
}

window.consoleApp = {handleFrame, state, RENDER, connect};
init();
