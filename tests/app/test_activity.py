"""TreeWatcher on real temporary trees: what the agent does becomes file.* events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.activity import FILE_EVENTS_BURST, FILE_EVENTS_PER_SECOND, TreeWatcher, watch_limit
from app.events import Event, EventBus, EventKind

SHOWN = Path("/home/user/project")
WINDOW = 0.2


def drain(bus_events: list[Event], kind: EventKind | None = None) -> list[Event]:
    return [e for e in bus_events if kind is None or e.kind is kind]


def watched(tree: Path, act: Callable[[Path], None], **options: object) -> list[Event]:
    """Watch `tree` (shown as SHOWN), run `act` on it, and return the events published."""

    async def main() -> list[Event]:
        bus = EventBus()
        events: list[Event] = []
        bus.attach(events.append)
        watcher = TreeWatcher("s1", bus, {tree: SHOWN}, window=WINDOW, **options)
        await watcher.start()
        await asyncio.to_thread(act, tree)
        await asyncio.sleep(WINDOW * 3)  # let the inotify thread catch up
        await watcher.stop()
        return events

    return asyncio.run(main())


def test_writes_in_a_burst_become_one_event_with_their_count(tmp_path: Path) -> None:
    def act(tree: Path) -> None:
        for _ in range(240):
            with (tree / "notes.md").open("a") as file:
                file.write("line\n")

    events = watched(tmp_path, act)

    written = drain(events, EventKind.FILE_WRITTEN)
    assert sum(e.details["count"] for e in written) == 240
    assert len(written) <= 3  # one per coalescing window, not one per write
    assert {e.subject for e in written} == {str(SHOWN / "notes.md")}
    assert written[-1].details["size"] == 240 * len("line\n")
    assert all(e.session == "s1" for e in events)


def test_each_kind_of_activity_is_reported_by_its_host_path(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "old.txt").write_text("hello")

    def act(tree: Path) -> None:
        (tree / "src" / "old.txt").read_text()
        (tree / "src" / "new.txt").write_text("new")
        (tree / "src" / "new.txt").rename(tree / "src" / "moved.txt")
        (tree / "src" / "old.txt").unlink()
        (tree / "sub").mkdir()

    events = watched(tmp_path, act)
    seen = {(e.kind, e.subject) for e in events}

    src = SHOWN / "src"
    assert (EventKind.FILE_OPENED, str(src / "old.txt")) in seen
    assert (EventKind.FILE_READ, str(src / "old.txt")) in seen
    assert (EventKind.FILE_CREATED, str(src / "new.txt")) in seen
    assert (EventKind.FILE_WRITTEN, str(src / "new.txt")) in seen
    assert (EventKind.FILE_DELETED, str(src / "old.txt")) in seen
    assert (EventKind.FILE_CREATED, str(SHOWN / "sub")) in seen
    [moved] = drain(events, EventKind.FILE_MOVED)
    assert (moved.subject, moved.details["to"]) == (str(src / "new.txt"), str(src / "moved.txt"))
    [directory] = [e for e in events if e.subject == str(SHOWN / "sub")]
    assert directory.details["directory"] is True
    assert not any(str(tmp_path) in json.dumps(e.to_json()) for e in events)


def test_a_path_s_events_keep_their_order_across_a_delete(tmp_path: Path) -> None:
    def act(tree: Path) -> None:
        for _ in range(3):
            (tree / "a").write_text("x")
            (tree / "a").unlink()

    events = watched(tmp_path, act)
    kinds = [e.kind for e in events if e.kind in (EventKind.FILE_CREATED, EventKind.FILE_DELETED)]

    assert kinds == [EventKind.FILE_CREATED, EventKind.FILE_DELETED] * 3


def test_a_tree_over_the_watch_limit_is_reported_and_not_watched(tmp_path: Path) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    for i in range(5):
        (big / f"d{i}").mkdir(parents=True)
    small.mkdir()

    async def main() -> list[Event]:
        bus = EventBus()
        events: list[Event] = []
        bus.attach(events.append)
        watcher = TreeWatcher(
            "s1", bus, {big: Path("/big"), small: Path("/small")}, window=WINDOW, watch_limit=3
        )
        await watcher.start()
        (big / "d0" / "f").write_text("x")
        (small / "f").write_text("x")
        await asyncio.sleep(WINDOW * 3)
        await watcher.stop()
        return events

    events = asyncio.run(main())

    [unwatched] = drain(events, EventKind.FILE_UNWATCHED)
    assert unwatched.subject == "/big"
    assert unwatched.details["limit"] == 3
    assert not [e for e in events if e.subject.startswith("/big/")]
    assert (EventKind.FILE_CREATED, "/small/f") in {(e.kind, e.subject) for e in events}


def test_the_kernel_watch_limit_is_read() -> None:
    limit = watch_limit()

    assert limit is None or limit > 0


def inotify_descriptors() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed since the listing
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def test_stop_removes_the_watches(tmp_path: Path) -> None:
    async def main() -> tuple[list[Event], int, int]:
        bus = EventBus()
        events: list[Event] = []
        bus.attach(events.append)
        before = inotify_descriptors()
        watcher = TreeWatcher("s1", bus, {tmp_path: SHOWN}, window=WINDOW)
        await watcher.start()
        during = inotify_descriptors()
        await watcher.stop()
        (tmp_path / "after-stop").write_text("x")
        await asyncio.sleep(WINDOW * 3)
        return events, during - before, inotify_descriptors() - before

    events, opened, left = asyncio.run(main())

    assert (opened, left) == (1, 0)
    assert events == []


UNSHARE = shutil.which("unshare")

# Runs in a user namespace whose inotify watch limit is LIMIT: a first session takes most
# watches, then a second session's tree passes the up-front count (it is smaller than the
# limit) but the kernel refuses some of its watches, which watchdog would silently skip.
HALF_WATCHED = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from app.activity import TreeWatcher
    from app.events import EventBus

    async def main():
        root = Path(sys.argv[1])
        bus = EventBus()
        events = []
        bus.attach(events.append)
        first = TreeWatcher("first", bus, {root / "first": Path("/first")})
        second = TreeWatcher("second", bus, {root / "second": Path("/second")})
        await first.start()
        await second.start()
        await second.stop()
        await first.stop()
        print(json.dumps([e.to_json() for e in events]))

    asyncio.run(main())
    """
)


def test_a_tree_the_kernel_cannot_fully_watch_is_reported(tmp_path: Path) -> None:
    assert UNSHARE is not None, "needs unshare(1) from util-linux"
    for i in range(5):
        (tmp_path / "first" / f"d{i}").mkdir(parents=True)  # 6 watches
    for i in range(4):
        (tmp_path / "second" / f"d{i}").mkdir(parents=True)  # 5 watches, 2 left
    script = tmp_path / "half_watched.py"
    script.write_text(HALF_WATCHED)
    command = 'echo 8 > /proc/sys/user/max_inotify_watches && exec "$0" "$1" "$2"'
    result = subprocess.run(
        [
            UNSHARE,
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            command,
            sys.executable,
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        timeout=60,
    )
    assert result.returncode == 0, f"cannot run with a lowered inotify limit: {result.stderr}"

    events = json.loads(result.stdout)

    [unwatched] = [e for e in events if e["kind"] == "file.unwatched"]
    assert (unwatched["session"], unwatched["subject"]) == ("second", "/second")
    assert unwatched["details"]["reason"] == "inotify watch limit reached"
    # 3 directories found no watch; a kernel that fails the whole schedule at the limit (6.18
    # does, through watchdog) leaves all 5 of the tree unwatched, which is said as such.
    assert unwatched["details"]["unwatched"] in (3, 5)
    assert unwatched["details"]["directories"] == 5


def test_activity_faster_than_the_budget_is_counted_not_recorded_one_by_one(
    tmp_path: Path,
) -> None:
    # 6 000 new files at full speed: each would be an event and an audit record.
    started = time.monotonic()

    def act(tree: Path) -> None:
        for n in range(6000):
            os.close(os.open(tree / f"f{n}", os.O_CREAT | os.O_WRONLY, 0o644))

    events = watched(tmp_path, act)
    seconds = time.monotonic() - started
    created = drain(events, EventKind.FILE_CREATED)
    one_by_one = [e for e in created if not e.details.get("held")]
    held = [e for e in created if e.details.get("held")]
    assert len(one_by_one) <= FILE_EVENTS_BURST + FILE_EVENTS_PER_SECOND * seconds + 1
    assert held and sum(e.details["count"] for e in created) == 6000
    assert sum(e.details.get("paths", 1) for e in created) == 6000
    assert held[0].subject.endswith(" more paths)")


# Hosts a TreeWatcher in a process of its own, which the test can stop (SIGSTOP) the way a
# starved reader is: the kernel's inotify queue then overflows for real. Prints each event
# published as a line of JSON.
WATCH_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from app.activity import TreeWatcher
    from app.events import EventBus

    async def main():
        bus = EventBus()
        bus.attach(lambda e: print(json.dumps(e.to_json()), flush=True))
        watcher = TreeWatcher("s1", bus, {Path(sys.argv[1]): Path("/p")}, window=0.1)
        await watcher.start()
        print(json.dumps({"kind": "ready"}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await watcher.stop()

    asyncio.run(main())
    """
)


class WatchProcess:
    def __init__(self, tree: Path) -> None:
        self.seen: list[dict[str, object]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-c", WATCH_PROCESS, str(tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=Path(__file__).parents[2],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        # A thread reads its lines: select() on a buffered pipe misses lines already read.
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next_event(lambda e: e["kind"] == "ready", timeout=30)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def next_event(
        self, wanted: Callable[[dict[str, object]], bool], timeout: float = 10
    ) -> dict[str, object] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if not line:
                return None
            event = json.loads(line)
            self.seen.append(event)
            if wanted(event):
                return event
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.process.pid, 18)  # SIGCONT, if the test stopped short
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def storm(tree: Path, times: int) -> None:
    """Opens and closes one file: two events each time, which the kernel does not merge
    (they alternate) but the watcher does, so they overflow the queue without spending
    the event budget the test's later events need."""
    path = tree / "storm"
    path.write_text("")
    for _ in range(times):
        os.close(os.open(path, os.O_RDONLY))


def test_an_overflow_of_the_inotify_queue_is_a_gap_and_a_rescan(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("old")
    (tmp_path / "doomed.txt").write_text("x")
    watch = WatchProcess(tmp_path)
    try:
        os.kill(watch.process.pid, 19)  # SIGSTOP: its reader falls behind the kernel queue
        storm(tmp_path, 20_000)  # 40 000 events, more than fs.inotify.max_queued_events
        (tmp_path / "during.txt").write_text("new")  # lost in the overflow
        (tmp_path / "doomed.txt").unlink()
        (tmp_path / "kept.txt").write_text("changed")
        resumed = time.time()
        os.kill(watch.process.pid, 18)  # SIGCONT

        gap = watch.next_event(lambda e: e["kind"] == "activity.gap")
        assert gap is not None, f"no activity.gap in {len(watch.seen)} events"
        details = gap["details"]
        assert isinstance(details, dict)
        assert details["cause"] == "inotify queue overflowed"
        assert details["from"] < details["to"]
        assert details["to"] - resumed < 1.0, (details, resumed)  # found and rescanned

        (tmp_path / "after.txt").write_text("normal write")
        assert watch.next_event(lambda e: e.get("subject") == "/p/after.txt") is not None
    finally:
        watch.close()

    rescanned = {
        (e["kind"], e["subject"])
        for e in watch.seen
        if isinstance(e.get("details"), dict) and e["details"].get("rescan")
    }
    assert ("file.created", "/p/during.txt") in rescanned
    assert ("file.deleted", "/p/doomed.txt") in rescanned
    assert ("file.written", "/p/kept.txt") in rescanned
    kinds = [e["kind"] for e in watch.seen]
    assert kinds.index("activity.gap") < max(
        i for i, e in enumerate(watch.seen) if e.get("subject") == "/p/after.txt"
    )


def test_a_watch_thread_that_dies_is_a_gap_not_silence(tmp_path: Path) -> None:
    # The watch library walks a directory moved into the tree recursively: one nested
    # deeper than Python's recursion limit raises inside its thread, which ends.
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    deep = str(outside)
    os.mkdir(deep)
    for _ in range(1100):
        deep += "/d"
        os.mkdir(deep)  # one by one: pathlib's and os's makedirs recurse too
    watch = WatchProcess(tree)
    try:
        moved = time.time()
        outside.rename(tree / "deep")
        gap = watch.next_event(lambda e: e["kind"] == "activity.gap")
        assert gap is not None, f"no activity.gap in {len(watch.seen)} events"
        details = gap["details"]
        assert isinstance(details, dict)
        assert "thread died: RecursionError" in str(details["cause"])
        assert details["to"] - moved < 1.0
    finally:
        watch.close()
        remove_deep(tree / "deep" if (tree / "deep").exists() else outside)


def remove_deep(top: Path) -> None:
    """rmdir a chain of nested d/ directories, deepest first (rmtree would recurse)."""
    path = str(top)
    while os.path.isdir(path + "/d"):
        path += "/d"
    while len(path) >= len(str(top)):
        os.rmdir(path)
        path = os.path.dirname(path)
