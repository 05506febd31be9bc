import threading

import pytest

from core.jobs import Cancelled, JobContext


def test_progress_is_rate_limited_but_keeps_message_changes_and_completion():
    seen = []
    ctx = JobContext(seen.append, min_step=0.1, min_interval=3600)
    for i in range(101):
        ctx.progress(i / 100, "layers")
    ctx.progress(1.0, "done")
    fractions = [p.fraction for p in seen]
    assert 5 <= len(seen) <= 13  # ~every 10%, not 102 reports
    assert fractions == sorted(fractions)
    assert seen[-1].message == "done" and seen[-1].fraction == 1.0
    assert all(p.elapsed >= 0 for p in seen)


def test_progress_is_clamped():
    seen = []
    ctx = JobContext(seen.append)
    ctx.progress(-3, "a")
    ctx.progress(7, "b")
    assert [p.fraction for p in seen] == [0.0, 1.0]


def test_cancel_from_another_thread_stops_the_job_between_steps():
    ctx = JobContext()
    steps = []
    started = threading.Event()

    def job():
        for i in range(10_000):
            ctx.check_cancelled()
            steps.append(i)
            started.set()
            threading.Event().wait(0.001)

    t = threading.Thread(target=lambda: pytest.raises(Cancelled, job))
    t.start()
    started.wait(5)
    ctx.cancel()
    t.join(5)
    assert not t.is_alive()
    assert ctx.cancelled and 0 < len(steps) < 10_000


def test_sub_context_maps_progress_into_its_slice_and_shares_cancellation():
    seen = []
    ctx = JobContext(seen.append, min_step=0)
    sub = ctx.sub(0.5, 0.75).sub(0.0, 0.5)
    sub.progress(1.0, "x")
    assert seen[-1].fraction == pytest.approx(0.625)
    ctx.cancel()
    with pytest.raises(Cancelled):
        sub.progress(0.5)


def test_partial_results_reach_the_listener_through_sub_contexts_and_stop_when_cancelled():
    import pytest

    from core.jobs import Cancelled, JobContext

    got = []
    ctx = JobContext(on_partial=lambda name, value: got.append((name, value)))
    ctx.sub(0.2, 0.5).sub(0.0, 0.5).partial("prediction", 1)
    JobContext().partial("ignored", 2)  # nobody listens: nothing happens
    assert got == [("prediction", 1)]
    ctx.cancel()
    with pytest.raises(Cancelled):
        ctx.partial("lens", 3)
    assert got == [("prediction", 1)]
