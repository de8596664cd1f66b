"""Work only rank 0 does (a checkpoint save or load, a model upload) while the other ranks wait,
without the hang bound taking it for a hang.

``hvdtrain run --hang-timeout T`` has Horovod stop a job when some ranks wait in a collective the
others have not joined for T/2 seconds (``core.tuning.hang_settings``). Had the other ranks
simply gone on to their next collective while rank 0 wrote a large checkpoint, a save longer than
T/2 would end a healthy job. Here rank 0 does the work on a thread, and every rank, rank 0's main
thread included, joins a small allreduce ("is rank 0 still busy?") at growing intervals until it
is done: every rank keeps submitting the same collectives, so nothing stalls, however long the
work takes. The outcome reaches every rank: the same result, or the same error.

So a call that runs ``on_main`` is collective: every rank must make it. Horovod's own idiom,
``if rank == 0: save(...)``, leaves rank 0 alone in the first "busy?" allreduce while the others
wait in their next collective, a hang only the hang timeout ends (300 s by default, with no word
of the save). A caller that names itself (``call``) has a rank still alone after
``ALONE_WARNING_S`` say so in one line; a warning, not an error, since other ranks may
legitimately come late (their own work before the call, up to half the hang timeout).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .context import Context
from .guards import UserError

T = TypeVar("T")
FIRST_POLL_S, LONGEST_POLL_S = 0.005, 1.0
ALONE_WARNING_S = 10.0


def on_main(ctx: Context, work: Callable[[], T], what: str, call: str | None = None) -> T | None:
    """Collective: ``work()`` on rank 0 (its result there, None elsewhere). A ``UserError`` it
    raises is raised on every rank (printed once); any other error is re-raised on rank 0 and
    stops the other ranks quietly (rank 0's traceback tells the story). ``call``: the public
    function that runs this, named in the warning of a rank left alone in it."""
    if ctx.size == 1:
        return work()
    outcome: dict = {}
    if ctx.is_main:
        thread = threading.Thread(
            target=_run, args=(work, outcome), name=f"hvdtrain-{what}", daemon=True
        )
        thread.start()
    alone = None
    if call is not None:
        alone = threading.Timer(ALONE_WARNING_S, _warn_alone, args=(ctx.rank, call))
        alone.daemon = True
        alone.start()
    delay = FIRST_POLL_S
    while ctx.average({"hvdtrain.rank0_busy": float(ctx.is_main and thread.is_alive())})[
        "hvdtrain.rank0_busy"
    ]:
        if alone is not None:  # every rank joined the first poll
            alone.cancel()
        time.sleep(delay)
        delay = min(2 * delay, LONGEST_POLL_S)
    if alone is not None:
        alone.cancel()
    error = outcome.get("error")
    if isinstance(error, UserError):
        error.collective = True  # every rank raises it: printed once, by rank 0
    told = (
        error
        if isinstance(error, UserError) or error is None
        else f"{type(error).__name__}: {error}"
    )
    shared = ctx.broadcast_object(told if ctx.is_main else None, 0)
    if error is not None:
        raise error
    if isinstance(shared, UserError):
        raise shared
    if shared is not None:
        raise UserError(f"rank 0 failed while {what} ({shared[:300]})", collective=True)
    return outcome.get("result")


def _run(work: Callable[[], T], outcome: dict) -> None:
    try:
        outcome["result"] = work()
    except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
        outcome["error"] = err


def _warn_alone(rank: int, call: str) -> None:
    print(
        f"hvdtrain: warning: rank {rank} has waited {ALONE_WARNING_S:.0f} s in {call} for the "
        f"other ranks: call it on every rank (rank 0 writes while the others wait), not under "
        f"'if rank == 0:'; otherwise the job stops at the hang timeout",
        file=sys.stderr,
        flush=True,
    )
