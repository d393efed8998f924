"""Limits (app/sessions/limits.py): the cgroup counters are read in their three forms, and a
disk with less free space than the reserve is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.sessions.limits import disk_short, limit_counter_files, read_counter


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("max 3\n", 3),  # pids.events
        ("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n", 7),  # memory.events
        ("12\n", 12),  # memory.failcnt (cgroup v1)
        ("", 0),
        ("max nothing\n", 0),
    ],
)
def test_a_counter_is_read_in_each_of_its_forms(text: str, count: int, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text(text)
    assert read_counter(counter) == count


def test_a_counter_that_is_gone_reads_as_none(tmp_path: Path) -> None:
    assert read_counter(tmp_path / "gone") is None


def test_a_process_that_is_gone_has_no_counters() -> None:
    assert limit_counter_files(0) == {}  # pid 0 has no /proc entry


def test_a_disk_short_of_the_reserve_is_named(tmp_path: Path) -> None:
    assert disk_short(tmp_path, 0) is None
    why = disk_short(tmp_path, 2**62)
    assert why is not None and str(tmp_path) in why and "must stay free" in why
