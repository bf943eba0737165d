// Markdown: rendered by marked, sanitised by DOMPurify (a reply may carry hostile HTML), code
// highlighted by highlight.js; all three vendored in web/vendor/ as classic scripts (globals).
import {el} from "./dom.js";

const {marked, DOMPurify, hljs} = window;

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

// highlight.js escapes the code it is given and only adds <span class="hljs-..."> around it,
// so its output needs no second sanitising; it runs on the text DOMPurify already let through.
function highlight(code) {
  const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice("language-".length);
  const text = code.textContent;
  const result = language && hljs.getLanguage(language)
    ? hljs.highlight(text, {language, ignoreIllegals: true})
    : hljs.highlightAuto(text.slice(0, 20000));
  if (result.relevance === 0 && !language) return;
  code.innerHTML = result.value;
  code.classList.add("hljs");
}

export function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(markdown.parse(text), PURIFY);
  for (const pre of target.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const language = code && [...code.classList].find((c) => c.startsWith("language-"))?.slice("language-".length);
    if (code) highlight(code);
    const wrap = el("div", {className: "code"});
    pre.replaceWith(wrap);
    // A header above the code, as chat products do: the language, and Copy clear of the text.
    const copy = el("button", {type: "button", className: "copy", textContent: "Copy"});
    copy.setAttribute("aria-label", "Copy code");
    copy.addEventListener("click", () => copyText(pre.textContent, copy));
    wrap.append(el("div", {className: "code-head"}, el("span", {textContent: language || "code"}), copy), pre);
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
