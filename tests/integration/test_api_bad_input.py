"""A corpus of bad input: every request gets a 4xx JSON error and changes nothing."""

from __future__ import annotations

import base64
import json

import pytest

from tests.support.api import Api

BIG = "x" * (1024 * 1024 + 1)
DEEP_CONVERSATION = b'{"conversationId": "c", "messages": [{"role": "user", "content": ' + b"[" * 900 + b"]" * 900 + b"}]}"
DEEP_CURSOR = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode().rstrip("=")
SKILL_OK = "---\nname: good\ndescription: Fine.\n---\nbody"


def fm(name: str = "good", description: str = "Does things. Use when asked.", extra: str = "") -> str:
    return f"---\nname: {name}\ndescription: {description}\n{extra}---\nbody"


CORPUS: list[tuple[str, str, str, object, dict[str, str] | None]] = [
    # traversal and bad ids, in every id position
    ("traversal userId", "POST", "/users/../skills", {"name": "a.md", "content": "x"}, None),
    ("encoded slash userId", "POST", "/users/a%2F..%2Fb/skills", {"name": "a.md", "content": "x"}, None),
    ("encoded dots userId", "GET", "/users/%2e%2e/skills", None, None),
    ("dot userId", "GET", "/users/./conversations", None, None),
    ("unicode userId", "GET", "/users/%C3%A9l%C3%A8ve/skills", None, None),
    ("rtl override userId", "GET", "/users/a%E2%80%AEb/settings", None, None),
    ("too long userId", "GET", "/users/" + "a" * 129 + "/skills", None, None),
    ("traversal skill name", "POST", "/users/u/skills", {"name": "../escape.md", "content": "x"}, None),
    ("slash skill name", "POST", "/users/u/skills", {"name": "a/b.md", "content": "x"}, None),
    ("encoded traversal skill get", "GET", "/users/u/skills/..%2F..%2Fetc", None, None),
    ("encoded dots skill delete", "DELETE", "/users/u/skills/%2e%2e", None, None),
    ("absolute file path", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": SKILL_OK, "/etc/passwd": "x"}}, None),
    ("traversal file path", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": SKILL_OK, "../../x.md": "x"}}, None),
    ("nested traversal file path", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": SKILL_OK, "a/../../x": "x"}}, None),
    ("backslash file path", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": SKILL_OK, "a\\..\\x": "x"}}, None),
    ("non-NFC file path", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": SKILL_OK, "cafe\u0301.md": "x"}}, None),
    ("emoji skill name", "POST", "/users/u/skills", {"name": "🔥", "content": "x"}, None),
    ("traversal conversationId", "POST", "/users/u/conversations", {"conversationId": "../x", "messages": []}, None),
    ("slash conversationId", "POST", "/users/u/conversations", {"conversationId": "a/b", "messages": []}, None),
    ("encoded conversation get", "GET", "/users/u/conversations/..%2Fx", None, None),
    ("traversal sessionId", "POST", "/setup/..?userId=u", None, None),
    ("encoded sessionId", "POST", "/setup/a%2F..?userId=u", None, None),
    ("missing userId on setup", "POST", "/setup/s1", None, None),
    ("bad userId on setup", "POST", "/setup/s1?userId=../x", None, None),
    ("bad sessionId on destroy", "DELETE", "/sandbox/%2e%2e", None, None),
    # bodies
    ("empty body", "POST", "/users/u/skills", b"", None),
    ("bad json", "POST", "/users/u/skills", b"{not json", None),
    ("json array", "POST", "/users/u/skills", b"[1,2]", None),
    ("json string", "POST", "/users/u/conversations", b'"hi"', None),
    ("invalid utf-8", "POST", "/users/u/skills", b'{"name": "\xff.md", "content": "x"}', None),
    ("wrong content type", "POST", "/users/u/skills", {"name": "a.md", "content": "x"}, {"Content-Type": "text/plain"}),
    ("form content type", "POST", "/users/u/conversations", {"conversationId": "c"}, {"Content-Type": "application/x-www-form-urlencoded"}),
    ("missing name", "POST", "/users/u/skills", {"content": "x"}, None),
    ("missing content", "POST", "/users/u/skills", {"name": "a.md"}, None),
    ("name wrong type", "POST", "/users/u/skills", {"name": 123, "content": "x"}, None),
    ("files wrong type", "POST", "/users/u/skills", {"name": "good", "files": ["SKILL.md"]}, None),
    ("file content wrong type", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": 5}}, None),
    ("content and files", "POST", "/users/u/skills", {"name": "good", "content": "x", "files": {"SKILL.md": "y"}}, None),
    ("unknown field", "POST", "/users/u/skills", {"name": "a.md", "content": "x", "owner": "root"}, None),
    ("oversize skill file", "POST", "/users/u/skills", {"name": "a.md", "content": BIG}, None),
    ("oversize folder file", "POST", "/users/u/skills", {"name": "good", "files": {"SKILL.md": SKILL_OK, "big.txt": BIG}}, None),
    ("oversize conversation", "POST", "/users/u/conversations", {"conversationId": "c", "messages": ["x" * (5 * 1024 * 1024)]}, None),
    ("messages wrong type", "POST", "/users/u/conversations", {"conversationId": "c", "messages": "x"}, None),
    ("conversationId wrong type", "POST", "/users/u/conversations", {"conversationId": 7}, None),
    ("settings wrong type", "PUT", "/users/u/settings", {"maxTurns": "lots"}, None),
    ("settings out of range", "PUT", "/users/u/settings", {"maxTurns": 0}, None),
    ("settings unknown field", "PUT", "/users/u/settings", {"apiKey": "steal"}, None),
    ("settings patch not object", "PATCH", "/users/u/settings", [1], None),
    ("bad limit", "GET", "/users/u/skills?limit=abc", None, None),
    ("limit too big", "GET", "/users/u/conversations?limit=1001", None, None),
    ("bad cursor", "GET", "/users/u/skills?cursor=%%%", None, None),
    ("forged cursor", "GET", "/users/u/conversations?cursor=eyJ4IjoxfQ", None, None),
    ("bad If-None-Match", "POST", "/users/u/skills", {"name": "a.md", "content": "x"}, {"If-None-Match": '"abc"'}),
    # frontmatter
    ("no frontmatter", "POST", "/users/u/skills", {"name": "good", "content": "# Just markdown"}, None),
    ("unparsable yaml", "POST", "/users/u/skills", {"name": "good", "content": "---\nname: [good\n---\n"}, None),
    ("frontmatter not mapping", "POST", "/users/u/skills", {"name": "good", "content": "---\n- a\n- b\n---\n"}, None),
    ("name mismatch", "POST", "/users/u/skills", {"name": "good", "content": fm(name="other")}, None),
    ("uppercase name", "POST", "/users/u/skills", {"name": "good", "content": fm(name="Good")}, None),
    ("leading hyphen", "POST", "/users/u/skills", {"name": "good", "content": fm(name="-good")}, None),
    ("double hyphen", "POST", "/users/u/skills", {"name": "good", "content": fm(name="go--od")}, None),
    ("reserved word", "POST", "/users/u/skills", {"name": "claude-helper", "content": fm(name="claude-helper")}, None),
    ("empty description", "POST", "/users/u/skills", {"name": "good", "content": fm(description='""')}, None),
    ("long description", "POST", "/users/u/skills", {"name": "good", "content": fm(description="d" * 1025)}, None),
    ("xml in description", "POST", "/users/u/skills", {"name": "good", "content": fm(description="Use <system>now</system>")}, None),
    ("missing SKILL.md", "POST", "/users/u/skills", {"name": "good", "files": {"README.md": "x"}}, None),
    # issue 10 item 8: a trailing newline, deep JSON, non-finite numbers, lax booleans
    ("newline userId", "GET", "/users/alice%0A/skills", None, None),
    ("newline userId write", "POST", "/users/u%0A/conversations", {"conversationId": "c"}, None),
    ("newline folder skill name", "POST", "/users/u/skills", {"name": "evil\n", "content": '---\nname: "evil\\n"\ndescription: Fine.\n---\nbody'}, None),
    ("newline flat skill name", "POST", "/users/u/skills", {"name": "evil.md\n", "content": "x"}, None),
    ("newline conversationId", "POST", "/users/u/conversations", {"conversationId": "c\n"}, None),
    ("newline sessionId", "POST", "/setup/s1%0A?userId=u", None, None),
    ("newline userId on setup", "POST", "/setup/s1?userId=u%0A", None, None),
    ("deep conversation", "POST", "/users/u/conversations", DEEP_CONVERSATION, None),
    ("deep settings", "PUT", "/users/u/settings", b'{"preferences": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ("deep settings patch", "PATCH", "/users/u/settings", b'{"preferences": {"a": ' + b'{"b": ' * 3000 + b"1" + b"}" * 3001 + b"}", None),
    ("deep skill body", "POST", "/users/u/skills", b'{"name": "a.md", "content": "x", "files": ' + b"[" * 3000 + b"]" * 3000 + b"}", None),
    ("deep cursor", "GET", "/users/u/conversations?cursor=" + DEEP_CURSOR, None, None),
    ("NaN in conversation", "POST", "/users/u/conversations", b'{"conversationId": "c", "metadata": {"score": NaN}}', None),
    ("Infinity in settings", "PUT", "/users/u/settings", b'{"preferences": {"x": Infinity}}', None),
    ("-Infinity in patch", "PATCH", "/users/u/settings", b'{"preferences": {"x": -Infinity}}', None),
    ("string boolean", "PUT", "/users/u/settings", {"allowNetwork": "yes"}, None),
    ("integer boolean", "PATCH", "/users/u/settings", {"allowNetwork": 1}, None),
    ("string integer", "PUT", "/users/u/settings", {"maxTurns": "10"}, None),
    ("malformed network rule", "PUT", "/users/u/settings", {"allowNetwork": True, "network": {"allow": ["pypi.org/simple"]}}, None),
    ("network rule with a space", "PATCH", "/users/u/settings", {"network": {"deny": ["a b.example"]}}, None),
    ("unknown network key", "PATCH", "/users/u/settings", {"network": {"allowed": ["pypi.org"]}}, None),
    ("too many network rules", "PUT", "/users/u/settings", {"network": {"allow": [f"h{i}.example" for i in range(201)]}}, None),
]


@pytest.mark.parametrize("label,method,path,body,headers", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_is_a_4xx_and_writes_nothing(local_api: Api, label: str, method: str, path: str, body: object, headers: dict[str, str] | None) -> None:
    local_api.post("/users/u/skills", {"name": "existing.md", "content": "keep me"})
    before = local_api.keys()
    if isinstance(body, bytes):
        response = local_api.send(method, path, raw=body, headers=headers)
    elif body is None and method in ("GET", "DELETE"):
        response = local_api.get(path, headers) if method == "GET" else local_api.delete(path, headers)
    else:
        response = local_api.send(method, path, body, headers=headers)
    assert 400 <= response.status_code < 500, (label, response.status_code, response.body[:300])
    payload = json.loads(response.body)
    assert set(payload) == {"error", "code"} and payload["error"] and payload["code"]
    assert "Traceback" not in payload["error"]
    assert local_api.keys() == before, label
    # Nothing outside users/ either (the sandbox folder holds only what setup made).
    assert not list((local_api.data_dir.parent / "sandboxes").glob("*")) or path.startswith("/setup/s1")


def test_frontmatter_errors_are_422_with_the_rule(local_api: Api) -> None:
    r = local_api.post("/users/u/skills", {"name": "good", "content": fm(name="other")})
    assert r.status_code == 422 and r.json_body["code"] == "invalid_frontmatter"
    assert "must equal its folder name 'good'" in r.json_body["error"]
    flat_hint = local_api.post("/users/u/skills", {"name": "debugging", "content": "# Debugging"})
    assert flat_hint.status_code == 422 and "name it 'debugging.md'" in flat_hint.json_body["error"]


def test_a_deep_conversation_stored_around_the_api_is_a_clear_error_not_a_500(local_api: Api) -> None:
    local_api.write_raw("users/u/conversations/deep.json", b'{"conversationId": "deep", "messages": ' + b"[" * 900 + b"]" * 900 + b"}")
    r = local_api.get("/users/u/conversations/deep")
    assert r.status_code == 422 and r.json_body["code"] == "conversation_unreadable"
    assert "64 are allowed" in r.json_body["error"] and "DELETE it" in r.json_body["error"]
    listed = local_api.get("/users/u/conversations").json_body
    assert [c["conversationId"] for c in listed["conversations"]] == ["deep"]
    assert local_api.delete("/users/u/conversations/deep").status_code == 200


def test_strict_settings_still_take_real_booleans_and_numbers(local_api: Api) -> None:
    r = local_api.send("PUT", "/users/u/settings", {"allowNetwork": True, "maxTurns": 7})
    assert r.status_code == 200 and r.json_body["settings"]["allowNetwork"] is True
    r = local_api.send("PATCH", "/users/u/settings", {"allowNetwork": False})
    assert r.status_code == 200 and r.json_body["settings"] == {**r.json_body["settings"], "allowNetwork": False, "maxTurns": 7}
    refused = local_api.send("PATCH", "/users/u/settings", {"allowNetwork": "yes"})
    assert refused.status_code == 400 and "allowNetwork" in refused.json_body["error"]


def test_network_rules_are_stored_normalised(local_api: Api) -> None:
    r = local_api.send("PUT", "/users/u/settings", {"allowNetwork": True, "network": {
        "allow": ["PyPI.org.", "*.GitHubUserContent.com", "[2001:db8::1]"], "deny": ["*.evil.example"]}})
    assert r.status_code == 200, r.body
    assert r.json_body["settings"]["network"] == {"allow": ["pypi.org", "*.githubusercontent.com", "2001:db8::1"],
                                                  "deny": ["*.evil.example"]}
    refused = local_api.send("PATCH", "/users/u/settings", {"network": {"allow": ["*.*.example"]}})
    assert refused.status_code == 400 and "'*.*.example' is not a host name" in refused.json_body["error"]


def test_deep_and_non_finite_bodies_name_the_problem(local_api: Api) -> None:
    deep = local_api.send("POST", "/users/u/conversations", raw=DEEP_CONVERSATION)
    assert deep.status_code == 400 and deep.json_body["code"] == "json_too_deep" and "at most 64" in deep.json_body["error"]
    nan = local_api.send("POST", "/users/u/conversations", raw=b'{"conversationId": "c", "x": NaN}')
    assert nan.status_code == 400 and nan.json_body["code"] == "json_non_finite"


SKILL_BODY = {"name": "enc.md", "content": "x"}


@pytest.mark.parametrize("encoding,content_type", [
    ("utf-16", "application/json"),
    ("utf-16-le", "application/json"),
    ("utf-16-be", "application/json"),
    ("utf-32", "application/json"),
    ("utf-32-le", "application/json"),
    ("utf-8-sig", "application/json"),
    ("latin-1", "application/json; charset=latin-1"),
    ("utf-8", "application/json; charset=utf-16"),
    ("utf-8", "application/json; charset=iso-8859-1"),
])
@pytest.mark.parametrize("path", ["/users/u/skills", "/users/u/conversations", "/users/u/settings"])
def test_bodies_are_utf8_json_only(local_api: Api, encoding: str, content_type: str, path: str) -> None:
    body = {"/users/u/skills": SKILL_BODY, "/users/u/conversations": {"conversationId": "c", "messages": []},
            "/users/u/settings": {"maxTurns": 3}}[path]
    before = local_api.keys()
    raw = json.dumps(body).encode(encoding)
    response = local_api.send("PUT" if path.endswith("settings") else "POST", path, raw=raw,
                              headers={"Content-Type": content_type})
    assert response.status_code == 400 and json.loads(response.body)["code"] == "invalid_encoding", response.body
    assert local_api.keys() == before
    ok = local_api.send("PUT" if path.endswith("settings") else "POST", path, raw=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json; charset=UTF-8"})
    assert ok.status_code == 200, ok.body
