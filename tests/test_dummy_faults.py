"""The dummy drivers' fault injection (FAIL_RATE, HANG_RATE, DELAY_JITTER), driven on a
task.Clock: what bench/soak.py relies on to exercise driver failures and timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from nebula_xr.drivers.base import VIRTUAL_MACHINE, DriverConfig, DriverContext, DriverError
from nebula_xr_plugins.dummy import DummyDriver


def _driver(tmp_path: Path, clock: task.Clock, **options: str) -> DummyDriver:
    config = DriverConfig(
        name="vmm_xen", kind=VIRTUAL_MACHINE, plugin="vmm_dummy", options=dict(options)
    )
    context = DriverContext(
        reactor=clock,
        var_dir=tmp_path,
        etc_dir=tmp_path,
        frontend="front",
        vm_log=lambda vid, message: None,
        log=lambda message: None,
    )
    return DummyDriver(config, context)


def _outcome(answer: Deferred, *, consume: bool = False) -> object:
    """The answer's result so far (None while it has none); ``consume`` handles it."""
    results: list[object] = []

    def seen(result: object) -> object:
        results.append(result)
        return None if consume else result

    answer.addBoth(seen)
    return results[0] if results else None


def test_fail_rate_fails_that_share_of_actions(tmp_path: Path) -> None:
    clock = task.Clock()
    driver = _driver(tmp_path, clock, FAIL_RATE="0.3", SEED="7")
    answers = [driver.answer(["node01"], "DEPLOY", "ok") for _ in range(1000)]
    clock.advance(0)
    outcomes = [_outcome(answer, consume=True) for answer in answers]
    failures = [o for o in outcomes if o != "ok"]
    assert 240 < len(failures) < 360
    assert all(f.check(DriverError) for f in failures)
    assert "DEPLOY failed on node01 (dummy FAIL_RATE)" in str(failures[0].value)


def test_hang_rate_answers_never_until_cancelled(tmp_path: Path) -> None:
    clock = task.Clock()
    driver = _driver(tmp_path, clock, HANG_RATE="1")
    answer = driver.answer(["node01"], "DEPLOY", "ok")
    clock.advance(3600)
    assert _outcome(answer) is None
    answer.cancel()  # what the daemon's driver timeout does
    assert _outcome(answer, consume=True) is not None


def test_delay_jitter_stays_within_its_bounds(tmp_path: Path) -> None:
    clock = task.Clock()
    driver = _driver(tmp_path, clock, DELAY="1", DELAY_JITTER="2", SEED="1")
    answers = [driver.answer([], "POLL", "ok") for _ in range(200)]
    clock.advance(0.999)
    assert all(_outcome(answer) is None for answer in answers)
    clock.advance(1.0)
    early = sum(_outcome(answer) == "ok" for answer in answers)
    assert 0 < early < 200  # some within 2 s, not all: the delays differ
    clock.advance(1.002)
    assert all(_outcome(answer) == "ok" for answer in answers)


def test_a_bad_rate_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="FAIL_RATE of vmm_xen must be a number"):
        _driver(tmp_path, task.Clock(), FAIL_RATE="often")
