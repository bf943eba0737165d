// Conversations: newest first, a page at a time, each by its first prompt; open one read-only,
// continue it in a new session, delete it.
import {api, userPath} from "../api.js";
import {$, confirmAction, el, showError} from "../dom.js";
import {bytes, date, plural} from "../format.js";
import {startSession} from "../session.js";
import {CONVERSATIONS_PAGE, state} from "../state.js";
import {renderSaved} from "../transcript.js";
import {syncButtons} from "../turn.js";
import {showView} from "../views.js";

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

export async function loadConversations(more = false) {
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
    const open = el("button", {type: "button", className: "conv-open"},
      el("span", {className: "title", textContent: prompt || (summary ? "(no message yet)" : item.conversationId)}),
      el("span", {className: "meta", textContent: [date(item.updated), bytes(item.size),
        summary ? plural(summary.count, "message", "messages") : null].filter(Boolean).join(" · ")}));
    open.setAttribute("aria-label", `Open conversation ${prompt ? `“${prompt.slice(0, 80)}”` : item.conversationId} read-only`);
    open.addEventListener("click", () => openConversation(item.conversationId, prompt));
    const resume = el("button", {type: "button", className: "secondary small-button", textContent: "Continue"});
    resume.setAttribute("aria-label", `Continue conversation ${item.conversationId} in a new session`);
    resume.addEventListener("click", () => { showView("chat-panel"); startSession(item.conversationId); });
    const remove = el("button", {type: "button", className: "danger small-button", textContent: "Delete"});
    remove.setAttribute("aria-label", `Delete conversation ${item.conversationId}`);
    remove.addEventListener("click", () => deleteConversation(item.conversationId, prompt));
    const li = el("li", {className: "conv"}, open, el("span", {className: "conv-actions"}, resume, remove));
    if (state.readOnly?.conversationId === item.conversationId) li.setAttribute("aria-current", "true");
    list.append(li);
  }
  if (!state.conversations.length) list.append(el("li", {className: "empty", textContent: "No conversations yet. Each chat is saved here as it goes."}));
  $("conversations-more").hidden = !state.conversationsCursor;
}

async function deleteConversation(id, prompt) {
  const what = prompt ? `“${prompt.slice(0, 60)}”` : id;
  if (!await confirmAction(`Delete the conversation ${what}? This cannot be undone.`)) return;
  try {
    await api("DELETE", `${userPath()}/conversations/${encodeURIComponent(id)}`);
    state.summaries.delete(id);
    if (state.readOnly?.conversationId === id) closeReadOnly();
    await loadConversations();
  } catch (err) {
    showError(err.message, err.code);
  }
}

/** A saved conversation, read-only: the composer gives way to "Continue in a new session". */
async function openConversation(id, prompt) {
  try {
    const data = await api("GET", `${userPath()}/conversations/${encodeURIComponent(id)}`);
    state.readOnly = {conversationId: id};
    const live = state.session ? " Your live session carries on; Back to the live session returns to it." : "";
    $("read-only-text").textContent = `Read-only: ${prompt ? `“${prompt.slice(0, 60)}”` : id}, a saved conversation.${live}`;
    renderSaved($("saved-transcript"), data.conversation.messages || []);
    showView("chat-panel");
    syncButtons();
    renderConversations();
  } catch (err) {
    showError(err.message, err.code);
  }
}

export function closeReadOnly() {
  state.readOnly = null;
  $("saved-transcript").replaceChildren();
  syncButtons();
  renderConversations();
}

export function wireHistory() {
  $("conversations-more").addEventListener("click", () => loadConversations(true).catch((err) => showError(err.message, err.code)));
  $("continue-conversation").addEventListener("click", () => { const id = state.readOnly?.conversationId; if (id) startSession(id); });
  $("back-to-session").addEventListener("click", () => { closeReadOnly(); $("prompt").focus(); });
}
