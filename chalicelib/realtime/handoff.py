"""A turn claimed by the edge, handed to the runner it starts: no claim round trips at turn start.

When a `message` frame finds its session idle, the edge's enqueue write also claims the turn
for the runner it is about to start (the same conditional write, `lease.claim_next` with a
runner id the edge picks), and the runner's invocation carries that state and its ETag. The
runner then starts the turn without reading or writing the state: its first state write (a
lease renewal, or the end of the turn) is conditional on the handed ETag.

A handoff is taken only while it is fresh (younger than half the lease): Lambda retries an
invocation that failed a minute or more later, and by then the turn it handed over may have run
or been repaired, so a stale one is dropped and the runner claims from the stored state as it
always did. The runner also drops it when the conversation shows the prompt saved already.

What a claim by the runner's own conditional write decided and a handoff does not: two copies
of one invocation running at the same moment (Lambda's at-least-once delivery, within seconds)
both take it. Both then answer the message (the model is asked twice, the client may see both
streamed under the same seqs, the conversation keeps the last save, which holds one answer), and
only one end of the turn is recorded: the other's is refused (LeaseLost) once its state write
finds the first's.
"""

from __future__ import annotations

from datetime import datetime

from chalicelib.realtime.state import SessionState, Versioned, utcnow
from chalicelib.services.models import ApiModel


class Handoff(ApiModel):
    """The state as the edge's claiming write left it, for the runner it names."""

    runner_id: str
    etag: str
    state: SessionState
    claimed_at: datetime
    # What the user's day had cost when the edge checked USER_DAILY_BUDGET_USD (None: not
    # checked): the turn bounds its budget by it instead of listing the day's usage again.
    spent_today: float | None = None

    @classmethod
    def of(cls, runner_id: str, written: Versioned, spent_today: float | None = None) -> Handoff:
        return cls(runner_id=runner_id, etag=written.etag, state=written.state, claimed_at=utcnow(),
                   spent_today=spent_today)

    def fresh(self, lease_seconds: float, now: datetime | None = None) -> bool:
        """Young enough that no retry, takeover or repair can have happened since."""
        return ((now or utcnow()) - self.claimed_at).total_seconds() < lease_seconds / 2

    @property
    def versioned(self) -> Versioned:
        return Versioned(self.state, self.etag)

    def payload(self) -> dict[str, object]:
        """The JSON the runner's invocation carries."""
        return self.model_dump(mode="json", by_alias=True)
