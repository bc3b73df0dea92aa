"""Compute slots (earliest deadline first, given up while blocked), calls combined across threads, and the
cohorts and phase groups that make the calls of several sessions meet."""

import contextlib
import threading
import time

import pytest

from engine.batch import Cohort, Combiner, ComputeSlots, PhaseGroups, cpu_slots, yielding


def test_slots_admit_count_holders_and_grant_the_earliest_deadline_first():
    slots, order, inside, most = ComputeSlots(1), [], [0], [0]
    lock = threading.Lock()
    first_in = threading.Event()

    def work(name: str, deadline: float, hold_s: float) -> None:
        with slots.hold(deadline):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                order.append(name)
            first_in.set()
            time.sleep(hold_s)
            with lock:
                inside[0] -= 1

    holder = threading.Thread(target=work, args=("holder", 0.0, 0.1))
    holder.start()
    first_in.wait(5)
    late = [threading.Thread(target=work, args=(f"due {d}", d, 0.0)) for d in (3.0, 1.0, 2.0)]
    for t in late:  # queued while the one slot is held, in an order unlike their deadlines
        t.start()
        time.sleep(0.01)
    for t in [holder, *late]:
        t.join(5)
    assert order == ["holder", "due 1.0", "due 2.0", "due 3.0"] and most[0] == 1


def gets_in(slots: ComputeSlots, deadline: float, within_s: float = 0.05) -> bool:
    """Whether another thread takes a slot (and leaves it at once) within `within_s`."""
    got = threading.Event()

    def other() -> None:
        with slots.hold(deadline):
            got.set()

    threading.Thread(target=other, daemon=True).start()
    return got.wait(within_s)


def test_a_blocked_holder_gives_its_slot_up_and_gets_it_back():
    slots = ComputeSlots(1)
    with slots.hold(0.0):
        assert not gets_in(slots, 1.0)  # held: the other waits (and gets in once the slot is free)
        with yielding():  # blocked on something else: the slot is free meanwhile
            assert gets_in(slots, 2.0, within_s=5)
        assert not gets_in(slots, 3.0)  # held again after the block


def test_the_processs_cpu_slots_are_one_a_core_plus_one_and_shared():
    import os

    assert cpu_slots() is cpu_slots() and cpu_slots().count == len(os.sched_getaffinity(0)) + 1


def test_calls_that_meet_share_a_batch_and_a_failure_reaches_only_its_batch():
    batches = []

    def run(items):
        batches.append(list(items))
        time.sleep(0.03)
        if "bad" in items:
            raise ValueError("bad item")
        return [f"{x}!" for x in items]

    combine = Combiner(run)
    results, start = {}, threading.Barrier(5)

    def caller(x: str) -> None:
        start.wait()
        try:
            results[x] = combine(x)
        except ValueError as err:
            results[x] = err

    threads = [threading.Thread(target=caller, args=(x,)) for x in "abcde"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert {x: results[x] for x in "abcde"} == {x: f"{x}!" for x in "abcde"}
    assert len(batches) < 5 and sorted(x for b in batches for x in b) == list("abcde")
    assert combine.batches == len(batches) and combine.items == 5
    with pytest.raises(ValueError, match="bad item"):
        combine("bad")
    assert combine("f") == "f!"  # the lanes go on
    combine.close()
    with pytest.raises(RuntimeError, match="closed"):
        combine("g")


def staggered_calls(combine: Combiner, delays_s: list[float], cohort: Cohort | None) -> dict[int, str]:
    """One thread per delay: it computes (sleeps) that long, then calls `combine` with its index; in `cohort`'s
    member() when one is given. Their results by index."""
    results = {}

    def member(i: int, delay: float) -> None:
        with cohort.member() if cohort is not None else contextlib.nullcontext():
            time.sleep(delay)
            results[i] = combine(i)

    threads = [threading.Thread(target=member, args=(i, d)) for i, d in enumerate(delays_s)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    return results


def test_a_cohorts_calls_meet_in_one_batch_though_they_come_apart():
    batches = []

    def run(items):
        batches.append(sorted(items))
        return [f"{x}!" for x in items]

    alone = staggered_calls(Combiner(run), [0.0, 0.01, 0.02], None)
    assert len(batches) == 3, "apart and outside a cohort, each call finds the lane free and runs alone"
    batches.clear()
    together = staggered_calls(Combiner(run), [0.0, 0.01, 0.02], Cohort(3))
    assert batches == [[0, 1, 2]] and together == alone == {0: "0!", 1: "1!", 2: "2!"}


def test_a_batch_waits_for_members_still_computing_only_until_they_finish_or_the_meet_timeout():
    batches = []
    combine = Combiner(lambda items: batches.append(sorted(items)) or list(items))
    cohort = Cohort(3, meet_timeout_s=0.2)
    started = time.monotonic()

    def leaves_early() -> None:  # a member that finishes without calling (e.g. an interrupted chunk)
        with cohort.member():
            time.sleep(0.03)

    def stuck() -> None:  # a member computing far longer than the meet timeout
        with cohort.member():
            time.sleep(0.6)

    helpers = [threading.Thread(target=leaves_early), threading.Thread(target=stuck)]
    for t in helpers:
        t.start()
    with cohort.member():
        assert combine("x") == "x"
    waited = time.monotonic() - started
    for t in helpers:
        t.join(5)
    assert batches == [["x"]] and 0.15 < waited < 0.5  # the early leaver did not hold it; the stuck one did, capped


def test_phase_groups_spread_sessions_and_put_their_slots_on_the_groups_grids():
    groups = PhaseGroups(count=2)
    joined = [groups.join(0.08) for _ in range(4)]
    assert [g.phase for g in joined] == [0.0, 0.04, 0.0, 0.04] and joined[0] is joined[2]
    assert groups.join(0.16) is not joined[0]  # another chunk period: groups of its own
    assert groups.join(0.08, "quality") not in joined  # and another kind (preset)
    joined[1].leave()
    assert groups.join(0.08) is joined[1]  # the least loaded
    for group in joined[:2]:
        for t in (0.0, 12.3456, 1e5 + 0.0123):
            slot = group.align(t)
            assert t <= slot < t + 0.08 + 1e-9
            assert abs((slot - group.phase) / 0.08 - round((slot - group.phase) / 0.08)) < 1e-6


def test_a_gathering_forms_when_every_member_is_in_or_its_time_is_up_and_a_leaver_releases_it():
    groups = PhaseGroups(count=1, gather_s=0.3)
    group = [groups.join(0.08) for _ in range(3)][0]
    cohorts, took = {}, {}

    def arrive(name: str, delay: float) -> None:
        time.sleep(delay)
        start = time.monotonic()
        cohorts[name] = group.gather()
        took[name] = time.monotonic() - start

    threads = [threading.Thread(target=arrive, args=(n, d)) for n, d in (("a", 0.0), ("b", 0.02), ("c", 0.04))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert cohorts["a"] is cohorts["b"] is cohorts["c"] and cohorts["a"].members == 3
    assert took["c"] < 0.02 and took["a"] < 0.2  # formed when the last came, not at the deadline

    group.leave()  # two members now: one arriving waits for the other ...
    waiter = threading.Thread(target=arrive, args=("d", 0.0))
    waiter.start()
    time.sleep(0.05)
    group.leave()  # ... which leaves: the gathering forms at once with the one that came
    waiter.join(5)
    assert cohorts["d"].members == 1 and took["d"] < 0.2


def test_two_cohorts_batch_apart_side_by_side_a_lane_each():
    batches, inside, most = [], [0], [0]
    lock = threading.Lock()

    def run(items):
        with lock:
            batches.append(sorted(items))
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return list(items)

    combine, cohorts = Combiner(run, lanes=2), [Cohort(3), Cohort(3)]

    def member(name: str, cohort: Cohort, delay: float) -> None:
        with cohort.member():
            time.sleep(delay)
            combine(name)

    threads = [threading.Thread(target=member, args=(f"{g}{i}", cohorts[g], 0.01 * i)) for g in (0, 1)
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(batches) == [["00", "01", "02"], ["10", "11", "12"]] and most[0] == 2
