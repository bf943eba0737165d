"""Input edges below the HTTP layer: ids, skill names, JSON depth and non-finite numbers, frames."""

from __future__ import annotations

import pytest

from chalicelib import safejson
from chalicelib.errors import BadRequest
from chalicelib.ids import ID_PATTERN, validate_id, validate_skill_path
from chalicelib.realtime.protocol import FrameError, parse_client_frame
from chalicelib.services.skill_format import NAME_PATTERN


@pytest.mark.parametrize("value", ["alice\n", "alice\r\n", "a\nb", "\nalice", "alice\x00"])
def test_ids_refuse_newlines_anywhere(value: str) -> None:
    with pytest.raises(BadRequest):
        validate_id(value, "userId")
    # Callers outside this module use the pattern with .match(); it must not pass either.
    assert ID_PATTERN.match(value) is None


@pytest.mark.parametrize("value", ["SKILL.md\n", "scripts/run.py\n", "a\n/b"])
def test_skill_paths_refuse_newlines(value: str) -> None:
    with pytest.raises(BadRequest):
        validate_skill_path(value)


def test_skill_folder_names_refuse_a_trailing_newline() -> None:
    assert NAME_PATTERN.match("evil") and not NAME_PATTERN.match("evil\n")


def test_depth_scan_ignores_brackets_inside_strings() -> None:
    assert safejson.nesting_depth(b'{"a": "[[[[{{{{\\"]]]", "b": [[1]]}') == 3
    assert safejson.loads('{"a": "' + "[" * 500 + '"}') == {"a": "[" * 500}


def test_depth_limit_is_exact() -> None:
    ok = "[" * safejson.MAX_JSON_DEPTH + "]" * safejson.MAX_JSON_DEPTH
    assert safejson.loads(ok)
    with pytest.raises(safejson.UnsafeJSON) as raised:
        safejson.loads("[" + ok + "]")
    assert raised.value.code == "json_too_deep"
    with pytest.raises(safejson.UnsafeJSON):
        safejson.loads("[" * 100_000 + "]" * 100_000)  # far past the interpreter's recursion limit


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(safejson.UnsafeJSON) as raised:
        safejson.loads(text)
    assert raised.value.code == "json_non_finite"


def test_malformed_json_is_still_a_value_error() -> None:
    with pytest.raises(ValueError) as raised:
        safejson.loads(b"{nope")
    assert not isinstance(raised.value, safejson.UnsafeJSON)


@pytest.mark.parametrize(
    "frame,code",
    [
        ('{"action": "message", "prompt": "hi", "options": ' + "[" * 5000 + "]" * 5000 + "}", "json_too_deep"),
        ('{"action": "start", "maxTurns": NaN}', "json_non_finite"),
    ],
)
def test_frames_with_deep_json_or_nan_are_frame_errors(frame: str, code: str) -> None:
    with pytest.raises(FrameError) as raised:
        parse_client_frame(frame)
    assert raised.value.code == code


@pytest.mark.parametrize("stored,allowed", [(b'{"allowNetwork": true}', True), (b'{"allowNetwork": "yes"}', False),
                                            (b'{"allowNetwork": 1}', False), (b'{"allowNetwork": "true"}', False)])
def test_setup_reads_allow_network_strictly(tmp_path, stored: bytes, allowed: bool) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.config import Settings
    from chalicelib.services.sessions import SessionsService
    from chalicelib.storage.local import LocalDirectoryStore

    store = LocalDirectoryStore(tmp_path)
    store.put("users/u/settings/preferences.json", stored)
    service = SessionsService(Settings.from_env({"DATA_DIR": str(tmp_path)}), store, sandboxes=None)  # type: ignore[arg-type]
    assert service._sandbox_options("u").allow_network is allowed


@pytest.mark.parametrize("stored,expected", [
    (b'{"allowNetwork": true, "network": {"allow": ["PyPI.org"], "deny": ["*.evil.example"]}}',
     (True, ("pypi.org",), ("*.evil.example",))),
    (b'{"allowNetwork": true}', (True, (), ())),
    # A rule written around the API that does not parse: the network stays closed.
    (b'{"allowNetwork": true, "network": {"allow": ["not a host"]}}', (False, (), ())),
])
def test_setup_passes_the_users_network_rules(tmp_path, stored: bytes, expected: tuple[object, ...]) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.config import Settings
    from chalicelib.services.sessions import SessionsService
    from chalicelib.storage.local import LocalDirectoryStore

    store = LocalDirectoryStore(tmp_path)
    store.put("users/u/settings/preferences.json", stored)
    service = SessionsService(Settings.from_env({"DATA_DIR": str(tmp_path)}), store, sandboxes=None)  # type: ignore[arg-type]
    options = service._sandbox_options("u")
    assert (options.allow_network, options.network_allow, options.network_deny) == expected
