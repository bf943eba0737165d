// Claude Agent Console: manage a user's skills and settings, and chat with their agent.
// Plain JavaScript, no build step; a working reference for your own frontend.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  api: localStorage.getItem("console.api") || window.location.origin,
  key: localStorage.getItem("console.key") || "",
  user: localStorage.getItem("console.user") || "",
  skills: {},          // name -> detail (for folder files)
  session: null,       // the /setup answer
  ws: null,
  lastSeq: 0,
  running: false,
  reconnects: 0,
  current: null,       // the assistant bubble receiving stream deltas
  tools: {},           // tool_use_id -> <details>
};

// -- errors -------------------------------------------------------------------------------

const HINTS = {
  missing_api_key: "Enter the API key (the server's API_KEY) in the header.",
  invalid_api_key: "The API key is wrong: check it against the server's API_KEY.",
  api_key_not_configured: "The server has no API_KEY configured; its operator must set one.",
  anthropic_api_key_missing: "The server has no ANTHROPIC_API_KEY; its operator must set it and restart.",
  storage_unavailable: "The server cannot reach its storage; retry in a moment.",
};

function showError(message, code) {
  const banner = $("banner");
  banner.textContent = code && HINTS[code] ? `${message} — ${HINTS[code]}` : message;
  banner.hidden = false;
}

function clearError() { $("banner").hidden = true; }

// -- REST -----------------------------------------------------------------------------------

async function api(method, path, body, extraHeaders = {}) {
  const headers = {...extraHeaders};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(state.api.replace(/\/$/, "") + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    const error = new Error(`Cannot reach ${state.api} (${err.message}). Is the server running, and does it allow this origin (CORS)?`);
    error.code = "unreachable";
    throw error;
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.code = data.code;
    error.status = response.status;
    throw error;
  }
  return data;
}

const userPath = () => `/users/${encodeURIComponent(state.user)}`;

// -- skills -----------------------------------------------------------------------------------

async function loadSkills() {
  const data = await api("GET", `${userPath()}/skills`);
  const list = $("skills");
  list.replaceChildren();
  for (const item of data.items) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = item.name;
    button.setAttribute("aria-label", `Open skill ${item.name}`);
    button.addEventListener("click", () => openSkill(item.name));
    const description = document.createElement("span");
    description.className = "small";
    description.textContent = ` ${item.form} · ${item.description || ""}`;
    li.append(button, description);
    list.append(li);
  }
  if (!data.items.length) list.innerHTML = "<li class='small'>No skills yet.</li>";
}

async function openSkill(name) {
  const detail = await api("GET", `${userPath()}/skills/${encodeURIComponent(name)}`);
  state.skills[name] = detail;
  $("skill-name").value = name;
  $("skill-content").value = detail.content;
  $("skill-error").textContent = "";
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
  try {
    await api("POST", `${userPath()}/skills`, body);
    $("skill-error").textContent = "";
    await loadSkills();
  } catch (err) {
    $("skill-error").textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`;
  }
}

async function deleteSkill() {
  const name = $("skill-name").value.trim();
  if (!name) return;
  try {
    await api("DELETE", `${userPath()}/skills/${encodeURIComponent(name)}`);
    delete state.skills[name];
    $("skill-name").value = "";
    $("skill-content").value = "";
    await loadSkills();
  } catch (err) {
    $("skill-error").textContent = err.message;
  }
}

// -- settings -----------------------------------------------------------------------------------

async function loadSettings() {
  const {settings} = await api("GET", `${userPath()}/settings`);
  $("set-model").value = settings.model || "";
  $("set-max-turns").value = settings.maxTurns || "";
  $("set-system").value = settings.systemPrompt || "";
  $("set-network").checked = settings.allowNetwork;
}

async function saveSettings(event) {
  event.preventDefault();
  const maxTurns = $("set-max-turns").value;
  try {
    await api("PATCH", `${userPath()}/settings`, {
      model: $("set-model").value.trim() || null,
      maxTurns: maxTurns ? Number(maxTurns) : null,
      systemPrompt: $("set-system").value || null,
      allowNetwork: $("set-network").checked,
    });
    $("settings-status").textContent = "Saved.";
  } catch (err) {
    $("settings-status").textContent = err.message;
  }
}

// -- conversations -------------------------------------------------------------------------------

async function loadConversations() {
  const data = await api("GET", `${userPath()}/conversations?limit=20`);
  const list = $("conversations");
  list.replaceChildren();
  for (const item of data.conversations) {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = item.conversationId;
    open.setAttribute("aria-label", `Open conversation ${item.conversationId} read-only`);
    open.addEventListener("click", () => openConversation(item.conversationId));
    const resume = document.createElement("button");
    resume.type = "button";
    resume.className = "secondary small-button";
    resume.textContent = "Continue";
    resume.setAttribute("aria-label", `Continue conversation ${item.conversationId} in a new session`);
    resume.addEventListener("click", () => startSession(item.conversationId));
    li.append(open, " ", resume);
    list.append(li);
  }
  if (!data.conversations.length) list.innerHTML = "<li class='small'>None yet.</li>";
}

async function openConversation(id) {
  const data = await api("GET", `${userPath()}/conversations/${encodeURIComponent(id)}`);
  $("transcript").replaceChildren();
  note(`Conversation ${id} (read-only)`);
  renderHistory(data.conversation.messages || []);
}

function renderHistory(messages) {
  for (const message of messages) {
    const blocks = typeof message.content === "string" ? [{type: "text", text: message.content}] : message.content || [];
    for (const block of blocks) {
      if (block.type === "text") bubble(message.role, block.text);
      else if (block.type === "tool_use") toolUse({id: block.id, name: block.name, input: block.input});
      else if (block.type === "tool_result") toolResult({tool_use_id: block.tool_use_id, content: block.content, is_error: block.is_error});
    }
  }
}

// -- transcript rendering -------------------------------------------------------------------------

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("transcript").append(div);
  div.scrollIntoView({block: "end"});
  return div;
}

function note(text, kind = "note") {
  const div = document.createElement("div");
  div.className = kind;
  div.textContent = text;
  $("transcript").append(div);
  return div;
}

function toolUse(frame) {
  const details = document.createElement("details");
  details.className = "tool";
  const summary = document.createElement("summary");
  summary.textContent = `⚙ ${frame.name}`;
  const input = document.createElement("pre");
  input.className = "tool-input";
  input.textContent = JSON.stringify(frame.input, null, 2);
  details.append(summary, input);
  state.tools[frame.id] = details;
  $("transcript").append(details);
  state.current = null;  // text after a tool call starts a new bubble
}

function toolResult(frame) {
  const details = state.tools[frame.tool_use_id] || (() => { const d = document.createElement("details"); d.className = "tool"; $("transcript").append(d); return d; })();
  const output = document.createElement("pre");
  output.className = frame.is_error ? "tool-result error" : "tool-result";
  output.textContent = typeof frame.content === "string" ? frame.content : JSON.stringify(frame.content);
  details.append(output);
}

// Every server event has a renderer: this is the protocol, as a table.
const RENDER = {
  status(frame) {
    if (frame.status === "ready") note(`Ready: conversation ${frame.conversationId}${frame.continued ? ` (${frame.messageCount} earlier messages)` : ""}.`);
    else if (frame.status === "queued") note(frame.position ? `Queued (position ${frame.position}).` : "Sent.");
    else if (frame.status === "running") { state.running = true; syncButtons(); }
    else if (frame.status === "retrying") { if (state.current) state.current.textContent = state.current.textContent.slice(0, -frame.discardStreamed || undefined); note("Model overloaded: retrying…"); }
    else note(frame.message ? `${frame.status}: ${frame.message}` : `Status: ${frame.status}`);
  },
  stream(frame) {
    if (!state.current) state.current = bubble("assistant", "");
    state.current.textContent += frame.content;
  },
  message(frame) {
    if (frame.role === "assistant") state.current = null;  // the streamed bubble is complete
  },
  tool_use: toolUse,
  tool_result: toolResult,
  result(frame) {
    state.running = false;
    state.current = null;
    const cost = frame.costUsd == null ? "cost unknown" : `$${frame.costUsd.toFixed(4)}`;
    note(`${frame.turns} turns · ${frame.usage.inputTokens} in / ${frame.usage.outputTokens} out tokens · ${cost} · ${frame.durationMs} ms · ${frame.stopReason}`, "result");
    syncButtons();
    loadConversations().catch(() => {});
  },
  error(frame) {
    note(`Error (${frame.code}): ${frame.message}`, "error");
    if (frame.code === "anthropic_api_key_missing") showError(frame.message, frame.code);
  },
  history(frame) { $("transcript").replaceChildren(); renderHistory(frame.messages); },
  cleared() { $("transcript").replaceChildren(); note("History cleared."); },
};

function handleFrame(frame) {
  if (frame.seq) {
    if (frame.seq <= state.lastSeq) return;  // already shown (a resume can overlap)
    state.lastSeq = frame.seq;
  }
  (RENDER[frame.event] || ((f) => note(`Unknown event ${f.event}`)))(frame);
}

// -- session and websocket ---------------------------------------------------------------------------

async function startSession(conversationId) {
  clearError();
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  const sessionId = `web-${Math.random().toString(36).slice(2, 10)}`;
  try {
    state.session = await api("POST", `/setup/${sessionId}?userId=${encodeURIComponent(state.user)}`);
  } catch (err) {
    showError(err.message, err.code);
    return;
  }
  $("session-info").textContent = `Session ${sessionId}: ${state.session.setupMethod}, ${state.session.skillsLoaded.length} skill files`;
  const loaded = $("skills-loaded");
  loaded.replaceChildren(...state.session.skillsLoaded.map((p) => Object.assign(document.createElement("li"), {textContent: p})));
  $("transcript").replaceChildren();
  state.lastSeq = 0;
  connect({action: "start", ...(conversationId ? {conversationId} : {})});
}

function connect(firstFrame) {
  const ws = new WebSocket(`${state.session.websocketUrl}&token=${encodeURIComponent(state.session.token)}`);
  state.ws = ws;
  ws.onopen = () => {
    state.reconnects = 0;
    ws.send(JSON.stringify(firstFrame));
    syncButtons();
  };
  ws.onmessage = (event) => handleFrame(JSON.parse(event.data));
  ws.onclose = (event) => {
    syncButtons();
    if (state.ws !== ws) return;
    if (state.reconnects >= 5) { showError("The connection was refused or lost; start a new session."); return; }
    // Reconnect and catch up: the turn went on without us.
    const delay = Math.min(5000, 250 * 2 ** state.reconnects++);
    note(`Connection lost (code ${event.code}); reconnecting…`);
    setTimeout(() => connect({action: "resume", afterSeq: state.lastSeq}), delay);
  };
}

function send(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { showError("Not connected: start a session."); return; }
  state.ws.send(JSON.stringify(frame));
}

function sendPrompt(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  bubble("user", prompt);
  state.current = null;
  send({action: "message", prompt});
  $("prompt").value = "";
  state.running = true;
  syncButtons();
}

function syncButtons() {
  const open = state.ws && state.ws.readyState === WebSocket.OPEN;
  $("prompt").disabled = !open;
  $("send").disabled = !open;
  $("interrupt").disabled = !open || !state.running;
  $("clear").disabled = !open || state.running;
}

// -- wiring -----------------------------------------------------------------------------------------

async function loadUser(event) {
  if (event) event.preventDefault();
  state.api = $("api-base").value.trim() || window.location.origin;
  state.key = $("api-key").value;
  state.user = $("user-id").value.trim();
  localStorage.setItem("console.api", state.api);
  localStorage.setItem("console.key", state.key);
  localStorage.setItem("console.user", state.user);
  if (!state.user) return;
  clearError();
  try {
    await Promise.all([loadSkills(), loadSettings(), loadConversations()]);
  } catch (err) {
    showError(err.message, err.code);
  }
}

function init() {
  $("api-base").value = state.api;
  $("api-key").value = state.key;
  $("user-id").value = state.user;
  $("connection").addEventListener("submit", loadUser);
  $("skill-form").addEventListener("submit", saveSkill);
  $("skill-new").addEventListener("click", () => { $("skill-name").value = ""; $("skill-content").value = ""; $("skill-error").textContent = ""; $("skill-name").focus(); });
  $("skill-delete").addEventListener("click", deleteSkill);
  $("settings-form").addEventListener("submit", saveSettings);
  $("start-session").addEventListener("click", () => startSession());
  $("chat-form").addEventListener("submit", sendPrompt);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) sendPrompt(event);
  });
  $("interrupt").addEventListener("click", () => send({action: "interrupt"}));
  $("clear").addEventListener("click", () => send({action: "clear"}));
  if (state.user) loadUser();
}

window.consoleApp = {handleFrame, state, RENDER};
init();
