"""Reading and writing incremental workspace snapshots in tests, straight from the bucket's keys."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.sandbox import snapshot_format as fmt


def manifest_path(session: str, user: str, *, unrestored: bool = False) -> str:
    """The key of a snapshot's root."""
    return f"sessions/{session}/workspace/{user}{'.unrestored' if unrestored else ''}.manifest.json"


def snapshot_files(raw: Callable[[str], bytes], session: str, user: str, *, unrestored: bool = False) -> dict[str, bytes]:
    """Every file of the stored snapshot, by relative path (read through its root, segments and packs)."""
    prefix = f"sessions/{session}/workspace/{user}/"
    root = fmt.decode_root(raw(manifest_path(session, user, unrestored=unrestored)))
    entries = fmt.read_entries(root, {k: raw(prefix + k) for k in root.segments})
    packs = {k: raw(prefix + k) for k in root.packs}
    return {e.rel: fmt.file_content(e, packs.get(e.pack or "")) if e.size else b""
            for e in entries if e.kind == "file"}


def write_snapshot(put: Callable[[str, bytes], None], session: str, user: str, files: dict[str, bytes]) -> None:
    """Store a snapshot holding these files (as a save would), root last."""
    prefix = f"sessions/{session}/workspace/{user}/"
    writer = fmt.PackWriter(fmt.new_lineage())
    entries: dict[str, fmt.Entry] = {}
    for rel, body in sorted(files.items()):
        pack, offset, length, digest = writer.add(body)
        entries[rel] = fmt.Entry(**fmt.path_fields(rel), kind="file", mode=0o644, size=len(body), digest=digest,
                                 pack=pack if body else None, offset=offset, length=length)
    writer.finish(entries)
    lines = {rel: fmt.entry_line(e) for rel, e in entries.items()}
    root, objects, _ = fmt.seal(writer.lineage, entries, lines, {}, {k: len(v) for k, v in writer.packs.items()})
    for key, data in {**objects, **{k: bytes(v) for k, v in writer.packs.items()}}.items():
        put(prefix + key, data)
    put(manifest_path(session, user), fmt.encode_root(root))
