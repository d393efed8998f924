"""Uploads and network in the desktop app, against the real egress proxy on port 0 and a real
upstream: the upload dialog's preview scrolls to and marks the findings of a real held upload;
the Network tab lists each exchange from the proxy's own events (agent, decision, who decided),
filters by agent, and "Block this host" refuses the running session's next request at the proxy
(the upstream never sees it) until the block is undone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from app.consent import ConsentRequest, Verdict
from app.egress.bridge import Egress
from app.egress.grants import NetworkGrants
from app.events import EventBus, EventKind
from app.grants import NetworkGrant
from app.store import StateStore
from tests.app.egress.test_egress_proxy import harness, profile
from tests.netsupport import DictSecrets, RecordingServer, ScriptedFrontEnd, curl
from ui.qt.agents import AgentNames
from ui.qt.consent import ConsentDialog, Requester
from ui.qt.network_view import NetworkRequestsPanel, decision_text, who_text

AWS_KEY = b"AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = b"ghp_" + b"A1b2C3d4" * 5


@pytest.fixture
def upstream() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def held_upload(tmp_path: Path, upstream: RecordingServer, body: bytes) -> ConsentRequest:
    """The question the real proxy asks about `body` (refused, so nothing leaves)."""
    front = ScriptedFrontEnd(Verdict.DENY)
    with harness(tmp_path, profile(upstream.port), front_end=front) as proxy:
        body_file = tmp_path / "body"
        body_file.write_bytes(body)
        curl(
            "-x",
            proxy.url,
            "--data-binary",
            f"@{body_file}",
            f"http://files.test:{upstream.port}/upload",
        )
    assert upstream.seen.requests == []
    return front.asked[-1]


def test_the_upload_preview_scrolls_to_and_marks_findings_past_the_first_screen(
    qtbot: QtBot, tmp_path: Path, upstream: RecordingServer, artifacts: Path
) -> None:
    filler = b"".join(b"line %04d of harmless notes\n" % n for n in range(120))
    body = filler + b"aws = " + AWS_KEY + b"\n" + filler + b"token: " + GITHUB_TOKEN + b"\n"
    request = held_upload(tmp_path, upstream, body)
    dialog = ConsentDialog(
        request,
        Requester("notes-organizer", "", "airlock-agent:bookworm", request.session, time.time()),
        timeout=120,
        unlock_ms=300,
    )
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    preview = dialog.preview
    assert preview is not None
    # Both findings are marked, with their own text, far below the preview's first lines.
    assert preview.marked_text() == [AWS_KEY.decode(), GITHUB_TOKEN.decode()]
    assert preview.view.toPlainText().startswith("line 0000")
    assert preview.marks[0].start > preview.view.toPlainText().index("line 0008")
    assert len(preview.view.extraSelections()) == 2
    # The first is scrolled into view (the pane would otherwise show "line 0000").
    qtbot.waitUntil(lambda: preview.mark_in_view(0))
    assert preview.view.verticalScrollBar().value() > 0
    assert not preview.mark_in_view(1)
    assert preview.position.text().startswith("Finding 1 of 2: aws-access-key")
    QTest.mouseClick(preview.next, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: preview.mark_in_view(1))
    assert preview.position.text().startswith("Finding 2 of 2: github-token")
    dialog.grab().save(str(artifacts / "consent-upload-findings.png"))
    assert not preview.mark_in_view(0)
    QTest.mouseClick(preview.next, Qt.MouseButton.LeftButton)  # wraps around
    qtbot.waitUntil(lambda: preview.mark_in_view(0))
    QTest.mouseClick(preview.previous, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: preview.mark_in_view(1))


def test_the_request_list_shows_who_decided_and_blocking_a_host_refuses_the_next_request(
    qtbot: QtBot,
    tmp_path: Path,
    upstream: RecordingServer,
    engine: docker.DockerClient,
    artifacts: Path,
) -> None:
    store = StateStore(tmp_path / "state.db")
    book = NetworkGrants(store, EventBus())
    egress = Egress(engine, secrets=DictSecrets({}), broker=None, grants=book)
    names = AgentNames()
    panel = NetworkRequestsPanel(names)
    qtbot.addWidget(panel)
    panel.resize(900, 400)
    panel.show()
    blocks: list[NetworkGrant] = []
    front = ScriptedFrontEnd(Verdict.DENY)
    port = upstream.port
    with harness(
        tmp_path, profile(port), front_end=front, session="5e55104d", grants=book
    ) as proxy:
        egress._proxies.add(proxy.proxy)  # as the bridge registers a session's proxy

        def block(profile_name: str, host: str, at: int) -> None:
            grant = proxy.call(egress.block_host(profile_name, host, at, proxy.bus))
            blocks.append(grant)
            panel.blocked(grant)

        def unblock(grant: str) -> None:
            store.revoke([grant])
            proxy.call(book.refresh())
            panel.unblocked(grant)

        panel.block_requested.connect(block)
        panel.unblock_requested.connect(unblock)

        def fetch(host: str, path: str) -> str:
            return curl(
                "-x",
                proxy.url,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://{host}:{port}{path}",
            ).stdout

        assert fetch("files.test", "/one") == "200"
        assert fetch("ask.test", "/asked") == "403"  # asked, and the user said no
        proxy.wait_events(2)
        panel.add(list(proxy.events))
        rows = [
            [panel.model.index(r, c).data() for c in range(7)]
            for r in range(panel.model.rowCount())
        ]
        assert [row[1:3] + row[5:] for row in rows] == [
            [
                "t · 5e55",
                f"GET files.test:{port}/one",
                "allowed",
                f"profile rule allow[0] files.test:{port}",
            ],
            ["t · 5e55", f"GET ask.test:{port}/asked", "asked → denied", "you"],
        ]

        # Filter by agent: a session of another profile is not shown under this one.
        panel.agent_box.setCurrentIndex(panel.agent_box.findData(("t", "")))
        assert panel.filter.rowCount() == 2
        panel.agent_box.setCurrentIndex(panel.agent_box.findData(("", "other")))
        assert panel.filter.rowCount() == 2  # (no such entry: index -1 shows every agent)
        assert panel.agent_box.findText("t · 5e55") >= 0

        # Block the allowed host from its row: the running session's next request is refused.
        panel.agent_box.setCurrentIndex(0)
        panel.view.selectRow(0)
        assert panel.block_button.isEnabled()
        QTest.mouseClick(panel.block_button, Qt.MouseButton.LeftButton)
        assert blocks and blocks[0].profile == "t" and not blocks[0].allowed
        assert "Blocked files.test" in panel.status.text() and panel.undo_button.isVisible()
        seen = len(upstream.seen.requests)
        assert fetch("files.test", "/two") == "403"
        assert len(upstream.seen.requests) == seen  # the server got nothing
        proxy.wait_events(3)
        panel.add(list(proxy.events)[-1:])
        last = [panel.model.index(2, c).data() for c in (5, 6)]
        assert last == ["denied", f"your block ({blocks[0].id})"]

        panel.grab().save(str(artifacts / "network-requests-blocked.png"))
        # Undo: the host is reachable again.
        QTest.mouseClick(panel.undo_button, Qt.MouseButton.LeftButton)
        assert not panel.undo_button.isVisible()
        assert fetch("files.test", "/three") == "200"
    assert [r["path"] for r in upstream.seen.requests] == ["/one", "/three"]
    store.close()


@pytest.mark.parametrize(
    ("kind", "details", "decision", "who"),
    [
        (
            EventKind.NET_REQUEST,
            {"decision": "allow", "rule": "allow[0] a:80", "decided_by": "policy"},
            "allowed",
            "profile rule allow[0] a:80",
        ),
        (
            EventKind.NET_REFUSED,
            {"decision": "deny", "rule": "not-listed", "decided_by": "policy"},
            "denied",
            "the profile (host not listed)",
        ),
        (
            EventKind.NET_REQUEST,
            {"decision": "allow", "rule": "route:anthropic", "decided_by": "policy"},
            "allowed",
            "the profile (its anthropic route)",
        ),
        (
            EventKind.NET_REQUEST,
            {"decision": "allow", "held": True, "decided_by": "user"},
            "held → allowed",
            "you",
        ),
        (
            EventKind.NET_REFUSED,
            {"decision": "deny", "held": True, "decided_by": "timeout"},
            "held → denied",
            "timeout (no answer in time)",
        ),
        (
            EventKind.NET_REFUSED,
            {"decision": "deny", "asked": True, "decided_by": "no answer"},
            "asked → denied",
            "no answer (the question went away)",
        ),
        (
            EventKind.NET_REQUEST,
            {"decision": "allow", "rule": "grant:n-1", "grants": ["n-1"], "decided_by": "grant"},
            "allowed",
            "stored grant n-1",
        ),
        (
            EventKind.NET_REFUSED,
            {"decision": "deny", "rule": "grant:n-2", "grants": ["n-2"], "decided_by": "grant"},
            "denied",
            "your block (n-2)",
        ),
        (
            EventKind.NET_REFUSED,
            {"decision": "deny", "rule": "grant-revoked", "decided_by": "user"},
            "cut",
            "you",
        ),
        (
            EventKind.NET_REFUSED,
            {"decision": "deny", "rule": "bad-request"},
            "denied",
            "Airlock (bad-request)",
        ),
    ],
)
def test_decision_and_who_decided(
    kind: EventKind, details: dict[str, object], decision: str, who: str
) -> None:
    assert decision_text(kind, details) == decision
    assert who_text(details) == who
