"""Windows that fit: on a real X server of 1024x600, every window and dialog of the desktop app
opens within the screen's available geometry, its buttons in view, and "who asks" at its full
height however long the content (tests/ui/qt/small_screen.py does the looking, in a process
of its own on the xcb platform; screenshots land in artifacts/small-*.png)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.ui.qt.conftest import REPO, need

WINDOWS = {
    "main-window",
    "review-window",
    "launch-dialog",
    "launch-dialog-failed",
    "welcome-window",
    "settings-dialog",
    "upload-dialog",
    "long-path-dialog",
    "question-queue",
}


def test_every_window_fits_1024x600_with_its_buttons_in_view(artifacts: Path) -> None:
    need("import", "imagemagick")
    binary = need("Xvfb", "xvfb")
    read, write = os.pipe()
    server = subprocess.Popen(
        [binary, "-displayfd", str(write), "-screen", "0", "1024x600x24", "-nolisten", "tcp"],
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
            [sys.executable, "-m", "tests.ui.qt.small_screen", str(artifacts)],
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
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert {r["name"] for r in results} == WINDOWS
    for result in results:
        assert result["area"] == [0, 0, 1024, 600]
        assert result["fits"], result
        assert result["buttons"] and all(result["buttons"].values()), result
        assert all(result["who"]), result
        if "dialog" in result["name"] and result["name"] not in (
            "launch-dialog",
            "launch-dialog-failed",
            "settings-dialog",
        ):
            assert result["who"], result
