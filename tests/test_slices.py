"""The API's long work (listings, big bodies, multicalls) yields to the reactor every 2 ms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor

from nebula_xr.listing import answer_in_slices
from nebula_xr.transport import slices


@pytest_twisted.ensureDeferred
async def test_a_listing_lets_the_reactor_run_after_each_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each piece takes 0.5 ms of (simulated) time: a slice holds SLICE_SECONDS of them.
    now = [0.0]
    monkeypatch.setattr(slices, "time", SimpleNamespace(monotonic=lambda: now[0]))
    written: list[int] = []

    def pieces():  # type: ignore[no-untyped-def]
        for i in range(40):
            now[0] += 0.0005
            written.append(i)
            yield f"<P>{i}</P>"

    progress: list[int] = []  # pieces written, each time the reactor got a turn

    def other_call() -> None:
        progress.append(len(written))
        if len(written) < 40:
            reactor.callLater(0, other_call)  # type: ignore[attr-defined]

    reactor.callLater(0, other_call)  # type: ignore[attr-defined]
    answer = await answer_in_slices(pieces())
    assert str(answer[1]) == "".join(f"<P>{i}</P>" for i in range(40))
    per_turn = [after - before for before, after in zip(progress, progress[1:], strict=False)]
    assert max(per_turn) == round(slices.SLICE_SECONDS / 0.0005)
