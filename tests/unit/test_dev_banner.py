"""./scripts/dev's banner says how to get an end user's token and where to use it (issue 23, Clients)."""

from __future__ import annotations

from chalicelib.config import Settings
from devserver.__main__ import _user_token_hint

BASE = "http://127.0.0.1:8000"


def test_the_banner_says_how_to_mint_a_user_token_and_where_to_use_it() -> None:
    hint = _user_token_hint(BASE, Settings.from_env({"USER_TOKEN_SECRET": "s" * 32, "API_KEY": "k"}))
    assert f"curl -X POST {BASE}/users/<userId>/tokens -H 'Authorization: Bearer $API_KEY'" in hint
    assert f"{BASE}/#token=<token>" in hint and "./scripts/chat --token <token>" in hint
    open_dev = _user_token_hint(BASE, Settings.from_env({"USER_TOKEN_SECRET": "s" * 32}))
    assert "Authorization" not in open_dev  # no API_KEY: the curl needs none
    without = _user_token_hint(BASE, Settings.from_env({}))
    assert "set USER_TOKEN_SECRET" in without and f"{BASE}/users/<userId>/tokens" in without
