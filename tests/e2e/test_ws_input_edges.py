"""Frames a hostile or broken client may send through the local gateway: each gets an `error`
event and the connection stays usable (issue 10 item 8)."""

from __future__ import annotations

import json
import shutil

import pytest
from websockets.sync.client import connect

from tests.support.gateway import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]


def test_binary_deep_and_nan_frames_get_errors_and_the_connection_stays(world) -> None:  # type: ignore[no-untyped-def]
    setup = world.setup("sess-edges", "alice")
    with connect(world.ws_url(setup)) as ws:
        frames: list[tuple[str | bytes, str]] = [
            (b"\x00\x01binary", "binary_frame"),
            (json.dumps({"action": "get_history"}).encode(), "binary_frame"),
            ('{"action": "message", "prompt": "hi", "options": ' + "[" * 3000 + "]" * 3000 + "}", "json_too_deep"),
            ('{"action": "resume", "afterSeq": NaN}', "json_non_finite"),
        ]
        for frame, code in frames:
            ws.send(frame)
            error = receive_until(ws, "error")[-1]
            assert error["code"] == code and error["seq"] == 0, (frame[:40], error)
        ws.send(json.dumps({"action": "get_history"}))
        assert receive_until(ws, "history")[-1]["messages"] == []
