"""The progress events a job sends while it runs, one frozen dataclass per kind.

Every stage reports through a callback (``on_event``) that receives these objects; the CLI's
progress bars, the service's job rows, the Ray driver and the job process all match on the class,
so a new field or kind is a change in this one module. They pickle (Ray's bus, the job process's
pipe) and :func:`as_dict` gives the JSON shape (with ``kind``) for logs and tests.

Example::

    >>> from pipelines.events import Progress, StageStarted, as_dict
    >>> def on_event(event):
    ...     match event:
    ...         case StageStarted(stage=stage):
    ...             print("stage", stage)
    ...         case Progress(step=step, total_steps=total):
    ...             print(f"{step}/{total}")
    >>> on_event(StageStarted("selection"))
    stage selection
    >>> on_event(Progress("selection", epoch=0, step=10, total_steps=40, rows=40960, loss=0.5))
    10/40
    >>> as_dict(StageStarted("load"))
    {'kind': 'stage', 'stage': 'load'}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageStarted:
    """A stage began: ``load``, ``prescreen``, ``selection``, ``latency``, ``retrain``, ``reference``, ``done``."""

    stage: str
    kind = "stage"


@dataclass(frozen=True)
class Progress:
    """Steps done in a stage. ``epoch``, ``loss`` are ``None`` for the cross pre-screen, which has
    no epochs; ``picks`` counts what the gates have picked so far (``{"features": 3, ...}``)."""

    stage: str
    epoch: int | None
    step: int
    total_steps: int
    rows: int = 0
    loss: float | None = None
    picks: dict[str, int] = field(default_factory=dict)
    kind = "progress"


@dataclass(frozen=True)
class WindowChosen:
    """A continual pipeline's step chose its data window (and the version it warm-starts from)."""

    window: str
    warm_start_from: int | None = None
    kind = "window"


@dataclass(frozen=True)
class WorkerStarted:
    """A Ray Train worker started (one per rank; again after a restart, with a new pid)."""

    rank: int
    pid: int
    node: str
    kind = "worker"


@dataclass(frozen=True)
class PlanChosen:
    """The sharding TorchRec's planner chose for a stage: table -> sharding type, kernel, ranks."""

    stage: str
    rank: int
    world_size: int
    tables: dict[str, dict[str, Any]]
    kind = "plan"


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint was written after ``epoch`` of ``stage``."""

    stage: str
    epoch: int
    kind = "checkpoint"


@dataclass(frozen=True)
class Resumed:
    """The job resumed from the checkpoint written after ``epoch`` of ``stage``."""

    stage: str
    epoch: int
    kind = "resumed"


Event = StageStarted | Progress | WindowChosen | WorkerStarted | PlanChosen | CheckpointSaved | Resumed
OnEvent = Callable[[Event], None]


def emit(on_event: OnEvent | None, event: Event) -> None:
    """Send ``event`` to ``on_event`` when there is a listener (a job run without one reports nothing).

        >>> emit(print, StageStarted("load"))
        StageStarted(stage='load')
        >>> emit(None, StageStarted("load"))
    """
    if on_event is not None:
        on_event(event)


def as_dict(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict, its ``kind`` first."""
    return {"kind": event.kind, **dataclasses.asdict(event)}
