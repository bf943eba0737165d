// Workspace files: the session's /workspace as a tree; download, upload by drag and drop, delete.
import {api, rawRequest} from "../api.js";
import {$, clearError, confirmAction, el, showError} from "../dom.js";
import {bytes, date, plural} from "../format.js";
import {state} from "../state.js";

const filesPath = () => `/sessions/${encodeURIComponent(state.session.sessionId)}/files`;

export async function loadFiles() {
  if (!state.session) { renderFiles(null); return; }
  renderFiles(await api("GET", filesPath()));
}

// The API leaves out .claude/skills (the user's skills, mounted); the .claude folder that held
// them is not the user's file either, unless something else was put in it.
function shown(files) {
  const others = files.some((f) => f.path.startsWith("/workspace/.claude/"));
  return files.filter((f) => f.path !== "/workspace/.claude" || others);
}

export function renderFiles(listing) {
  const ready = Boolean(state.session && listing);
  $("files-refresh").disabled = !state.session;
  $("files-drop").setAttribute("aria-disabled", String(!state.session));
  if (!ready) {
    $("files-tree").replaceChildren();
    $("files-info").textContent = "Start a session to see its files.";
    return;
  }
  const files = shown(listing.files);
  const count = files.filter((f) => f.type === "file").length;
  $("files-info").textContent = `${plural(count, "file", "files")} in /workspace` +
    (listing.source === "snapshot" ? " (from the last snapshot: the sandbox is not running)" : "");
  // Each folder gets its own list; entries come sorted by path, so a folder precedes its content.
  const lists = new Map([["/workspace", $("files-tree")]]);
  $("files-tree").replaceChildren();
  for (const entry of files) {
    const parent = entry.path.slice(0, entry.path.lastIndexOf("/"));
    const name = entry.path.slice(parent.length + 1);
    const li = el("li");
    if (entry.type === "dir") {
      const inner = el("ul");
      li.append(el("details", {open: !name.startsWith(".")}, el("summary", {textContent: `${name}/`}), inner));
      lists.set(entry.path, inner);
    } else {
      li.className = "file";
      if (entry.type === "file") {
        const open = el("button", {type: "button", className: "file-name", textContent: name});
        open.setAttribute("aria-label", `Download ${entry.path}`);
        open.addEventListener("click", () => downloadFile(entry.path).catch((err) => showError(err.message, err.code)));
        // A snapshot keeps no times (its archive is deterministic): a date is shown only when known.
        const when = date(entry.modified);
        li.append(open, el("span", {className: "meta", textContent: [bytes(entry.size), when].filter(Boolean).join(" · ")}));
      } else {
        li.append(el("span", {textContent: `${name} (link)`}));
      }
      const remove = el("button", {type: "button", className: "ghost", textContent: "✕"});
      remove.setAttribute("aria-label", `Delete ${entry.path}`);
      remove.addEventListener("click", () => deleteFile(entry.path));
      li.append(remove);
    }
    (lists.get(parent) || $("files-tree")).append(li);
  }
  if (!files.length) {
    $("files-tree").append(el("li", {className: "small", textContent: "Empty: drop files below, or ask the agent to make some."}));
  }
}

async function downloadFile(path) {
  const response = await rawRequest("GET", `${filesPath()}/content?path=${encodeURIComponent(path)}`, {headers: {Accept: "*/*"}});
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", {href: url, download: path.split("/").pop()});
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

export function wireFiles() {
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
