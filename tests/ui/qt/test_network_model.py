"""The Network tab's model (per-host totals, the mark of a route's key in use) and the Grants
tab's rows for remembered network answers."""

from __future__ import annotations

from PySide6.QtWidgets import QApplication

from app.events import Event, EventKind
from app.grants import Access, Lifetime, network_grant_for
from ui.qt.main_window import revoke_tip
from ui.qt.models import GrantsModel, NetworkModel


def test_a_host_a_route_key_went_to_is_marked_with_the_count_and_the_route(
    qapp: QApplication,
) -> None:
    model = NetworkModel()
    request = {"method": "POST", "bytes_up": 10, "bytes_down": 20, "route": "llm"}
    model.add(
        [
            Event(EventKind.NET_REQUEST, "s1", "api.test:443", request),
            Event(
                EventKind.NET_CREDENTIAL,
                "s1",
                "api.test:443",
                dict(request, route_header="Authorization", status=200),
            ),
            Event(EventKind.NET_REQUEST, "s1", "api.test:443", request),
            Event(EventKind.NET_CREDENTIAL, "s1", "api.test:443", dict(request, status=200)),
            Event(EventKind.NET_REQUEST, "s1", "files.test:80", {"method": "GET"}),
        ]
    )
    column = NetworkModel.headers.index("Route key")
    shown = {
        model.index(row, 0).data(): model.index(row, column).data()
        for row in range(model.rowCount())
    }
    assert shown == {"api.test:443": "🔑 2 (llm)", "files.test:80": ""}
    assert model.hosts[0].requests == 2 and model.hosts[0].up == 20  # counted once


def test_the_grants_tab_lists_a_remembered_network_answer_beside_file_grants(
    qapp: QApplication,
) -> None:
    grant = network_grant_for(
        "api.test",
        443,
        Access.CONNECT,
        allowed=True,
        lifetime=Lifetime.ALWAYS,
        session="s1",
        profile="coder",
    )
    upload = network_grant_for(
        "files.test",
        80,
        Access.UPLOAD,
        allowed=True,
        lifetime=Lifetime.SESSION,
        session="s1",
        profile="coder",
    )
    assert grant is not None and upload is not None
    model = GrantsModel()
    model.replace([grant, upload])
    rows = [[model.index(row, column).data() for column in range(5)] for row in range(2)]
    assert rows[0] == ["api.test:443", "connect", "always", "coder (every session)", ""]
    assert rows[1] == ["files.test:80", "large uploads", "session", "session s1", ""]
    assert "cut" in revoke_tip(grant)
