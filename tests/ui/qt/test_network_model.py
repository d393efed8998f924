"""The Network tab's model: per-host totals, and the mark of a route's key in use."""

from __future__ import annotations

from PySide6.QtWidgets import QApplication

from app.events import Event, EventKind
from ui.qt.models import NetworkModel


def test_a_host_a_route_key_went_to_is_marked_with_the_count_and_the_route(
        qapp: QApplication) -> None:
    model = NetworkModel()
    request = {"method": "POST", "bytes_up": 10, "bytes_down": 20, "route": "llm"}
    model.add([
        Event(EventKind.NET_REQUEST, "s1", "api.test:443", request),
        Event(EventKind.NET_CREDENTIAL, "s1", "api.test:443",
              dict(request, route_header="Authorization", status=200)),
        Event(EventKind.NET_REQUEST, "s1", "api.test:443", request),
        Event(EventKind.NET_CREDENTIAL, "s1", "api.test:443", dict(request, status=200)),
        Event(EventKind.NET_REQUEST, "s1", "files.test:80", {"method": "GET"}),
    ])
    column = NetworkModel.headers.index("Route key")
    shown = {model.index(row, 0).data(): model.index(row, column).data()
             for row in range(model.rowCount())}
    assert shown == {"api.test:443": "🔑 2 (llm)", "files.test:80": ""}
    assert model.hosts[0].requests == 2 and model.hosts[0].up == 20  # counted once
