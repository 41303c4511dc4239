"""Keep Ray Data's scheduling loop from spinning while a stream waits on its consumer.

Ray Data 2.60's streaming executor blocks in ``ray.wait`` (up to 0.1 s) only
while some task is running. When every operator is held back because the
consumer has not taken the blocks already made (the steady state of a training
stream that runs ahead of its trainer), no task runs and the loop goes round
without pausing: one core busy doing nothing, inside the training worker itself
under ``--deterministic`` (its own stream), where it also holds the GIL against
the training step. Measured on 2 cores, tiny student, 2 workers: 22-29 img/s
with the spinning stream, 60-65 img/s without (``benchmarks/README.md``).

:class:`IdlePause` is an execution callback (``DataContext``'s public
``custom_execution_callback_classes``) that sleeps a few milliseconds after a
loop step that returned at once, which is what a step with nothing running
does; a step that waited on a task is left alone. Data keeps flowing: a
consumer that takes a block frees budget, and the next step, at most one pause
later, dispatches the next task.
"""

from __future__ import annotations

import os
import time

from ray.data._internal.execution.execution_callback import ExecutionCallback

IDLE_STEP_S = 0.002  # a loop step shorter than this waited on nothing
PAUSE_S = 0.01  # at most 100 idle loop steps per second instead of tens of thousands
# "0" turns the pause off (benchmarks/training_stream.py compares both); read where a stream is built.
ENV_SWITCH = "DEPTHLIB_RAY_DATA_PACING"


class IdlePause(ExecutionCallback):
    """Sleeps ``PAUSE_S`` after each scheduling-loop step shorter than ``IDLE_STEP_S``."""

    def __init__(self):
        self._last = None

    def before_execution_starts(self, executor) -> None:
        self._last = time.perf_counter()

    def on_execution_step(self, executor) -> None:
        now = time.perf_counter()
        if self._last is not None and now - self._last < IDLE_STEP_S:
            time.sleep(PAUSE_S)
            now = time.perf_counter()
        self._last = now


def pace(ds):
    """``ds`` with :class:`IdlePause` among its execution callbacks (the dataset's own
    context, which travels with it to a ``streaming_split`` coordinator). Returns ``ds``."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return ds
    classes = ds.context.custom_execution_callback_classes
    if IdlePause not in classes:
        ds.context.custom_execution_callback_classes = [*classes, IdlePause]
    return ds
