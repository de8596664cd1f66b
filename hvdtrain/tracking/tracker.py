"""``start`` and ``Tracker``: exactly one MLflow run per training job, whatever the world size.

Rank 0 creates the run and broadcasts its id, so every rank can read ``tracker.run_id``; only
rank 0 talks to MLflow (``main_process_only``), and it does so from a background thread. The one
exception: with system metrics on a multi-host job, each other host's local rank 0 logs its own
host's samples (``system``).
The collective methods (``start``, ``log_step``, ``log_epoch``)
must be called by every rank at the same points. MLflow is imported by rank 0 when tracking is
on, never by a job that runs ``tracked(enabled=False)``.

In an elastic job rank 0 can change hands: when rank 0's host is lost, another process becomes
rank 0. The run is tagged with the job (``legs.JOB_TAG``), and the new rank 0's tracker reopens it
(``successor``) and goes on logging; a process that is no longer rank 0 stops sending.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import elastic
from ..core.checkpoint import CheckpointError, claim
from ..core.context import Context, current, main_process_only
from ..core.on_main import on_main
from . import legs, records, system
from .legs import log
from .params import environment_params, flatten, without_secrets
from .records import RunSpec

if TYPE_CHECKING:
    from .sender import Sender  # imports MLflow: at run time only rank 0 does, when it starts

HANDBACK_TIMEOUT_S = 10.0  # a process no longer rank 0 sends what it still holds within this


def _sending(method):
    """Only rank 0's tracker sends, and only when tracking is on; elsewhere the call does nothing.
    In an elastic job, rank 0 may have changed hands first (``_follow_rank0``)."""
    gated = main_process_only(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._follow_rank0()
        return None if self._sender is None else gated(self, *args, **kwargs)

    return wrapper


class Tracker:
    """Handle on the job's run; every rank holds one, only rank 0's sends anything."""

    def __init__(
        self,
        ctx: Context,
        run_id: str | None,
        sender: Sender | None = None,
        system_monitor: Any = None,
        elastic_job: str | None = None,
        experiment: str | None = None,
    ):
        self.ctx = ctx
        self._run_id = run_id
        self._sender = sender
        self._system_monitor = system_monitor
        self._last_step_time: float | None = None
        self._elastic_job, self._experiment = elastic_job, experiment
        self._params: dict[str, str] = {}  # logged through log_params
        # rank 0 could not open the run: nothing to take over
        self._disabled = ctx.is_main and sender is None

    @property
    def run_id(self) -> str | None:
        """The run's id, the same on every rank; None if the server was unreachable at start
        (the run is then created later, when the server is back or by ``mlflow-sync``)."""
        return self._run_id

    @property
    def sending_run_id(self) -> str | None:
        """Rank 0: the run's id as the sender knows it, set even when created after start."""
        return self._sender.spec.run_id if self._sender is not None else self._run_id

    @_sending
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Queue ``params``, once each: one already logged is not sent again, and one logged with
        another value is left out with a warning (MLflow refuses to change a param; ``fit`` logs
        the training params, which a script may also have logged)."""
        flat = flatten(params)
        for key, value in flat.items():
            if self._params.get(key, value) != value:
                log.warning(
                    "hvdtrain: param %s already logged as %r; %r not logged (MLflow params cannot "
                    "change)",
                    key,
                    self._params[key],
                    value,
                )
        new = {key: value for key, value in flat.items() if key not in self._params}
        self._params.update(new)
        if new:
            self._sender.put(records.params_record(new))

    @_sending
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._sender.put(records.tags_record(tags))

    @_sending
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step``; returns at once."""
        self._sender.put(records.metrics_record(metrics, step))

    @_sending
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._sender.put_artifact(path, artifact_path)

    def log_step(
        self,
        step: int,
        metrics: Mapping[str, float],
        *,
        lr: float | None = None,
        samples: int | None = None,
    ) -> dict[str, float]:
        """Collective, every N steps: metrics averaged over ranks, the LR, and global samples/s
        from ``samples`` (this rank's samples since the previous call)."""
        self._follow_rank0()
        averaged = self.ctx.average(metrics)
        extra = {} if lr is None else {"lr": lr}
        now = time.perf_counter()
        if samples is not None and self._last_step_time is not None and now > self._last_step_time:
            extra["samples_per_sec"] = samples * self.ctx.size / (now - self._last_step_time)
        self._last_step_time = now
        self.log_metrics({**averaged, **extra}, step)
        return averaged

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Collective, once per epoch: averaged over ranks; training metrics are logged as
        ``epoch_<name>``, validation metrics (``val_`` prefix) under their own name."""
        self._follow_rank0()
        averaged = self.ctx.average(metrics)
        self.log_metrics(
            {k if k.startswith("val_") else f"epoch_{k}": v for k, v in averaged.items()}, epoch
        )
        return averaged

    @_sending
    def log_membership(self, step: int, size: int) -> None:
        """The job runs on ``size`` workers from ``step`` on (a leg's start, an elastic change).

        No collective: rank 0 alone logs metric ``world_size`` at ``step`` and the tag
        ``hvdtrain.world_size.step-<step>``, one tag per change (a param could not change value).
        """
        self._sender.put(records.metrics_record({"world_size": size}, step))
        self._sender.put(records.tags_record({f"hvdtrain.world_size.step-{step:08d}": size}))

    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> Path | None:
        """End the run; waits up to ``timeout`` s for buffered data. Returns the journal when it
        still holds what could not be sent (``hvdtrain mlflow-sync`` sends it later). Every rank:
        a host's system-metrics monitor stops with it."""
        if self._system_monitor is not None:
            system.stop(self._system_monitor)
            self._system_monitor = None
        return self._end(status, timeout)

    @_sending
    def _end(self, status: str, timeout: float) -> Path | None:
        self._sender.put(records.end_record(status))
        journal = self._sender.close(timeout)
        if journal is not None:
            legs.record_journal(journal)  # the launcher's summary names it
        return journal

    def _follow_rank0(self) -> None:
        """Elastic: the run goes with rank 0. A process that became rank 0 (rank 0's host was lost)
        reopens the job's run; one that is no longer rank 0 sends what it holds and stops."""
        if self._elastic_job is None or self._disabled:
            return
        if self.ctx.is_main and self._sender is None:
            from .successor import successor  # MLflow: only in the process that takes over

            self._sender = successor(self._elastic_job, self._experiment)
        elif not self.ctx.is_main and self._sender is not None:
            self._sender.close(HANDBACK_TIMEOUT_S)
            self._sender = None


@contextlib.contextmanager
def tracked(
    config: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    enabled: bool = True,
    **start_kwargs: Any,
) -> Iterator[Tracker | None]:
    """The job's run for the ``with`` block (``None`` when not ``enabled``): it ends FINISHED, or
    FAILED when the block raises."""
    tracker = start(config, experiment, **start_kwargs) if enabled else None
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.finish(status="FAILED")
        raise
    if tracker is not None:
        tracker.finish()


def start(
    config: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool | None = None,
    parent_run_id: str | None = None,
    spill_dir: str | os.PathLike | None = None,
    start_timeout: float = 30.0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> Tracker:
    """Collective, after ``init()`` on every rank: open the job's one run.

    Follows MLflow's conventions: ``MLFLOW_TRACKING_URI`` (default: MLflow's local sqlite store),
    ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID``, ``MLFLOW_RUN_ID`` to resume a run. The run
    is nested under ``parent_run_id``, or under the active MLflow run of rank 0's process.
    With ``checkpoint_dir`` the run is recorded there (``legs.RUN_FILE``); with ``resume`` too, a
    job that will continue from that directory's checkpoints continues the run that wrote them.
    ``system_metrics`` (default: MLflow's ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``) samples every
    host's CPU, memory, disk, network and GPU into the run (``system``).
    """
    ctx = current()
    # In elastic mode a worker may join while the others sync state: it must not call collectives
    # here, so nothing is exchanged (rank 0 lists its own host; only rank 0 knows the run id). The
    # run is tagged with the job instead, for whichever process is rank 0 later.
    exchange = not elastic.enabled()
    job = None if exchange else _elastic_job()
    if job is not None:
        tags = {**(tags or {}), legs.JOB_TAG: job}
    hostnames = (
        [
            ctx.broadcast_object({"host": socket.gethostname()}, rank)["host"]
            for rank in range(ctx.size)
        ]
        if exchange
        else [socket.gethostname()]
    )

    def open_run():
        try:
            return _open(
                dict(config or {}),
                experiment,
                run_name,
                dict(tags or {}),
                system_metrics,
                parent_run_id,
                spill_dir,
                start_timeout,
                hostnames,
                checkpoint_dir,
                resume,
            )
        except CheckpointError:  # not a tracking problem: the job cannot run on that directory
            raise
        except Exception as err:  # a tracking problem must never stop training
            log.warning(
                "hvdtrain: MLflow tracking disabled for this job: %s: %s", type(err).__name__, err
            )
            return None

    # Rank 0 may take a while (importing MLflow, waiting for the server): the others wait with it.
    opened = on_main(ctx, open_run, "opening the MLflow run") if exchange else open_run()
    run_id, sender, monitor, hosts_plan = opened or (None, None, None, None)
    if exchange:
        # same type on every rank
        shared = ctx.broadcast_object({"run_id": run_id, "hosts_plan": hosts_plan}, 0)
        run_id = shared["run_id"]
        if not ctx.is_main:
            monitor = system.start_on_this_host(
                ctx.local_rank, hostnames, run_id, shared["hosts_plan"]
            )
    return Tracker(
        ctx,
        run_id,
        sender,
        monitor,
        elastic_job=job,
        experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME"),
    )


def _elastic_job() -> str | None:
    """What names this elastic job for every worker, a later joiner too: its rendezvous server."""
    address, port = (
        os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR"),
        os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT"),
    )
    return f"{address}:{port}" if address and port else None


@main_process_only
def _open(
    config,
    experiment,
    run_name,
    tags,
    system_metrics,
    parent_run_id,
    spill_dir,
    start_timeout,
    hostnames,
    checkpoint_dir,
    resume,
):
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    from . import store
    from .sender import Sender

    if checkpoint_dir is not None and not elastic.enabled():
        # Before the directory's run file is read or written: it belongs to this job only.
        claim(checkpoint_dir, resume)
    store.bound_http_calls()
    uri = store.tracking_uri()
    store.check_writable(uri)  # one line now, not MLflow's 100 s of retries
    active = mlflow.active_run()
    continued = os.environ.get("MLFLOW_RUN_ID") or (
        legs.continued_run(checkpoint_dir, uri) if resume and checkpoint_dir is not None else None
    )
    spec = RunSpec(
        experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME"),
        experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID"),
        run_name=run_name,
        tags=resolve_tags({k: str(v) for k, v in tags.items()}),
        parent_run_id=parent_run_id or (active.info.run_id if active else None),
        run_id=continued,
        run_files=[] if checkpoint_dir is None else [str(legs.run_file(checkpoint_dir).absolute())],
        tracking_uri=store.absolute(uri),
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    journal = Path(spill_dir or store.default_spill_dir()) / f"run-{stamp}-{os.getpid()}.jsonl"
    sender = Sender(MlflowClient(uri), spec, journal)
    sender.put(records.params_record({**flatten(config), **environment_params(hostnames)}))
    if config:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(without_secrets(config), indent=1, default=str))
            sender.put_artifact(path, None, per_leg=True)
    if not sender.first_attempt.wait(start_timeout):
        log.warning(
            "hvdtrain: MLflow run not created within %.0f s; training continues, tracking "
            "data is buffered",
            start_timeout,
        )
    if not (system.wanted(system_metrics) and spec.run_id):
        return spec.run_id, sender, None, None
    monitor = system.start(spec.run_id, uri, system.node_id(hostnames), bool(continued))
    return spec.run_id, sender, monitor, system.plan_for_hosts(uri, bool(continued), hostnames)
