"""What a skill looks like: the original's flat `name.md`, or an Agent Skills folder.

An Agent Skill is `<name>/SKILL.md` whose YAML frontmatter has `name` (the folder's name) and
`description` (what it does and when to use it), plus any extra files. Only name, description
and path go into the system prompt; the model reads the body when it needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import ValidationFailed

SKILL_FILE = "SKILL.md"
# \Z, not $: "evil\n" must not pass as "evil".
NAME_PATTERN = re.compile(r"\A[a-z0-9]+(-[a-z0-9]+)*\Z")
RESERVED_WORDS = ("anthropic", "claude")
MAX_NAME = 64
MAX_DESCRIPTION = 1024
# Frontmatter is a few lines of metadata. Bounding it bounds the parse: 300 KB headers made every
# listing take seconds, and 500 nested levels raised RecursionError (a 500) on every read.
MAX_FRONTMATTER_BYTES = 16 * 1024
MAX_FRONTMATTER_DEPTH = 16
_XML_TAG = re.compile(r"<\s*/?\s*[A-Za-z][^>]*>")
_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Frontmatter:
    """The validated frontmatter of a SKILL.md."""

    name: str
    description: str
    extra: dict[str, Any]


def split_frontmatter(text: str) -> tuple[dict[str, Any] | None, str]:
    """(frontmatter mapping or None, body). Raises ValidationFailed on unparsable YAML."""
    match = _FRONTMATTER.match(text.lstrip("\ufeff"))
    if match is None:
        return None, text
    header = match.group(1)
    if len(header.encode("utf-8")) > MAX_FRONTMATTER_BYTES:
        raise ValidationFailed(
            f"The frontmatter is {len(header.encode('utf-8'))} bytes; the limit is {MAX_FRONTMATTER_BYTES}: keep it to "
            "'name' and 'description' (and a few short fields), and put the rest in the body.",
            code="invalid_frontmatter",
        )
    # Imported here: only SKILL.md frontmatter needs YAML, and the import was 7 ms of every cold start.
    import yaml

    try:
        data = yaml.safe_load(header)
    except RecursionError:
        raise _too_deep() from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 2})" if where is not None else ""
        raise ValidationFailed(
            f"SKILL.md frontmatter is not valid YAML{line}: {getattr(exc, 'problem', exc)}. "
            "Write it as 'name: my-skill' and 'description: ...' lines between two '---' lines.",
            code="invalid_frontmatter",
        ) from None
    if data is None:
        data = {}
    if _depth(data) > MAX_FRONTMATTER_DEPTH:
        raise _too_deep()
    if not isinstance(data, dict):
        raise ValidationFailed(
            "SKILL.md frontmatter must be a YAML mapping with 'name' and 'description'.", code="invalid_frontmatter"
        )
    return data, text[match.end():]


def _too_deep() -> ValidationFailed:
    return ValidationFailed(
        f"The frontmatter nests deeper than {MAX_FRONTMATTER_DEPTH} levels: flatten it.", code="invalid_frontmatter"
    )


def _depth(value: Any) -> int:
    """How deep lists and mappings nest in `value`, walked iteratively; a node reached again
    (a YAML alias) is walked once, so an alias bomb costs its size, not its expansion."""
    deepest, seen = 0, set()
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if not isinstance(node, (dict, list)) or id(node) in seen:
            continue
        seen.add(id(node))
        deepest = max(deepest, level)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_frontmatter(text: str) -> None:
    """Refuse (422) a markdown file whose frontmatter, if it has one, cannot be parsed within
    bounds: what is stored must never fail to list."""
    split_frontmatter(text)


def validate_skill_md(text: str, folder: str) -> Frontmatter:
    """Check a SKILL.md against the Agent Skills rules; raise ValidationFailed saying which rule."""
    data, _ = split_frontmatter(text)
    if data is None:
        raise ValidationFailed(
            "SKILL.md must start with YAML frontmatter: a '---' line, 'name: "
            f"{folder}', 'description: <what it does and when to use it>', and a closing '---' line.",
            code="invalid_frontmatter",
        )
    name = data.get("name")
    description = data.get("description")
    if not isinstance(name, str) or not name:
        raise ValidationFailed(f"SKILL.md frontmatter needs 'name: {folder}'.", code="invalid_frontmatter")
    if len(name) > MAX_NAME or not NAME_PATTERN.match(name):
        raise ValidationFailed(
            f"Skill name {name!r} breaks the naming rule: 1-{MAX_NAME} lowercase letters, digits and single "
            "hyphens, not starting or ending with a hyphen (e.g. 'pdf-tools').",
            code="invalid_frontmatter",
        )
    reserved = [w for w in RESERVED_WORDS if w in name]
    if reserved:
        raise ValidationFailed(
            f"Skill name {name!r} contains the reserved word {reserved[0]!r}: choose another name.",
            code="invalid_frontmatter",
        )
    if name != folder:
        raise ValidationFailed(
            f"Skill name {name!r} in the frontmatter must equal its folder name {folder!r}.", code="invalid_frontmatter"
        )
    if not isinstance(description, str) or not description.strip():
        raise ValidationFailed(
            "SKILL.md frontmatter needs a non-empty 'description' saying what the skill does and when to use it.",
            code="invalid_frontmatter",
        )
    if len(description) > MAX_DESCRIPTION:
        raise ValidationFailed(
            f"The description is {len(description)} characters; the limit is {MAX_DESCRIPTION}.",
            code="invalid_frontmatter",
        )
    if _XML_TAG.search(description):
        raise ValidationFailed("The description must not contain XML tags.", code="invalid_frontmatter")
    extra = {k: v for k, v in data.items() if k not in ("name", "description")}
    return Frontmatter(name=name, description=description.strip(), extra=extra)


def describe(text: str, *, is_skill_md: bool) -> str:
    """A one-line description for listings and the system prompt.

    SKILL.md: its frontmatter description. A flat .md: its first heading and first paragraph.
    Never raises: a listing must not fail because one file is malformed.
    """
    if is_skill_md:
        try:
            data, _ = split_frontmatter(text)
        except ValidationFailed:
            data = None
        if data and isinstance(data.get("description"), str):
            return _short(data["description"])
    _, body = _safe_split(text)
    heading = ""
    paragraph: list[str] = []
    for line in body.splitlines():
        stripped = line.strip()
        if not heading and stripped.startswith("#"):
            heading = stripped.lstrip("#").strip()
            continue
        if stripped and not stripped.startswith("#"):
            paragraph.append(stripped)
        elif paragraph:
            break
    parts = [p for p in (heading, " ".join(paragraph)) if p]
    return _short(": ".join(parts))


def _safe_split(text: str) -> tuple[dict[str, Any] | None, str]:
    try:
        return split_frontmatter(text)
    except ValidationFailed:
        return None, text


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
