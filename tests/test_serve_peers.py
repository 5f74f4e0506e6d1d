"""Who was connected when tritonserver died: the kernel's socket tables, read from files in the
format of ``/proc/net/tcp`` and ``/proc/net/tcp6``."""

from __future__ import annotations

from pathlib import Path

from gendeploy.serve.peers import Connection, CrashPeers, connections

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  ...\n"
# the server listens on 8000 (0x1F40) and 8001 (0x1F41)
TCP = HEADER + (
    "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9320\n"
    "   1: 0100007F:1F40 0100007F:8FF0 05 00000000:00000000 00:00000000 00000000 0 0 0\n"
    "   2: 0100007F:1F41 0A00000A:C350 01 00000000:00000000 00:00000000 00000000 0 0 7564\n"
    "   3: 0100007F:2328 0100007F:8FF1 01 00000000:00000000 00:00000000 00000000 0 0 7565\n"
)
# ::ffff:192.168.1.7 port 40000 on 8000
TCP6 = HEADER + (
    "   0: 0000000000000000FFFF00000100007F:1F40 0000000000000000FFFF00000701A8C0:9C40 01 "
    "00000000:00000000 00:00000000 00000000 0 0 1\n"
)


def tables(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    return tmp_path / "tcp", tmp_path / "tcp6"


def test_connections_to_the_servers_ports_are_read_in_any_state_but_listening(
    tmp_path: Path,
) -> None:
    found = connections({8000, 8001}, tables(tmp_path))
    assert found == [
        Connection("127.0.0.1", 36848, 8000),  # FIN_WAIT2: the server died, the client had not
        Connection("10.0.0.10", 50000, 8001),
        Connection("192.168.1.7", 40000, 8000),  # IPv4-mapped IPv6
    ]


def test_each_crash_names_its_peers_once_with_their_share_of_recent_crashes(
    tmp_path: Path,
) -> None:
    peers = CrashPeers({8000: "http", 8001: "grpc"})
    first = peers.record(0.0, 300.0, tables(tmp_path))
    assert first == (
        "connections open when it died: 10.0.0.10 (grpc; at 1 of the last 1 crashes), "
        "127.0.0.1 (http; at 1 of the last 1 crashes), 192.168.1.7 (http; at 1 of the last 1 "
        "crashes)"
    )
    # the same sockets still in the table at the next crash are left overs, not new suspects
    assert peers.record(10.0, 300.0, tables(tmp_path)) == (
        "no client connection was open when it died"
    )
    (tmp_path / "tcp").write_text(
        HEADER + "   0: 0100007F:1F40 0100007F:8FF2 05 00000000:00000000 00:00000000 0 0 0 0\n"
    )
    third = peers.record(200.0, 195.0, (tmp_path / "tcp", tmp_path / "tcp6"))
    # the first crash left the 195 s window; the second (at 10 s) named nobody
    assert third == "connections open when it died: 127.0.0.1 (http; at 1 of the last 2 crashes)"
