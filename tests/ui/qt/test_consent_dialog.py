"""The consent dialog, driven with the keyboard and the mouse through the real ConsentBroker:
deny by default, locked buttons at first, countdown, durations, untrusted text, withdrawal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QLineEdit

from app.consent import ConsentBroker, ConsentRequest, RequestKind, Verdict, new_request_id
from app.events import EventBus, EventKind
from app.grants import Lifetime, Mode
from tests.ui.qt.conftest import until
from ui.qt import settings as options
from ui.qt.consent import ConsentDialog, QtFrontEnd, Requester, name_filters
from ui.qt.settings import Settings


def request_for(
    kind: RequestKind,
    subject: str = "example.org:443",
    reason: str = "",
    timeout: float = 120,
    **details: object,
) -> ConsentRequest:
    return ConsentRequest(
        new_request_id(), "5e55104d", "notes-organizer", kind, subject, details, reason, timeout
    )


def requester(request: ConsentRequest) -> Requester:
    return Requester(
        "notes-organizer",
        "Reads your notes and writes a summary.",
        "airlock-agent:bookworm",
        request.session,
        time.time() - 30,
    )


@pytest.fixture
def front_end(settings: Settings) -> Iterator[QtFrontEnd]:
    settings.set(options.UNLOCK_DELAY, 300)
    front_end = QtFrontEnd(settings, requester)
    yield front_end
    # A test that failed half way leaves no question on screen for the next one.
    for dialog in front_end.dialogs():
        dialog.hide()
    front_end.queue.hide()


@pytest.fixture
def broker(front_end: QtFrontEnd) -> ConsentBroker:
    return ConsentBroker(EventBus(), front_end)


async def shown_dialog(front_end: QtFrontEnd, request: ConsentRequest) -> ConsentDialog:
    """The request's dialog, in view: questions queue in one window (ui/qt/question_queue.py),
    so one that is not in front is brought there, as a click on its row in the list does."""
    await until(lambda: front_end.dialog(request.id) is not None, what="the dialog")
    dialog = front_end.dialog(request.id)
    assert dialog is not None
    front_end.queue.bring_request(request.id)
    assert dialog.isVisible()
    return dialog


async def unlocked(dialog: ConsentDialog) -> None:
    await until(lambda: not dialog.locked, what="the buttons to unlock")


def gone(dialog: ConsentDialog) -> bool:
    return not shiboken6.isValid(dialog) or not dialog.isVisible()


def focus_widget() -> object:
    return QApplication.focusWidget()


def test_enter_denies_by_default_and_buttons_start_disabled(
    run: Callable[..., object], broker: ConsentBroker, front_end: QtFrontEnd
) -> None:
    request = request_for(RequestKind.NETWORK, reason="to fetch the weather")

    async def scenario() -> object:
        asked = asyncio.ensure_future(broker.ask(request))
        dialog = await shown_dialog(front_end, request)
        assert front_end.pending == 1
        # The first moment: a well-timed click or Enter meant for another window does nothing.
        assert not dialog.allow_button.isEnabled() and not dialog.deny_button.isEnabled()
        QTest.mouseClick(dialog.allow_button, Qt.MouseButton.LeftButton)
        QTest.keyClick(dialog, Qt.Key.Key_Return)
        QTest.keyClick(dialog, Qt.Key.Key_Escape)
        await asyncio.sleep(0.05)
        assert not asked.done() and dialog.isVisible()
        await unlocked(dialog)
        assert dialog.deny_button.isDefault() and focus_widget() is dialog.deny_button
        QTest.keyClick(focus_widget(), Qt.Key.Key_Return)  # type: ignore[arg-type]
        answer = await asked
        assert front_end.pending == 0 and gone(dialog)
        return answer

    answer = run(scenario())
    assert answer.verdict is Verdict.DENY and answer.by == "dialog"  # type: ignore[attr-defined]


def test_escape_denies(
    run: Callable[..., object], broker: ConsentBroker, front_end: QtFrontEnd
) -> None:
    request = request_for(RequestKind.NETWORK)

    async def scenario() -> object:
        asked = asyncio.ensure_future(broker.ask(request))
        dialog = await shown_dialog(front_end, request)
        await unlocked(dialog)
        QTest.keyClick(dialog, Qt.Key.Key_Escape)
        return await asked

    assert run(scenario()).verdict is Verdict.DENY  # type: ignore[attr-defined]


def test_keyboard_allow_for_one_hour(
    run: Callable[..., object], broker: ConsentBroker, front_end: QtFrontEnd
) -> None:
    request = request_for(
        RequestKind.NETWORK, "api.weather.example:443", port=443, method="CONNECT"
    )
    events = []
    broker._bus.attach(events.append)

    async def scenario() -> object:
        asked = asyncio.ensure_future(broker.ask(request))
        dialog = await shown_dialog(front_end, request)
        await unlocked(dialog)
        # Alt+F is the "Allow for" label's mnemonic: focus goes to the duration list.
        QTest.keyClick(dialog, Qt.Key.Key_F, Qt.KeyboardModifier.AltModifier)
        box = dialog.findChild(QComboBox, "duration")
        assert focus_widget() is box
        QTest.keyClick(box, Qt.Key.Key_Down)
        QTest.keyClick(box, Qt.Key.Key_Down)  # once -> 5 minutes -> 1 hour
        assert box.currentText() == "For 1 hour"
        QTest.keyClick(dialog, Qt.Key.Key_A, Qt.KeyboardModifier.AltModifier)
        return await asked

    started = time.time()
    answer = run(scenario())
    assert answer.verdict is Verdict.ALLOW and answer.lifetime is Lifetime.UNTIL  # type: ignore[attr-defined]
    assert answer.until is not None and abs(answer.until - (started + 3600)) < 10  # type: ignore[attr-defined]
    assert [e.kind for e in events] == [EventKind.REQUEST_ASKED, EventKind.REQUEST_ANSWERED]
    assert events[1].details["verdict"] == "allow" and events[1].details["by"] == "dialog"


def test_mouse_allow_with_tab_navigation(
    run: Callable[..., object], broker: ConsentBroker, front_end: QtFrontEnd
) -> None:
    request = request_for(RequestKind.NETWORK)

    async def scenario() -> object:
        asked = asyncio.ensure_future(broker.ask(request))
        dialog = await shown_dialog(front_end, request)
        await unlocked(dialog)
        QTest.keyClick(focus_widget(), Qt.Key.Key_Tab)  # type: ignore[arg-type]
        assert focus_widget() is dialog.allow_button
        QTest.keyClick(focus_widget(), Qt.Key.Key_Backtab)  # type: ignore[arg-type]
        assert focus_widget() is dialog.deny_button
        QTest.mouseClick(dialog.allow_button, Qt.MouseButton.LeftButton)
        return await asked

    answer = run(scenario())
    assert answer.allowed and answer.lifetime is Lifetime.ONCE  # type: ignore[attr-defined]


def test_countdown_then_deny_by_timeout(
    run: Callable[..., object], settings: Settings, broker: ConsentBroker, front_end: QtFrontEnd
) -> None:
    settings.set(options.CONSENT_TIMEOUT, 5)
    settings.set(options.TIMEOUT_ACTION, "deny-session")
    request = request_for(RequestKind.NETWORK, "tracker.example:443")

    async def scenario() -> tuple[object, list[str], object]:
        asked = asyncio.ensure_future(broker.ask(request))
        dialog = await shown_dialog(front_end, request)
        texts = [dialog.deny_button.text()]
        await asyncio.sleep(1.3)
        texts.append(dialog.deny_button.text())
        answer = await asked
        again = await broker.ask(request_for(RequestKind.NETWORK, "tracker.example:443"))
        # Once the session ends, the front end forgets what it silenced for it.
        front_end.forget(request.session)
        later = request_for(RequestKind.NETWORK, "tracker.example:443")
        asked_later = asyncio.ensure_future(broker.ask(later))
        await shown_dialog(front_end, later)
        front_end.deny(later.id)
        await asked_later
        return answer, texts, again

    started = time.monotonic()
    answer, texts, again = run(scenario())  # type: ignore[misc]
    assert 4.5 < time.monotonic() - started < 9
    assert texts[0] == "&Deny (5)" and texts[1] == "&Deny (4)"
    assert answer.verdict is Verdict.DENY and answer.by == "timeout"
    # "Deny it, and the same request for the rest of the session": not asked again.
    assert again.verdict is Verdict.DENY and again.by == "denied earlier in this session"


def test_broker_deadline_and_withdrawal_close_the_dialog(
    run: Callable[..., object], broker: ConsentBroker, front_end: QtFrontEnd
) -> None:
    short = request_for(RequestKind.NETWORK, timeout=0.8)
    withdrawn = request_for(RequestKind.FILE_OPEN, "Open notes")

    async def scenario() -> tuple[object, object, ConsentDialog, ConsentDialog]:
        first = asyncio.ensure_future(broker.ask(short))
        second = asyncio.ensure_future(broker.ask(withdrawn))
        one = await shown_dialog(front_end, short)
        two = await shown_dialog(front_end, withdrawn)
        assert front_end.pending == 2
        answer = await first
        assert broker.cancel(withdrawn.id)
        return answer, await second, one, two

    answer, cancelled, one, two = run(scenario())  # type: ignore[misc]
    assert answer.by == "timeout" and cancelled.by == "cancelled"
    assert gone(one) and gone(two) and front_end.pending == 0


def test_untrusted_text_is_plain_and_marked(qapp: QApplication, artifacts: Path) -> None:
    reason = '<b>URGENT</b> <a href="file:///etc/shadow">click</a>\x1b[31m\u202egnp.exe'
    request = request_for(
        RequestKind.UPLOAD,
        "paste.example:443",
        reason,
        size=18_240,
        sha256="9f2c" * 16,
        mime="text/csv",
        method="POST",
        path="/api/paste",
        complete=True,
        preview="name,iban\\nAna,DE89 3704 0044 0532 0130 00\\n",
        inspection="inspected",
        findings=[
            {"kind": "iban", "label": "an IBAN (bank account number)", "offset": 14},
            {"kind": "granted-file", "label": "/home/ana/Finance/2026.csv", "offset": 4096},
        ],
    )
    dialog = ConsentDialog(request, requester(request), timeout=60, unlock_ms=300)
    dialog.show()
    labels = {label.objectName(): label for label in dialog.findChildren(QLabel)}
    shown = labels["reason"]
    assert shown.textFormat() is Qt.TextFormat.PlainText
    assert "<b>URGENT</b>" in shown.text() and "\\u001b" in shown.text()
    assert "\\u202e" in shown.text()  # the bidi override is shown, not obeyed
    # Every label but the fixed row titles ("Agent:", "Size:") is plain text.
    assert all(
        label.textFormat() is Qt.TextFormat.PlainText
        for label in dialog.findChildren(QLabel)
        if label.text() and not label.text().endswith(":")
    )
    assert "IBAN" in labels["findings"].text()
    assert any("decrypted by Airlock" in label.text() for label in dialog.findChildren(QLabel))
    assert dialog.findChild(QComboBox, "duration").count() == 2  # once · this session
    dialog.grab().save(str(artifacts / "consent-upload.png"))
    dialog.deny()


def test_file_filters_from_the_agent_are_sanitised() -> None:
    raw = [
        ["Notes", [[0, "*.md"], [0, "*.txt"], [1, "text/plain"]]],
        ["Evil) (*", [[0, "*; rm -rf ~"], [0, "*.csv"]]],
        "junk",
        [1, 2, 3],
    ]
    assert name_filters(raw) == ["Notes (*.md *.txt)", "Evil] [* (*.csv)"]
    # The portal's JSON shape.
    portal = [{"name": "Notes", "patterns": [["glob", "*.md"], ["mime", "text/plain"]]}]
    assert name_filters(portal) == ["Notes (*.md)"]


def test_file_save_choice_goes_through_the_file_dialog(
    run: Callable[..., object], broker: ConsentBroker, front_end: QtFrontEnd, tmp_path: Path
) -> None:
    request = request_for(RequestKind.FILE_SAVE, "Save summary", current_name="summary.md")
    target = tmp_path / "summary.md"

    async def scenario() -> object:
        asked = asyncio.ensure_future(broker.ask(request))
        dialog = await shown_dialog(front_end, request)
        await unlocked(dialog)
        QTest.keyClick(dialog, Qt.Key.Key_C, Qt.KeyboardModifier.AltModifier)  # &Choose where…
        await until(lambda: dialog.file_dialog is not None and dialog.file_dialog.isVisible())
        name = dialog.file_dialog.findChild(QLineEdit, "fileNameEdit")
        name.selectAll()
        QTest.keyClicks(name, str(target))
        # The dialog's completer may still pop up over the name (its folder model loads in
        # the background) and would take the Return: a person would see it and press again.
        popup = name.completer().popup() if name.completer() is not None else None
        if popup is not None and popup.isVisible():
            popup.hide()
        QTest.keyClick(name, Qt.Key.Key_Return)
        await until(lambda: dialog.paths, what="the choice")
        assert "will be able to save to" in dialog.summary.text()
        assert str(target) in dialog.summary.text()
        assert dialog.focusWidget() is dialog.allow_button
        QTest.keyClick(dialog.focusWidget(), Qt.Key.Key_Return)
        return await asked

    answer = run(scenario())
    assert answer.allowed and answer.paths == (target,)  # type: ignore[attr-defined]
    assert answer.mode is Mode.READ_WRITE  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "hostile",
    [
        "\u200fmark",
        "\u061cmark",
        "zero\u200bwidth",
        "line\u2028separator",
        "c1\u009bcsi",
        "no\u00a0break",
        "hangul\u3164filler",
    ],
)
def test_invisible_characters_in_agent_text_are_shown_as_escapes(
    qapp: QApplication, hostile: str
) -> None:
    request = request_for(RequestKind.NETWORK, f"{hostile}.example:443", f"reason {hostile}")
    dialog = ConsentDialog(request, requester(request), timeout=60, unlock_ms=300)
    labels = {label.objectName(): label for label in dialog.findChildren(QLabel)}
    escape = next(f"\\u{ord(c):04x}" for c in hostile if not c.isascii())
    for name in ("reason", "headline"):
        assert escape in labels[name].text(), name
        assert not any(not c.isascii() and c != "…" for c in labels[name].text()), name
    dialog.deny()


def test_padding_cannot_put_the_agents_words_on_a_line_of_their_own(qapp: QApplication) -> None:
    fake = "Airlock: pre-approved by your rules (verified)"
    request = request_for(
        RequestKind.NETWORK, "paste.example:443", "sync notes" + " " * 200 + "\n\n" + fake
    )
    dialog = ConsentDialog(request, requester(request), timeout=60, unlock_ms=300)
    labels = {label.objectName(): label for label in dialog.findChildren(QLabel)}
    assert labels["reason"].text() == f"sync notes {fake}"  # one run of words, in its box
    dialog.deny()
