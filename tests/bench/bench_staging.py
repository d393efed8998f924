"""Staged writes: listing a 10 000-file changeset, committing it against `cp -a` of the same
files, and the cost of granting a 1 GiB tree read-write. Prints figures; asserts nothing
about time."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from app.commit import CommitLog
from app.staging import SessionStaging
from app.view import SessionView

FILES = 10_000
RUNS = 3


def seconds(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


def staged_tree(base: Path) -> tuple[SessionStaging, object, Path, Path]:
    host = base / "host"
    host.mkdir(parents=True)
    staging = SessionStaging(base / "staging", "bench")
    root, upper, _ = staging.add_tree(host, "g-bench", 1024**3, None)
    for i in range(FILES):
        directory = upper / f"d{i // 100:03}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{i:05}.txt").write_bytes(os.urandom(2048))
    return staging, root, upper, host


@pytest.mark.bench
def test_changeset_listing_and_commit_against_cp(tmp_path: Path) -> None:
    listings, commits, copies, durable = [], [], [], []
    for run in range(RUNS):  # interleaved, medians: this disk's timings wander
        staging, root, upper, host = staged_tree(tmp_path / f"run{run}")
        listings.append(seconds(staging.changeset))
        changeset = staging.changeset()
        assert len(changeset.changes) == FILES + FILES // 100
        log = CommitLog(tmp_path / f"run{run}" / "commits")
        roots = {root.id: root}  # type: ignore[attr-defined]
        commits.append(seconds(lambda log=log, changes=changeset.changes, roots=roots:
                               log.commit("bench", changes, roots)))
        assert (host / "d099" / "f09999.txt").exists()
        target = tmp_path / f"run{run}" / "copy"
        command = ["cp", "-a", f"{upper}/.", str(target)]
        copies.append(seconds(lambda command=command: subprocess.run(command, check=True)))
        # The commit syncs what it wrote (a crash or power cut leaves old or new, never
        # half), so also time the copy with the same durability: cp -a, then sync.
        synced = tmp_path / f"run{run}" / "copy-synced"
        command = ["sh", "-c", f"cp -a '{upper}/.' '{synced}' && sync -f '{synced}'"]
        durable.append(seconds(lambda command=command: subprocess.run(command, check=True)))
    listing, commit, cp, cp_sync = (statistics.median(x)
                                    for x in (listings, commits, copies, durable))
    print(f"\nchangeset of {FILES} files (2 KiB each), median of {RUNS}: listed in "
          f"{listing:.2f} s; committed in {commit:.2f} s vs cp -a {cp:.2f} s: "
          f"{commit / cp:.2f}x (target <= 2x); vs cp -a + sync {cp_sync:.2f} s: "
          f"{commit / cp_sync:.2f}x")


@pytest.mark.bench
def test_grant_cost_of_a_1_gib_tree(tmp_path: Path) -> None:
    tree = tmp_path / "big"
    tree.mkdir()
    chunk = os.urandom(16 * 1024**2)
    for i in range(64):
        (tree / f"part{i:02}.bin").write_bytes(chunk)
    view = SessionView(tmp_path / "view")
    staging = SessionStaging(tmp_path / "staging", "bench")
    mirrored = seconds(lambda: view.add(tree))
    staged = seconds(lambda: staging.add_tree(tree, "g-big", 1024**3, None))
    copy = seconds(lambda: shutil.copytree(tree, tmp_path / "copy"))
    print(f"\ngranting a 1 GiB tree (64 files) read-write: view {mirrored * 1000:.1f} ms + "
          f"staging {staged * 1000:.1f} ms = {(mirrored + staged) * 1000:.1f} ms "
          f"(a full copy takes {copy:.2f} s; target well under 1 s)")
