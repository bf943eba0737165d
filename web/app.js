// Claude Agent Console: chat with a user's agent, and manage their skills, settings and files.
// Native ES modules, no build step; a working reference for your own frontend. The protocol is
// the RENDER table in src/protocol.js. Markdown is rendered by marked, sanitised by DOMPurify and
// code highlighted by highlight.js, all vendored in web/vendor/.
import {looksLikeToken} from "./src/api.js";
import {$, clearError} from "./src/dom.js";
import {checkHealth, showHealth, takeTokenFromFragment, wireConnection, loadUser} from "./src/panels/connection.js";
import {loadFiles, wireFiles} from "./src/panels/files.js";
import {loadConversations, wireHistory} from "./src/panels/history.js";
import {wireSettings} from "./src/panels/settings.js";
import {wireSkills} from "./src/panels/skills.js";
import {explainQuota, refreshUsage, renderUsage, wireUsage} from "./src/panels/usage.js";
import {hooks as protocolHooks, handleFrame, RENDER} from "./src/protocol.js";
import {startSession} from "./src/session.js";
import {connect, hooks as socketHooks, retryNow, send} from "./src/socket.js";
import {state} from "./src/state.js";
import {atBottom, follow, hooks as transcriptHooks, renderEmptyChat, setFollowing, userBubble} from "./src/transcript.js";
import {autosize, setTurn} from "./src/turn.js";
import {hooks as viewHooks, wireViews} from "./src/views.js";

// Each message gets its own id, so a resend after a lost answer runs once (src/socket.js).
function newMessageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "m-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sendPrompt(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || $("send").disabled) return;
  const message = {action: "message", prompt, messageId: newMessageId()};
  // Naming the session lets the server read its state alongside the connection's record: one
  // storage round trip less before the model is asked (the connection still decides the session).
  if (state.session?.sessionId) message.sessionId = state.session.sessionId;
  if (!send(message)) return;
  state.unacked = message;
  setFollowing(true);
  userBubble(prompt);
  state.current = null;
  $("prompt").value = "";
  autosize();
  setTurn({pending: true});
}

function wireChat() {
  $("start-session").addEventListener("click", () => startSession());
  $("chat-form").addEventListener("submit", sendPrompt);
  $("prompt").addEventListener("input", autosize);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) sendPrompt(event);
  });
  $("interrupt").addEventListener("click", () => send({action: "interrupt"}));
  $("clear").addEventListener("click", () => send({action: "clear"}));
  $("transcript").addEventListener("scroll", () => setFollowing(atBottom()));
  $("jump-latest").addEventListener("click", () => { setFollowing(true); follow(); });
  $("banner-close").addEventListener("click", clearError);
  window.addEventListener("online", retryNow);
}

transcriptHooks.answerPermission = (answer) => send({action: "permission", ...answer});
protocolHooks.turnEnded = () => {
  if (state.loadedUser) loadConversations().catch(() => {});
  if (state.session) loadFiles().catch(() => {});
  refreshUsage();  // when the Settings panel shows it
};
protocolHooks.quotaReached = explainQuota;
viewHooks.shown = (panel) => { if (panel === "settings-panel") refreshUsage(); };
socketHooks.health = showHealth;

wireConnection();
wireViews();
wireChat();
wireSkills();
wireSettings();
wireFiles();
wireHistory();
wireUsage();
renderUsage();
renderEmptyChat();
checkHealth();
// An app's link with a token (#token=...) signs in at once; else a remembered user (or the
// token kept in this tab, which names its user) loads.
if (takeTokenFromFragment() || state.user || looksLikeToken(state.key)) loadUser();

window.consoleApp = {handleFrame, state, RENDER, connect};
