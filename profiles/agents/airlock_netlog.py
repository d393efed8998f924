"""Airlock's network witness, run in the egress sidecar: every packet that tries to leave the
agent's network namespace other than through the proxy is reported, and none gets anywhere.

Not an agent: the bridge starts it as the sidecar's command (see app/egress/bridge.py for why
this is safe). Standard library only; it runs on the image's python3.

1. As root with only CAP_NET_ADMIN, CAP_SETUID and CAP_SETGID, before the agent exists: create
   the TUN device `airlock0` in the namespace it shares with the agent, enable IPv6, and make
   the device the route for every IPv4 and IPv6 destination that is not local (loopback
   stays on `lo`: the proxy's port is there).
2. Drop to the session's uid and gid (which clears every capability) and check that none is
   left. Then, for a session with network rules, bind the proxy's port (127.0.0.1:3128) and
   hand the listening socket to the supervisor (`--hand-over`, SCM_RIGHTS; see
   app/egress/listener.py): its proxy accepts the agent's connections itself, and no
   process of the sidecar ever touches their bytes.
3. Read packets from the TUN device forever. Nothing is forwarded — the device has no other
   end, and the namespace has no uplink. A TCP SYN is answered with a RST and a UDP datagram
   with ICMP port unreachable, so that the agent fails at once instead of waiting for
   time-outs; nothing else is ever answered. Each attempt (TCP SYN, UDP datagram with the
   DNS question if it carries one, ICMP echo, any other protocol) becomes one JSON line on
   the supervisor's `netlog.sock`, deduplicated and rate-limited: an agent can send
   millions of packets, the supervisor gets at most about `LINES_PER_WINDOW` lines a second.

Usage: airlock_netlog.py --uid U --gid G --report SOCKET [--listen HOST:PORT --hand-over SOCKET]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import time

DEVICE = "airlock0"
# Source addresses for packets into the device. 192.0.0.8 is the IPv4 "dummy address"
# (RFC 7600) and 100::/64 the IPv6 discard-only prefix (RFC 6666): neither routes anywhere.
ADDRESS_V4 = "192.0.0.8"
ADDRESS_V6 = "100::8"
MTU = 1500

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_UP = 0x1
QUEUE = 4096  # packets the device holds for the witness; a flood beyond is counted as drops

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
IFLA_TXQLEN = 13
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFA_LOCAL, IFA_ADDRESS, IFA_FLAGS = 2, 1, 8
IFA_F_NODAD, IFA_F_PERMANENT = 0x02, 0x80
RTA_DST, RTA_OIF, RTA_PREFSRC = 1, 4, 7
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 4, 0, 253, 1

WINDOW_SECONDS = 1.0
LINES_PER_WINDOW = 50  # first sightings reported at once, per window
SUMMARIES_PER_WINDOW = 100  # repeat counts reported at the end of a window
MAX_KEYS = 4096
MAX_NAME = 253

# ICMPv6 the kernel sends by itself on a new link (router and neighbour discovery, MLD).
_KERNEL_ICMP6 = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})


# -- setting up (privileged) ---------------------------------------------------------------


def open_tun() -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", DEVICE.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _netlink(sock: socket.socket, kind: int, flags: int, body: bytes, sequence: int) -> None:
    sock.send(
        struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, sequence, 0)
        + body
    )
    reply = sock.recv(65536)
    _, reply_kind, _, _, _ = struct.unpack_from("=IHHII", reply)
    if reply_kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, 16)
        if code not in (0, -errno.EEXIST):
            raise OSError(-code, f"netlink request {kind}: {os.strerror(-code)}")


def configure(index: int) -> None:
    # All by netlink: in a user namespace (rootless Podman) the kernel refuses the queue
    # length's ioctl where the same change by netlink is allowed.
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        # ifinfomsg: family, pad, type, index, flags, change mask: up, with its queue length
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
        body += _attribute(IFLA_TXQLEN, struct.pack("=I", QUEUE))
        _netlink(sock, RTM_NEWLINK, 0, body, 1)
        sequence = 1
        for family, address in ((socket.AF_INET, ADDRESS_V4), (socket.AF_INET6, ADDRESS_V6)):
            packed = socket.inet_pton(family, address)
            width = len(packed) * 8
            sequence += 1
            # ifaddrmsg: family, prefix length, flags, scope, index
            body = struct.pack("=BBBBI", family, width, 0, RT_SCOPE_UNIVERSE, index)
            body += _attribute(IFA_LOCAL, packed) + _attribute(IFA_ADDRESS, packed)
            body += _attribute(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD | IFA_F_PERMANENT))
            _netlink(sock, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, sequence)
        for family, address in ((socket.AF_INET, ADDRESS_V4), (socket.AF_INET6, ADDRESS_V6)):
            sequence += 1
            # rtmsg: family, dst len, src len, tos, table, protocol, scope, type, flags
            body = struct.pack(
                "=BBBBBBBBI",
                family,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_STATIC,
                RT_SCOPE_LINK,
                RTN_UNICAST,
                0,
            )
            body += _attribute(RTA_OIF, struct.pack("=I", index))
            if family == socket.AF_INET:
                body += _attribute(RTA_PREFSRC, socket.inet_pton(family, address))
            else:
                body += _attribute(RTA_DST, bytes(16))
            _netlink(sock, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, sequence)


def drop_privileges(uid: int, gid: int) -> None:
    if uid == 0 or gid == 0:
        raise SystemExit("airlock_netlog: refusing to keep running as root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to non-root: the kernel clears every capability
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("CapPrm:", "CapEff:", "CapAmb:")) and int(line.split()[1], 16):
                raise SystemExit(f"airlock_netlog: capabilities left after dropping: {line}")


# -- packets (unprivileged) ----------------------------------------------------------------


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Packet:
    """The parts of one IP packet the witness reports on and answers."""

    __slots__ = ("destination", "family", "payload", "protocol", "raw", "source")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        version = raw[0] >> 4 if raw else 0
        if version == 4 and len(raw) >= 20:
            length = (raw[0] & 0x0F) * 4
            self.family = 4
            self.protocol = raw[9]
            self.source, self.destination = raw[12:16], raw[16:20]
            fragment = struct.unpack_from("!H", raw, 6)[0] & 0x1FFF
            # A later fragment carries no ports: report its protocol only.
            self.payload = raw[length:] if not fragment else b""
        elif version == 6 and len(raw) >= 40:
            self.family = 6
            self.protocol = raw[6]
            self.source, self.destination = raw[8:24], raw[24:40]
            offset = 40
            # Walk hop-by-hop, routing and destination options to the upper protocol; a
            # fragment header ends the walk, and the attempt is reported by protocol only.
            while self.protocol in (0, 43, 60) and offset + 8 <= len(raw):
                self.protocol, size = raw[offset], (raw[offset + 1] + 1) * 8
                offset += size
            self.payload = raw[offset:] if self.protocol != 44 else b""
        else:
            raise ValueError("not an IPv4 or IPv6 packet")

    def pseudo_header(self, length: int, protocol: int) -> bytes:
        if self.family == 4:
            return self.destination + self.source + struct.pack("!BBH", 0, protocol, length)
        return self.destination + self.source + struct.pack("!I3xB", length, protocol)

    def ip_header(self, length: int, protocol: int) -> bytes:
        """A header for an answer: from the attempted destination back to the agent."""
        if self.family == 4:
            head = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + length,
                0,
                0x4000,
                64,
                protocol,
                0,
                self.destination,
                self.source,
            )
            return head[:10] + struct.pack("!H", checksum(head)) + head[12:]
        return struct.pack(
            "!IHBB16s16s", 6 << 28, length, protocol, 64, self.destination, self.source
        )


def tcp_reset(packet: Packet) -> bytes | None:
    """RST for a SYN (any other segment is left unanswered: the agent has no connection)."""
    segment = packet.payload
    if len(segment) < 20:
        return None
    source_port, destination_port, sequence = struct.unpack_from("!HHI", segment)
    flags = segment[13]
    if not flags & 0x02 or flags & 0x04:  # SYN, not RST
        return None
    data_length = len(segment) - (segment[12] >> 4) * 4
    acknowledge = (sequence + 1 + max(data_length, 0)) & 0xFFFFFFFF
    tcp = struct.pack(
        "!HHIIBBHHH", destination_port, source_port, 0, acknowledge, 5 << 4, 0x14, 0, 0, 0
    )  # RST|ACK
    total = checksum(packet.pseudo_header(20, 6) + tcp)
    tcp = tcp[:16] + struct.pack("!H", total) + tcp[18:]
    return packet.ip_header(20, 6) + tcp


def port_unreachable(packet: Packet) -> bytes:
    """ICMP(v6) port unreachable quoting the datagram, as a host with no listener sends."""
    if packet.family == 4:
        quoted = packet.raw[:548]
        body = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        return packet.ip_header(len(body), 1) + body
    quoted = packet.raw[:1232]
    body = struct.pack("!BBHI", 1, 4, 0, 0) + quoted
    total = checksum(packet.pseudo_header(len(body), 58) + body)
    body = body[:2] + struct.pack("!H", total) + body[4:]
    return packet.ip_header(len(body), 58) + body


def dns_question(message: bytes) -> tuple[str, int] | None:
    """The first question's name and type, or None if the datagram is not a DNS query."""
    if len(message) < 17 or message[2] & 0x80 or struct.unpack_from("!H", message, 4)[0] < 1:
        return None
    labels: list[str] = []
    offset = 12
    while True:
        if offset >= len(message):
            return None
        size = message[offset]
        offset += 1
        if size == 0:
            break
        if size > 63 or offset + size > len(message):
            return None  # compression pointers and oversize labels have no place in a question
        label = message[offset : offset + size]
        labels.append(
            "".join(chr(b) if 0x21 <= b < 0x7F and b not in b"\\." else f"\\{b:03d}" for b in label)
        )
        offset += size
    if offset + 2 > len(message):
        return None
    name = ".".join(labels) or "."
    return name[:MAX_NAME], struct.unpack_from("!H", message, offset)[0]


def describe(packet: Packet) -> dict[str, object] | None:
    """What the attempt was, or None for packets that are not attempts of their own."""
    address = str(ipaddress.ip_address(packet.destination))
    seen: dict[str, object] = {"family": packet.family, "address": address, "port": 0}
    payload = packet.payload
    icmp6 = packet.family == 6 and packet.protocol == 58
    if packet.protocol == 6 and len(payload) >= 20:
        flags = payload[13]
        if not flags & 0x02 or flags & 0x10:
            return None  # only a SYN opens an attempt; the rest belongs to one
        seen.update(protocol="tcp", port=struct.unpack_from("!H", payload, 2)[0])
    elif packet.protocol == 17 and len(payload) >= 8:
        port = struct.unpack_from("!H", payload, 2)[0]
        seen.update(protocol="udp", port=port)
        question = dns_question(payload[8:]) if port in (53, 5353, 5355) else None
        if question is not None:
            seen.update(name=question[0], qtype=question[1])
    elif (packet.protocol == 1 and packet.family == 4) or icmp6:
        if icmp6 and payload and payload[0] in _KERNEL_ICMP6:
            return None
        seen.update(protocol="icmp", port=payload[0] if payload else 0)  # the ICMP type
    else:
        seen.update(protocol=str(packet.protocol))
    return seen


class Reports:
    """Deduplicates and rate-limits attempts into report lines. Per window: the first sighting
    of a destination is reported at once (up to LINES_PER_WINDOW), repeats and the rest are
    counted and reported at the window's end (up to SUMMARIES_PER_WINDOW lines, then one
    overflow line with the remainder)."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}  # key (JSON of the attempt) -> unreported count
        self.window = time.monotonic()
        self.sent = 0
        self.overflow = 0

    def add(self, seen: dict[str, object], now: float) -> list[dict[str, object]]:
        out = self.tick(now)
        key = json.dumps(seen, sort_keys=True)
        if key not in self.pending and self.sent < LINES_PER_WINDOW:
            self.pending[key] = 0  # reported: later repeats in this window are counted
            self.sent += 1
            out.append(dict(seen, event="attempt", count=1))
        elif key in self.pending or len(self.pending) < MAX_KEYS:
            self.pending[key] = self.pending.get(key, 0) + 1
        else:
            self.overflow += 1
        return out

    def tick(self, now: float, final: bool = False) -> list[dict[str, object]]:
        if now - self.window < WINDOW_SECONDS and not final:
            return []
        out: list[dict[str, object]] = []
        rest = self.overflow + dropped_by_device()
        destinations = 0
        for key, count in self.pending.items():
            if not count:
                continue
            if len(out) < SUMMARIES_PER_WINDOW:
                out.append(dict(json.loads(key), event="attempt", count=count))
            else:
                rest += count
                destinations += 1
        if rest:
            out.append({"event": "overflow", "count": rest, "destinations": destinations})
        self.pending.clear()
        self.window, self.sent, self.overflow = now, 0, 0
        return out


_dropped = [0]


def dropped_by_device() -> int:
    """Packets the device dropped since the last call (its queue was full): attempts all the
    same, counted without their destinations."""
    try:
        with open("/proc/net/dev", encoding="ascii") as table:
            for line in table:
                name, _, counters = line.partition(":")
                if name.strip() == DEVICE:
                    total = int(counters.split()[11])  # transmit drops
                    new, _dropped[0] = total - _dropped[0], total
                    return max(new, 0)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def connect_unix(path: str) -> socket.socket:
    """A connection to one of the supervisor's sockets, waiting up to 10 s for it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(path)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.02)


HANDOVER_MESSAGE = b"airlock-listener\n"  # app/egress/listener.py: MESSAGE
BACKLOG = 256


def hand_over_listener(address: tuple[str, int], path: str) -> None:
    """Binds the proxy's port and passes the listening socket to the supervisor at `path`.
    Our copy is closed at once: the port is the supervisor's, and nothing here accepts."""
    listener = socket.create_server(address, backlog=BACKLOG)
    try:
        with connect_unix(path) as channel:
            socket.send_fds(channel, [HANDOVER_MESSAGE], [listener.fileno()])
    finally:
        listener.close()


class Reporter:
    """The line-per-report connection to the supervisor. A report that cannot be written
    within a second is dropped and counted (the supervisor is stalled, the agent goes on)."""

    def __init__(self, path: str) -> None:
        self.sock = connect_unix(path)
        self.sock.settimeout(1.0)
        self.lost = 0

    def send(self, lines: list[dict[str, object]]) -> None:
        if not lines:
            return
        if self.lost:
            lines = [{"event": "lost", "count": self.lost}, *lines]
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        try:
            self.sock.sendall(data.encode("ascii"))
            self.lost = 0
        except TimeoutError:
            self.lost += sum(
                int(str(line.get("count", 1))) for line in lines if line.get("event") != "lost"
            )


class Stop(Exception):
    """SIGTERM: the session ends; report what is counted, then exit."""


def _stop(*_: object) -> None:
    raise Stop


def watch(tun: int, reporter: Reporter) -> int:
    reports = Reports()
    poller = select.poll()
    poller.register(tun, select.POLLIN)
    poller.register(reporter.sock, select.POLLIN)  # readable only when the supervisor hangs up
    signal.signal(signal.SIGTERM, _stop)
    try:
        return _watch(tun, reporter, reports, poller)
    except Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        reporter.send(reports.tick(time.monotonic(), final=True))
        return 0


def _watch(tun: int, reporter: Reporter, reports: Reports, poller: select.poll) -> int:
    while True:
        ready = poller.poll(int(WINDOW_SECONDS * 1000))
        now = time.monotonic()
        lines: list[dict[str, object]] = []
        for fd, _ in ready:
            if fd != tun:
                return 0  # the supervisor closed the session's log: the session is over
            for _ in range(256):  # a batch, then look at the clock again
                try:
                    raw = os.read(tun, 65536)
                except BlockingIOError:
                    break
                try:
                    packet = Packet(raw)
                    seen = describe(packet)
                except (ValueError, struct.error, IndexError):
                    continue  # not an attempt we can read; the device still dropped it
                if seen is None:
                    answer = tcp_reset(packet) if packet.protocol == 6 else None
                else:
                    lines += reports.add(seen, now)
                    answer = (
                        tcp_reset(packet)
                        if seen["protocol"] == "tcp"
                        else port_unreachable(packet)
                        if seen["protocol"] == "udp"
                        else None
                    )
                if answer is not None:
                    with contextlib.suppress(OSError):  # the device's queue is full: drop
                        os.write(tun, answer)
        lines += reports.tick(now)
        reporter.send(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="airlock_netlog")
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--listen", help="HOST:PORT of the proxy's port")
    parser.add_argument("--hand-over", help="the supervisor's socket that takes the port")
    options = parser.parse_args(argv)
    if bool(options.listen) != bool(options.hand_over):
        parser.error("--listen and --hand-over go together")
    tun = open_tun()
    configure(socket.if_nametoindex(DEVICE))
    os.set_blocking(tun, False)
    drop_privileges(options.uid, options.gid)
    if options.listen:
        host, _, port = options.listen.rpartition(":")
        hand_over_listener((host, int(port)), options.hand_over)
    reporter = Reporter(options.report)
    reporter.send([{"event": "ready", "device": DEVICE}])
    return watch(tun, reporter)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
