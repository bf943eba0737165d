// The views: the chat always; one panel (skills, settings, files, history) beside it on a wide
// screen or in its place on a phone, one click on its tab away. The selected tab again, the
// Chat tab, a panel's ✕ or Escape close it.
import {$} from "./dom.js";
import {state} from "./state.js";

/** Set by the app: a panel was opened (the usage refreshes when Settings opens). */
export const hooks = {shown: () => {}};

export function showView(panelId) {
  const opened = $("views").dataset.view !== panelId;
  $("views").dataset.view = panelId;
  if (opened) hooks.shown(panelId);
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    const selected = tab.getAttribute("aria-controls") === panelId;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
  }
}

const current = () => $("views").dataset.view;

function onTabKey(event) {
  const tabs = [...document.querySelectorAll("#tabs [role=tab]")];
  const step = {ArrowRight: 1, ArrowLeft: -1}[event.key];
  if (!step) return;
  const next = tabs[(tabs.indexOf(event.target) + step + tabs.length) % tabs.length];
  showView(next.getAttribute("aria-controls"));
  next.focus();
}

export function wireViews() {
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    tab.addEventListener("click", () => {
      const panel = tab.getAttribute("aria-controls");
      showView(panel === current() ? "chat-panel" : panel);
    });
    tab.addEventListener("keydown", onTabKey);
  }
  for (const close of document.querySelectorAll(".close-panel")) {
    close.addEventListener("click", () => { showView("chat-panel"); $("tab-chat").focus(); });
  }
  // Open over the chat, the connection form folds away at a click elsewhere (once a user is loaded).
  document.addEventListener("click", (event) => {
    if ($("connection-box").open && state.loadedUser && !$("connection-box").contains(event.target)) $("connection-box").open = false;
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
    if ($("connection-box").open && state.loadedUser) { $("connection-box").open = false; return; }
    if (current() !== "chat-panel") showView("chat-panel");
  });
}
