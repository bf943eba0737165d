"""The README's REST walkthrough shows what the server really answers."""

from __future__ import annotations

import json
import re

from tests.support.api import ROOT, Api


def test_the_readme_skill_list_example_matches_the_server(api: Api) -> None:
    readme = (ROOT / "README.md").read_text()
    walkthrough = readme[readme.index("# Upload a skill (flat markdown"):]
    body = json.loads(re.search(r"-d '(\{.*?\})'", walkthrough, re.S).group(1))  # type: ignore[union-attr]
    assert api.post("/users/user-123/skills", body).status_code == 200
    item = api.get("/users/user-123/skills").json_body["items"][0]
    shown = re.search(r'"items":\[\{"name":"debugging.md","form":"flat","path":"([^"]+)","size":(\d+),', walkthrough)
    assert shown is not None, "the README's list example moved: update this test"
    assert (shown.group(1), int(shown.group(2))) == (item["path"], item["size"])
