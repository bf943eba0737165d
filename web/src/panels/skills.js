// Skills: the user's list, an editor, a sample for a first skill.
import {api, userPath} from "../api.js";
import {$, confirmAction, el} from "../dom.js";
import {state} from "../state.js";
import {refreshEmptyChat} from "../transcript.js";

const SAMPLE_SKILL = {
  name: "debugging.md",
  content: "# Debugging\n\nWhen the user reports a bug:\n\n1. Ask for the exact error message and what changed last.\n" +
           "2. Read the logs before guessing.\n3. Bisect: halve the change until the culprit is found.\n",
};

const showFailure = (err) => { $("skill-error").textContent = `${err.message}${err.code ? ` (${err.code})` : ""}`; };

export async function loadSkills() {
  const data = await api("GET", `${userPath()}/skills`);
  const list = $("skills");
  list.replaceChildren();
  for (const item of data.items) {
    const button = el("button", {type: "button", className: "link", textContent: item.name});
    button.setAttribute("aria-label", `Open skill ${item.name}`);
    button.addEventListener("click", () => openSkill(item.name));
    const li = el("li", {className: "skill"}, button,
                  el("span", {className: "meta", textContent: `${item.form === "folder" ? "folder" : "file"} · ${item.description || "no description"}`}));
    if (item.name === $("skill-name").value.trim()) li.setAttribute("aria-current", "true");
    list.append(li);
  }
  if (!data.items.length) {
    const sample = el("button", {type: "button", id: "add-sample", className: "secondary small-button", textContent: "Add a sample skill"});
    sample.addEventListener("click", addSampleSkill);
    list.append(el("li", {className: "empty"},
      el("p", {textContent: "No skills yet. A skill is a markdown note the agent reads when it helps: how you debug, your team's conventions, a checklist."}),
      sample));
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
    showFailure(err);
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
    showFailure(err);
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
    showFailure(err);
  }
}

export function wireSkills() {
  $("skill-form").addEventListener("submit", saveSkill);
  $("skill-new").addEventListener("click", () => {
    $("skill-name").value = ""; $("skill-content").value = ""; $("skill-error").textContent = ""; $("skill-status").textContent = "";
    $("skill-name").focus();
  });
  $("skill-delete").addEventListener("click", deleteSkill);
}
