"""Big answers built between reactor turns: pool listings of thousands of objects.

A listing is a sequence of text pieces (:func:`nebula_xr.xmldoc.vm_pool_pieces`...),
each escaped and encoded for XML-RPC as soon as it is written, one piece per step of a
Twisted cooperator (which runs steps for a few milliseconds, then lets the reactor serve
other calls). So no API call waits for a listing more than a step or two, and the
document never exists whole as a Python string: only its encoded bytes do.

Each object is written in one step, from its state at that moment; a listing of a pool
that changes while it is built shows each object as it was when its piece was written
(as a client polling the objects one by one would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from nebula_xr.transport.xmlrpc import EncodedString

#: Runs an iterator a step at a time between reactor turns (``task.cooperate``'s form).
Cooperate = Callable[[Iterator[Any]], task.CooperativeTask]


def answer_in_slices(
    pieces: Iterable[str], cooperate: Cooperate = task.cooperate
) -> Deferred[list[Any]]:
    """``[True, document]`` with the document made of ``pieces``, built cooperatively."""
    document = EncodedString()

    def steps() -> Iterator[None]:
        for piece in pieces:
            document.add(piece)
            yield None

    return cooperate(steps()).whenDone().addCallback(lambda _: [True, document])
