"""Who was talking to tritonserver when it died, read from the kernel's socket tables.

Triton's log does not name the client of a request (its verbose HTTP log has the method and
path only), and a request that aborts the server (the 2.51 HTTP frontend's ``std::bad_alloc``)
leaves no reply to log. The kernel does keep the connection: when a process dies its sockets are
closed for it, and a connection the client had not closed stays in ``/proc/net/tcp`` (FIN_WAIT,
no owner) for a while. Reading the server's ports there right after the crash names the peers
with a connection open at that moment: the sender of the fatal request among them, and any
client that was keeping a connection open at the time.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LISTEN = "0A"


@dataclass(frozen=True)
class Connection:
    peer: str  # the client's address
    peer_port: int  # the client's port: tells two connections of one client apart
    port: int  # the server's port it was connected to


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:8FF0`` -> ("127.0.0.1", 36848); IPv6 and IPv4-mapped IPv6 as well."""
    host, _, port = hex_address.partition(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word in host order (little-endian on x86 and arm64)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def connections(ports: set[int], tables: tuple[Path, ...] = TCP_TABLES) -> list[Connection]:
    """Connections (any state but listening) whose local port is one of ``ports``."""
    found = []
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] == LISTEN:
                continue
            _, local_port = _address(fields[1])
            if local_port in ports:
                found.append(Connection(*_address(fields[2]), local_port))
    return found


@dataclass
class CrashPeers:
    """Per peer, how many crashes it had a connection open at (within the supervisor's window)."""

    names: dict[int, str]  # server port -> "http" / "grpc"
    seen: list[tuple[float, frozenset[str]]] = field(default_factory=list)  # (when, peers)
    known: set[Connection] = field(default_factory=set)  # those named at an earlier crash

    def record(self, at: float, window_s: float, tables: tuple[Path, ...] = TCP_TABLES) -> str:
        """Read the tables now (right after a crash); one phrase for the log. A connection
        left over from an earlier crash (its client never closed it) is not named again."""
        found = [c for c in connections(set(self.names), tables) if c not in self.known]
        self.known.update(found)
        self.seen = [(t, p) for t, p in self.seen if at - t <= window_s]
        peers = frozenset(c.peer for c in found)
        self.seen.append((at, peers))
        if not found:
            return "no client connection was open when it died"
        counts = Counter(p for _, ps in self.seen for p in ps)
        by_peer = Counter((c.peer, self.names[c.port]) for c in found)
        parts = [
            f"{peer} ({port}{f' x{n}' if n > 1 else ''}; at {counts[peer]} of the last "
            f"{len(self.seen)} crashes)"
            for (peer, port), n in sorted(by_peer.items())
        ]
        return "connections open when it died: " + ", ".join(parts)
