"""Per-client fairness in Gradio's queue: one client cannot fill the queue or hold every worker.

A client is a browser session (or a `gradio_client.Client`, which has one), or the IP address of an API call that
sends no session. For the handlers marked `@limited` (the ones that run a model), each client may have at most
BIOGPT_CLIENT_RUNNING jobs running and BIOGPT_CLIENT_QUEUED waiting:

- at admission, a job past the client's running + waiting allowance is refused at once with a message saying so
  (HTTP 400 with the message as `detail`, which the browser shows as the error) while the global queue stays open
  for everyone else;
- at dispatch, the queue skips a waiting job whose client already has its running allowance, and starts the next
  client's job instead, so the workers are shared among clients rather than taken in arrival order.

Counts are read from the queue's own lists (waiting events, active jobs) each time, so nothing can drift. This is
done by `FairQueue`, a subclass of Gradio's queue installed by `install()`; cheap handlers (status, stop) are not
counted.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Optional, TypeVar

import fastapi
import gradio as gr
from gradio import queueing

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "_wb_client_limited"


def limited(fn: F) -> F:
    """Mark a handler as a job that counts against its client's allowance."""
    setattr(fn, _MARK, True)
    return fn


def is_limited(block_fn: Any) -> bool:
    return bool(getattr(getattr(block_fn, "fn", None), _MARK, False))


def client_key(session_hash: Optional[str], request: Optional[fastapi.Request]) -> str:
    """The client a job belongs to: its session, else the caller's IP address."""
    if session_hash:
        return f"session:{session_hash}"
    host = request.client.host if request is not None and request.client is not None else "unknown"
    return f"ip:{host}"


class FairQueue(queueing.Queue):
    """Gradio's queue with per-client allowances (`running`, `waiting`: set by `install`)."""

    running: int = 1
    waiting: int = 4

    @staticmethod
    def _event_key(event: queueing.Event) -> str:
        # Gradio gives a sessionless event its own id as session hash; such a caller is known by its address.
        return client_key(None if event.session_hash == event._id else event.session_hash, event.request)

    def _load(self) -> tuple[Counter, Counter]:
        """(running, waiting) limited jobs per client."""
        running = Counter(self._event_key(event) for job in self.active_jobs if job for event in job
                          if is_limited(event.fn))
        waiting = Counter(self._event_key(event) for queue in self.event_queue_per_concurrency_id.values()
                          for event in queue.queue if is_limited(event.fn))
        return running, waiting

    def refusal(self, key: str) -> Optional[str]:
        """Why `key` may not queue another limited job now, or None."""
        running, waiting = (counts[key] for counts in self._load())
        if running + waiting < self.running + self.waiting:
            return None
        return (f"You already have jobs running ({running} running, {waiting} waiting; each user may have "
                f"{self.running} running and {self.waiting} waiting). Wait for one to finish, then try again.")

    async def push(self, body: Any, request: fastapi.Request, username: Optional[str]) -> tuple:
        block_fn = self.blocks.fns.get(body.fn_index) if body.fn_index is not None else None
        if block_fn is not None and is_limited(block_fn):
            why = self.refusal(client_key(body.session_hash, request))
            if why is not None:
                return False, why, "error"
        return await super().push(body, request, username)

    def get_events(self) -> Optional[tuple[list[queueing.Event], bool, str]]:
        """The next job to start: the first waiting one, in a random concurrency group with a free slot (as Gradio
        does), whose client is under its running allowance."""
        running, _ = self._load()
        groups = list(self.event_queue_per_concurrency_id.items())
        random.shuffle(groups)
        for concurrency_id, queue in groups:
            if queue.concurrency_limit is not None and queue.current_concurrency >= queue.concurrency_limit:
                continue
            for event in queue.queue:
                if not is_limited(event.fn) or running[self._event_key(event)] < self.running:
                    queue.queue.remove(event)
                    return [event], event.fn.batch, concurrency_id  # a batch of one: this app batches nothing
        return None


def install(demo: gr.Blocks, running: int, waiting: int) -> None:
    """Give `demo` (after `demo.queue(...)`) the per-client allowances. The queue object `demo.queue` made is kept,
    only its class changes: FairQueue adds two numbers and overrides two methods."""
    queue = demo._queue
    queue.__class__ = FairQueue
    queue.running, queue.waiting = running, waiting
