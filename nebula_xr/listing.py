"""Big answers built between reactor turns: pool listings of thousands of objects.

A listing is a sequence of text pieces (:func:`nebula_xr.xmldoc.vm_pool_pieces`...),
each escaped and encoded for XML-RPC as soon as it is written, one piece per step of a
Twisted cooperator (:mod:`nebula_xr.transport.slices`: it runs steps for 2 ms, then lets
the reactor serve other calls). So no API call waits for a listing more than a step or two, and the
document never exists whole as a Python string: only its encoded bytes do.

Each object is written in one step, from its state at that moment; a listing of a pool
that changes while it is built shows each object as it was when its piece was written
(as a client polling the objects one by one would).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from nebula_xr.transport import slices
from nebula_xr.transport.xmlrpc import EncodedString

#: glibc's mallopt parameter, and its default value (128 KiB).
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024

#: Runs an iterator a step at a time between reactor turns (``task.cooperate``'s form).
Cooperate = Callable[[Iterator[Any]], task.CooperativeTask]


def answer_in_slices(
    pieces: Iterable[str], cooperate: Cooperate = slices.cooperate
) -> Deferred[list[Any]]:
    """``[True, document]`` with the document made of ``pieces``, built cooperatively;
    the pieces are written escaped for XML-RPC already (``xmlrpc=True``)."""
    document = EncodedString()

    def steps() -> Iterator[None]:
        for piece in pieces:
            document.add(piece, escaped=True)
            yield None

    return cooperate(steps()).whenDone().addCallback(lambda _: [True, document])


def keep_big_buffers_out_of_the_heap() -> None:
    """Fix glibc's mmap threshold at its default, so that every buffer over 128 KiB (a
    listing's pieces, its reply) is mapped on its own and unmapped when freed.

    Left dynamic, glibc raises the threshold to the size of the biggest buffer freed
    (a 10 MB reply), after which such buffers come from the heap, which fragments and
    stays at its largest size: the RSS grew by 20 MB over a few listings and kept it.
    Not glibc (musl...): nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
