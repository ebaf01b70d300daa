"""The API's long work, run a slice at a time between reactor turns.

Pool listings, large request bodies and multicalls run through one cooperator whose
slices last :data:`SLICE_SECONDS`: Twisted's global cooperator runs 10 ms at a time,
which a concurrent small call (a ``vmget_info`` poll) waited for whole, once per slice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

#: Wall-clock seconds of work per reactor turn.
SLICE_SECONDS = 0.002


class _SliceOver:
    """A slice's termination predicate: true once :data:`SLICE_SECONDS` have passed."""

    def __init__(self) -> None:
        self.end = time.monotonic() + SLICE_SECONDS

    def __call__(self) -> bool:
        return time.monotonic() >= self.end


API_COOPERATOR = task.Cooperator(terminationPredicateFactory=_SliceOver)


def coiterate(iterator: Iterator[Any]) -> Deferred[Iterator[Any]]:
    """Run ``iterator`` to its end in slices; fires with it when done."""
    return API_COOPERATOR.coiterate(iterator)


def cooperate(iterator: Iterator[Any]) -> task.CooperativeTask:
    """Run ``iterator`` in slices, as :func:`twisted.internet.task.cooperate` does."""
    return API_COOPERATOR.cooperate(iterator)
