// Settings: model, limits, system prompt, permissions, budget, web tools.
import {api, userPath} from "../api.js";
import {$} from "../dom.js";
import {state} from "../state.js";

export async function loadSettings() {
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

export function wireSettings() { $("settings-form").addEventListener("submit", saveSettings); }
