"""Group commit bookkeeping under real threads: every item written once, every caller told its fate."""

from __future__ import annotations

import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.groupcommit import GroupCommit


class Recorder:
    def __init__(self, fail_every: int = 0, slow: float = 0.0) -> None:
        self.groups: list[list[int]] = []
        self.fail_every = fail_every
        self.slow = slow
        self.lock = threading.Lock()
        self.active = 0
        self.overlaps = 0
        self.finished: set[int] = set()  # items whose write has returned

    def write(self, items: list[int]) -> BaseException | None:
        with self.lock:
            self.active += 1
            self.overlaps += self.active > 1
        time.sleep(self.slow)  # an fsync: other threads queue meanwhile
        with self.lock:
            self.active -= 1
            self.groups.append(list(items))
            self.finished.update(items)
            if self.fail_every and len(self.groups) % self.fail_every == 0:
                return OSError(f"group {len(self.groups)} failed")
        return None


def run_threads(
    gc: GroupCommit[int], threads: int, each: int, recorder: Recorder | None = None
) -> dict[int, str]:
    outcome: dict[int, str] = {}
    early: list[int] = []
    lock = threading.Lock()

    def publisher(t: int) -> None:
        for n in range(each):
            item = t * 100_000 + n
            try:
                gc.submit([item])
                result = "ok"
            except OSError as exc:
                result = str(exc)
            with lock:
                outcome[item] = result
                if recorder is not None and item not in recorder.finished:
                    early.append(item)  # returned before the write that carries it

    workers = [threading.Thread(target=publisher, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive(), "a submitter never returned"
    assert early == []
    return outcome


@settings(max_examples=15, deadline=None)
@given(threads=st.integers(1, 12), each=st.integers(1, 60), fail_every=st.sampled_from([0, 2, 5]))
def test_every_item_once_and_every_caller_gets_its_groups_result(
    threads: int, each: int, fail_every: int
) -> None:
    recorder = Recorder(fail_every=fail_every, slow=0.0002)
    outcome = run_threads(GroupCommit(recorder.write), threads, each, recorder)
    written = [item for group in recorder.groups for item in group]
    assert sorted(written) == sorted(outcome)  # each item in exactly one group
    assert len(written) == len(set(written))
    assert recorder.overlaps == 0  # one write at a time
    for number, group in enumerate(recorder.groups, 1):
        failed = fail_every and number % fail_every == 0
        expected = f"group {number} failed" if failed else "ok"
        assert {outcome[item] for item in group} == {expected}


def test_concurrent_submitters_share_writes() -> None:
    recorder = Recorder(slow=0.002)
    run_threads(GroupCommit(recorder.write), threads=8, each=40)
    assert len(recorder.groups) < 8 * 40 / 3, "groups did not form"


def test_a_lone_submitter_writes_in_its_own_thread() -> None:
    seen: list[str] = []
    gc: GroupCommit[int] = GroupCommit(lambda items: seen.append(threading.current_thread().name) or None)
    gc.submit([1])
    assert seen == [threading.current_thread().name]


def test_an_item_list_is_written_together() -> None:
    recorder = Recorder()
    gc: GroupCommit[int] = GroupCommit(recorder.write)
    gc.submit([1, 2, 3])
    assert recorder.groups == [[1, 2, 3]]
