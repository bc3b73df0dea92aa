"""Compute slots (earliest deadline first, given up while blocked) and calls combined across threads."""

import threading
import time

import pytest

from engine.batch import Combiner, ComputeSlots, cpu_slots, yielding


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
