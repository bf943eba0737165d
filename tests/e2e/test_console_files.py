"""The console's workspace files panel in a real Chromium: tree, upload by drag and drop,
download, delete (fixtures shared with test_console_browser)."""

from __future__ import annotations

from tests.e2e.test_console_browser import (  # noqa: F401 - pytest fixtures
    BrowserLog,
    context,
    load_user,
    log,
    open_panel,
    page,
    pytestmark,
    start_session,
)
from tests.fakes.fake_anthropic import Reply, Text, ToolUse


def test_files_panel_tree_upload_by_drop_download_delete(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    load_user(page, "files")
    open_panel(page, "Files")
    expect(page.locator("#files-info")).to_have_text("Start a session to see its files.")
    start_session(page)
    session = page.evaluate("window.consoleApp.state.session.sessionId")
    # The agent makes a file; after the turn the tree shows it.
    world.fake.script(Reply([ToolUse("bash", {"command": "mkdir -p out && echo 'made by the agent' > out/report.txt"})]),
                      Reply([Text("Done.")]))
    page.fill("#prompt", "write a report")
    page.click("#send")
    expect(page.locator("#files-tree")).to_contain_text("report.txt")
    expect(page.locator("#files-tree")).to_contain_text("out/")
    # A file dropped on the panel lands in /workspace.
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["dropped \\u2713\\n"], "dropped.txt", {type: "text/plain"}));
        document.getElementById("files-drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""")
    expect(page.locator("#files-status")).to_have_text("Uploaded 1 file.")
    expect(page.locator("#files-tree")).to_contain_text("dropped.txt")
    got = world.http.get(f"/sessions/{session}/files/content", params={"path": "dropped.txt"})
    assert got.status_code == 200 and got.text == "dropped ✓\n"
    # Download through the browser.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download /workspace/out/report.txt").click()
    assert download.value.suggested_filename == "report.txt"
    with open(download.value.path(), "rb") as handle:
        assert handle.read() == b"made by the agent\n"
    # Delete asks first.
    page.get_by_role("button", name="Delete /workspace/dropped.txt").click()
    expect(page.locator("#confirm")).to_contain_text("dropped.txt")
    page.click("#confirm-ok")
    expect(page.locator("#files-tree")).not_to_contain_text("dropped.txt")
    assert world.http.get(f"/sessions/{session}/files/content", params={"path": "dropped.txt"}).status_code == 404
    log.bad_responses = [r for r in log.bad_responses if "dropped.txt" not in r]  # the check just above
    log.assert_clean()


def test_files_panel_hides_the_skills_folder_and_unknown_dates(world, page, log: BrowserLog) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    world.http.post("/users/snap/skills", json={"name": "notes.md", "content": "# Notes"})
    load_user(page, "snap")
    start_session(page)
    session = page.evaluate("window.consoleApp.state.session.sessionId")
    world.fake.script(Reply([ToolUse("bash", {"command": "echo kept > kept.txt"})]), Reply([Text("Done.")]))
    page.fill("#prompt", "write a file")
    page.click("#send")
    expect(page.locator("#transcript .result")).to_be_visible()
    open_panel(page, "Files")
    tree = page.locator("#files-tree")
    expect(tree).to_contain_text("kept.txt")
    listed = world.http.get(f"/sessions/{session}/files").json()["files"]
    assert "/workspace/.claude" in [f["path"] for f in listed]  # the API lists the empty folder...
    expect(tree).not_to_contain_text(".claude")  # ...which is not the user's
    year = str(__import__("datetime").date.today().year)
    expect(tree.locator(".meta").first).to_contain_text(year)  # a live file's date
    assert world.http.delete(f"/sandbox/{session}").status_code == 200
    page.click("#files-refresh")
    expect(page.locator("#files-info")).to_contain_text("from the last snapshot")
    expect(tree).to_contain_text("kept.txt")
    snapshot = world.http.get(f"/sessions/{session}/files").json()["files"]
    assert any(f["modified"].startswith("1970") for f in snapshot), snapshot  # a snapshot keeps no times...
    expect(tree).not_to_contain_text("1970")  # ...so none is shown
    log.assert_clean()
