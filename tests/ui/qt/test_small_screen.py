"""Windows that fit, in every colour scheme: on a real X server of 1024x600 (and 1366x768),
every window and dialog of the desktop app opens within the screen's available geometry, its
buttons in view, and "who asks" at its full height however long the content
(tests/ui/qt/small_screen.py does the looking, in a process of its own on the xcb platform).

The screenshots land in artifacts/: SIZE-SCHEME-WINDOW.png, light, dark and high contrast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ui.qt.conftest import REPO, need
from tests.ui.qt.gallery import DETAIL_PANES, MAIN_TABS

WINDOWS = {
    *(f"main-{tab}" for tab in (*MAIN_TABS, *DETAIL_PANES)),
    "review-window",
    "launch-dialog",
    "launch-dialog-failed",
    "welcome-window",
    "settings-dialog",
    "upload-dialog",
    "long-path-dialog",
    "question-queue",
}
SCHEMES = ("light", "dark", "high-contrast")


def on_screen(width: int, height: int, artifacts: Path) -> list[dict[str, object]]:
    binary = need("Xvfb", "xvfb")
    read, write = os.pipe()
    server = subprocess.Popen(
        [
            binary,
            "-displayfd",
            str(write),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            display = pipe.readline().strip()
        assert display, "Xvfb did not start"
        env = dict(os.environ, DISPLAY=f":{display}", QT_QPA_PLATFORM="xcb")
        done = subprocess.run(
            [sys.executable, "-m", "tests.ui.qt.small_screen", str(artifacts), ",".join(SCHEMES)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(10)
    assert done.returncode == 0, done.stderr
    results: list[dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("size", [(1024, 600), (1366, 768)], ids=["1024x600", "1366x768"])
def test_every_window_fits_with_its_buttons_in_view(size: tuple[int, int], artifacts: Path) -> None:
    width, height = size
    results = on_screen(width, height, artifacts)
    assert {(r["scheme"], r["name"]) for r in results} == {(s, w) for s in SCHEMES for w in WINDOWS}
    for result in results:
        assert result["area"] == [0, 0, width, height]
        assert result["fits"], result
        assert result["buttons"] and all(result["buttons"].values()), result  # type: ignore[attr-defined]
        assert all(result["who"]), result  # type: ignore[call-overload]
        if "dialog" in str(result["name"]) and result["name"] not in (
            "launch-dialog",
            "launch-dialog-failed",
            "welcome-window",
            "launch-dialog-failed",
            "settings-dialog",
        ):
            assert result["who"], result
    for scheme in SCHEMES:
        for window in WINDOWS:
            assert (artifacts / f"{width}x{height}-{scheme}-{window}.png").stat().st_size > 0
