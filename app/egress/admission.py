"""Whether a request may go out at all: the user's switch and blocks, the profile's rules,
remembered grants, the user's answer, the labels a wildcard rule leaves to the agent, the
addresses a name resolves to, and a route's credential.

Refused names are never resolved; an `ask` host is asked before the lookup, and so are the
labels a wildcard rule left to the agent (a lookup would carry them out); the addresses are
checked once, and the exchange connects to them with no second lookup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import h11

from app.consent import Answer, RequestKind, Verdict
from app.egress.connection import ConnectionContext
from app.egress.inspect import GrantedContent, HeadScan, findings_text, preview
from app.egress.interception import intercepted_route, stray_placeholder
from app.egress.policy import (
    Action,
    Decision,
    IPAddress,
    address_refusal,
    decide_destination,
    destination_key,
    parse_host,
)
from app.egress.records import ExchangeRecord, who_answered
from app.egress.requests import Kind, Target, credential_header
from app.egress.steps import (
    Ask,
    ReadCredential,
    ReadGranted,
    Refused,
    RememberGrant,
    Resolve,
    Steps,
)
from app.egress.uploads import UploadGate
from app.errors import EgressError
from app.grants import Access
from app.profiles import Route

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credential:
    header: tuple[str, str] | None  # None: it goes in the query (an intercepted route)
    secret: str = field(repr=False)


class Admission:
    """Decides a request's destination and finds its credential; raises `Refused`."""

    def __init__(self, ctx: ConnectionContext) -> None:
        self._ctx = ctx

    def admit(self, target: Target, record: ExchangeRecord) -> Steps:
        """Decides, asks if the rule says so, and resolves (→ the addresses to connect to)."""
        ctx = self._ctx
        if ctx.all_blocked():
            record.rule, record.reason = "blocked-all", "all network access of agents is blocked"
            record.decided_by = "user"
            raise Refused(403, record.rule, "the user blocked all network access of agents")
        network = ctx.profile.network
        intercepted = (
            intercepted_route(network.routes, target.host, target.port)
            if target.kind is Kind.TUNNEL
            else None
        )
        record.decided_by = "policy"
        if target.route is None:
            self.refuse_blocked(target, record)
        if target.route is not None:
            decision = Decision(Action.ALLOW, f"route:{target.route.name}", "credential route")
        elif intercepted is not None:
            record.route = intercepted.name
            decision = Decision(
                Action.ALLOW,
                f"route:{intercepted.name}",
                "credential route, swapped in place",
                inspect=True,
            )
        else:
            decision = decide_destination(
                network,
                target.host,
                target.port,
                target.method,
                path=None if target.kind is Kind.TUNNEL else target.path,
            )
            if decision.rule == "not-listed":
                # A host the user allowed beyond the profile (the agent asked for it).
                granted = self._granted_host(target, record)
                if granted is not None:
                    decision, record.decided_by = granted, "grant"
        record.rule, record.reason = decision.rule, decision.reason
        if target.kind is Kind.TUNNEL:
            record.inspection = "inspected" if decision.inspect else "opaque"
        if decision.action is Action.DENY:
            raise Refused(403, decision.rule, decision.reason)
        if decision.action is Action.ASK:
            answer = yield from self._ask_host(target, decision)
            record.decided_by = who_answered(answer.by)
            if not answer.allowed:
                raise Refused(
                    403,
                    decision.rule,
                    f"{target.host}:{target.port} was not approved ({answer.by})",
                )
            record.reason = f"approved ({answer.by})"
        if target.route is None and ctx.settings.inspect_heads:
            yield from self._check_name(target, record)
        host = parse_host(target.host)
        if host.address is not None:
            addresses: list[IPAddress] = [host.address]
        else:
            try:
                addresses = yield Resolve(host.name, target.port, ctx.settings.connect_timeout)
            except (OSError, TimeoutError) as e:
                raise Refused(502, "unresolved", f"cannot resolve {host.name}") from e
        refused = address_refusal(network, host, addresses)
        if refused is not None:
            raise Refused(403, refused.rule, refused.reason)
        record.decision = "allow"
        return addresses

    def _check_name(self, target: Target, record: ExchangeRecord) -> Steps:
        """A name under a wildcard rule that the session has not used yet: the labels in
        front of the rule's suffix are the agent's choice, so they are data — inspected and
        counted toward the threshold like a query string, and held before any lookup."""
        ledger = self._ctx.ledger
        destination, chosen = destination_key(self._ctx.profile.network, target.host, target.port)
        name = parse_host(target.host).name
        if not chosen or not ledger.new_name(destination, name):
            return
        granted: GrantedContent | None = yield ReadGranted()
        scan = HeadScan(granted, ledger.pieces)
        scan.part("the host name", chosen.encode("ascii"), name=True)
        gate = UploadGate.of(self._ctx.profile.approval, before=ledger.before(destination))
        if gate.must_ask(len(chosen), findings=bool(scan.findings), body=False):
            if scan.findings:
                # The log keeps host names (and the question's subject): not this one.
                record.host = "…" + name[len(chosen) :]
            record.held = True
            record.findings = [f.to_json() for f in scan.findings]
            answer: Answer = yield Ask(
                RequestKind.UPLOAD,
                f"{record.host}:{target.port}",
                {
                    "host": target.host,
                    "port": target.port,
                    "method": target.method,
                    "size": gate.before + len(chosen),
                    "earlier": gate.before,
                    "hostname": True,
                    "complete": True,
                    "preview": preview(chosen.encode()),
                    "findings": record.findings,
                    "threshold": gate.threshold,
                },
            )
            record.decided_by = who_answered(answer.by)
            if not answer.allowed:
                raise Refused(
                    403,
                    "upload-refused",
                    "the host name carries data that was "
                    f"not approved ({answer.by})" + findings_text(scan.findings),
                )
            ledger.approved(destination)
        else:
            ledger.add(destination, len(chosen))
        ledger.remember_name(destination, name)

    def refuse_blocked(self, target: Target, record: ExchangeRecord) -> None:
        """A host the user blocked (a remembered refusal, e.g. "Block this host" in the
        Network tab) is refused before the profile is asked: the user's newest word on a
        host outranks the profile's allow list. A route's own base URL is not a host the
        agent names, so it is not blocked this way."""
        try:
            grant = self._ctx.granted(target, Access.CONNECT)
        except ValueError:
            return  # an invalid host: the profile's decision refuses it
        if grant is None or grant.allowed:
            return
        record.grants.append(grant.id)
        record.decided_by = "grant"
        record.rule = f"grant:{grant.id}"
        raise Refused(
            403, record.rule, f"{target.host}:{target.port} is blocked by the user ({grant.id})"
        )

    def _granted_host(self, target: Target, record: ExchangeRecord) -> Decision | None:
        grant = self._ctx.granted(target, Access.CONNECT)
        if grant is None or not grant.allowed:
            return None
        record.grants.append(grant.id)
        return Decision(
            Action.ALLOW,
            f"grant:{grant.id}",
            f"{target.host}:{target.port} is granted ({grant.lifetime})",
        )

    def _ask_host(self, target: Target, decision: Decision) -> Steps:
        record = self._ctx.record
        assert record is not None
        grant = self._ctx.granted(target, Access.CONNECT)
        if grant is not None:
            record.grants.append(grant.id)
            return Answer(Verdict.ALLOW if grant.allowed else Verdict.DENY, by=f"grant {grant.id}")
        record.asked = True
        answer: Answer = yield Ask(
            RequestKind.NETWORK,
            f"{target.host}:{target.port}",
            {
                "host": target.host,
                "port": target.port,
                "method": target.method,
                "rule": decision.rule,
            },
        )
        grant = self._ctx.grant_of(target, Access.CONNECT, answer)
        if grant is not None:
            yield RememberGrant(grant)
            record.grants.append(grant.id)
        return answer

    def credential(self, route: Route | None) -> Steps:
        """A route's secret and where it goes (→ `Credential`; None off a route)."""
        if route is None:
            return None
        try:
            secret = yield ReadCredential(route.secret)
        except EgressError as e:
            log.warning("session %s: %s", self._ctx.session, e)
            raise Refused(
                502, f"route:{route.name}", "the route's credential cannot be read from the keyring"
            ) from e
        if secret is None:
            raise Refused(
                502,
                f"route:{route.name}",
                f"no credential stored for this route: run `airlock secret set {route.secret}`",
            )
        try:
            return Credential(credential_header(route, secret), secret)
        except ValueError as e:
            raise Refused(502, f"route:{route.name}", str(e)) from e

    def no_stray_placeholder(self, request: h11.Request, target: Target) -> None:
        """A route's placeholder key names its route: sent elsewhere, it is refused."""
        stray = stray_placeholder(
            self._ctx.profile.network.routes,
            target.host,
            target.port,
            request.target,
            request.headers,
        )
        if stray is not None:
            raise Refused(
                403,
                "placeholder",
                f"the placeholder key of route {stray.name!r} "
                f"was sent to {target.host}, which is not the route's host; its "
                f"real key goes only to {stray.upstream}",
            )
