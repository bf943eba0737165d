"""`clear`: empty a session's conversation, now or when its running turn ends.

A frame handler never waits for a turn: a `clear` that finds a turn running is recorded in the
session state (`clear_after_turn`, the turn's id) and answered at once (`status: clearing`). The
runner that records the end of that turn takes the request in the same conditional write, then
empties the conversation and sends `cleared` to the session's connections. Recording and taking
the request go through the state's If-Match writes, so whichever lands first decides: either the
handler sees the turn ended and clears itself, or the runner sees the request.
"""

from __future__ import annotations

import logging
from typing import Any

from chalicelib.errors import AppError
from chalicelib.realtime.durable import durably
from chalicelib.realtime.protocol import error_frame, frame
from chalicelib.realtime.sender import Sender
from chalicelib.realtime.state import SessionState, Subscriber
from chalicelib.services.conversations import ConversationsService

log = logging.getLogger(__name__)

CLEARING = ("The conversation will be cleared when the running turn ends (interrupt it to end it sooner): "
            "a `cleared` event follows.")


def empty_conversation(conversations: ConversationsService, user_id: str, conversation_id: str) -> dict[str, Any]:
    """Save the conversation with no messages (its metadata kept); returns the `cleared` event."""
    existing = conversations.load(user_id, conversation_id)
    body: dict[str, Any] = dict(existing[0]) if existing else {"conversationId": conversation_id}
    body["messages"] = []
    conversations.save(user_id, conversation_id, body)
    return frame("cleared", conversationId=conversation_id)


def defer_clear(state: SessionState) -> bool:
    """Record a clear for after the running turn; False (nothing changed) when no turn runs now."""
    if not state.turn_active or state.turn is None:
        return False
    state.clear_after_turn = state.turn.turn_id
    return True


def clear_deferred(state: SessionState, connection_id: str) -> bool:
    """Whether a clear already waits for the running turn and this connection will hear `cleared`."""
    return (state.turn is not None and state.clear_after_turn == state.turn.turn_id
            and any(s.connection_id == connection_id for s in state.subscribers))


def take_clear(state: SessionState) -> bool:
    """At the end of the recorded turn: whether a clear waits for it (taken: asked once). `clear`
    starts over, so permission answers remembered before it are forgotten in the same write."""
    if state.turn is None or state.clear_after_turn != state.turn.turn_id:
        return False
    state.clear_after_turn = None
    state.remembered_permissions = {}
    return True


def clear_after_turn(conversations: ConversationsService, sender: Sender, *, session_id: str, user_id: str,
                     conversation_id: str, subscribers: list[Subscriber]) -> None:
    """The `clear` asked for while the turn ran, done once its end is recorded (before the next
    turn can start: the runner does it before it claims again); `cleared` to every connection."""
    try:
        cleared = durably(lambda: empty_conversation(conversations, user_id, conversation_id), "clearing the conversation")
    except AppError as exc:
        # The turn's end is recorded: only the clear failed, and the client can send it again.
        log.error("clearing the conversation of session %s after its turn failed: %s", session_id, exc.message)
        cleared = error_frame(f"The conversation could not be cleared ({exc.message}): send `clear` again.", "clear_failed")
    if subscribers:
        sender.configure(subscribers[0].domain_name, subscribers[0].stage)
    for subscriber in subscribers:
        sender.send(subscriber.connection_id, cleared)
