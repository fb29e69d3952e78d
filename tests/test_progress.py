"""Whole-sweep progress: the ETA arithmetic on planted numbers, and the clock that feeds it."""
import pytest

from orchestrator.estimate import SweepClock, eta_seconds


def test_eta_rescales_predictions_by_the_observed_ratio_and_credits_running_time():
    # 2 slots; runs left: one running for 100 s (predicted 100 s), two not started (60 s, 40 s).
    # Runs take 3x the estimate: 300 - 100 = 200 s left for the running one; 180 and 120 s for the
    # others, longest first: slot A 200, slot B 180 + 120 = 300 -> 300 s.
    assert eta_seconds([(100, 100), (60, 0), (40, 0)], ratio=3.0, slots=2) == pytest.approx(300)
    assert eta_seconds([(100, 100), (60, 0), (40, 0)], ratio=1.0, slots=2) == pytest.approx(60)
    assert eta_seconds([(50, 80)], ratio=1.0, slots=1) == 0.0       # overdue: never negative
    assert eta_seconds([], ratio=2.0, slots=4) == 0.0


def test_sweep_clock_learns_the_ratio_from_runs_trained_from_scratch_only():
    now = [0.0]
    clock = SweepClock({"a": 100.0, "b": 100.0, "c": 50.0, "d": 50.0}, slots=2, clock=lambda: now[0])
    clock.started("a"), clock.started("b")
    assert clock.ratio() == 1.0                                   # nothing finished: the prior
    now[0] = 250.0
    clock.ended("a", 250.0)                                       # took 2.5x its 100 s
    clock.started("c")
    assert clock.ratio() == pytest.approx(2.5)
    # left: b running 250 s of 2.5 x 100 -> 0; c just started: 125; d: 125 -> 2 slots: 125 s
    assert "4.2 min elapsed, ~2.1 min left (runs take 2.50x the estimate)" in clock.line()
    clock.ended("b", None)                                        # failed / resumed: no calibration
    assert clock.ratio() == pytest.approx(2.5)


def test_interrupt_counts_runs_mlflow_finished_before_tune_heard():
    """A SIGINT between a trial's FINISHED write and its report to Tune: the summary counts it as
    finished (what a resume skips), not as not run; runs not started here are not counted."""
    from orchestrator.runner import Outcome
    out = Outcome(finished=1, not_run=2, interrupted="SIGINT", started={"a", "b", "c"}, ended={"a"})
    out.count_late({"a", "b", "x"})
    assert (out.finished, out.not_run, out.ended) == (2, 1, {"a", "b"})
