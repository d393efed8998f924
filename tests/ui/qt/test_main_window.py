"""The main window as the screenshots show it: the size it opens at, columns as wide as what
they say (an image's name is never cut), the sandbox's verdict said plainly, and a request
list that stays at its newest row."""

from __future__ import annotations

import time

import pytest
from pytestqt.qtbot import QtBot

from tests.ui.qt.gallery import day, main_window
from ui.qt.main_window import opening_size
from ui.qt.models import SessionsModel


@pytest.mark.parametrize(
    ("area", "size"),
    [
        ((1024, 600), (1024, 600)),  # a small laptop: all of it
        ((1366, 741), (1366, 741)),  # the usual one, under a panel: all of it, no band beside
        ((1440, 870), (1440, 870)),
        ((1920, 1050), (1440, 840)),  # a desktop monitor: most of it
        ((3840, 2100), (1600, 1000)),  # a large one: what a table needs, no more
    ],
)
def test_the_window_opens_at_a_size_that_suits_the_screen(
    area: tuple[int, int], size: tuple[int, int]
) -> None:
    assert opening_size(*area) == size


def test_the_sessions_list_shows_every_image_name_and_verdict_whole(qtbot: QtBot) -> None:
    window = main_window()
    qtbot.addWidget(window)
    window.resize(1024, 600)
    window.show()
    qtbot.waitExposed(window)
    view, model = window.sessions_view, window.sessions
    metrics = view.fontMetrics()
    for column in range(model.columnCount()):
        for row in range(model.rowCount()):
            text = model.index(row, column).data()
            assert metrics.horizontalAdvance(text) < view.columnWidth(column), (column, text)
    sandbox = [model.index(r, SessionsModel.SANDBOX).data() for r in range(model.rowCount())]
    assert sandbox == ["verified (52 checks)", "verified (52 checks)", "checking…"]
    # Three running agents take three rows: the rest of the page is the history's.
    assert view.height() < 4 * view.verticalHeader().defaultSectionSize() + 40


def test_the_request_list_follows_its_newest_row_until_scrolled_back(qtbot: QtBot) -> None:
    window = main_window()
    qtbot.addWidget(window)
    window.resize(1024, 600)
    window.tabs.setCurrentIndex(2)
    window.show()
    qtbot.waitExposed(window)
    bar = window.requests.view.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum()  # shown at its newest
    _, events, _ = day(time.time())
    window.add_events(events[:5])
    assert bar.value() == bar.maximum()
    bar.setValue(0)  # the user reads back: new rows do not pull the list away
    window.add_events(events[:5])
    assert bar.value() == 0
