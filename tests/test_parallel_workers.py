"""The suite under pytest-xdist: each worker's own ports, so that servers of two workers never meet."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests import servers
from tests.servers import LAST_PORT, closed_port, port_block


def ephemeral_ports() -> range:
    """The kernel's range for bind(0) and outgoing connections."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_each_worker_has_a_block_of_ports_of_its_own_below_the_ephemeral_range():
    workers = [None, *(f"gw{number}" for number in range(16))]
    blocks = [port_block(worker) for worker in workers]
    assert all(len(block) == 1_000 for block in blocks)
    for index, block in enumerate(blocks):
        for other in blocks[index + 1:]:
            assert not set(block) & set(other), (block, other)
    highest = max(block[-1] for block in blocks)
    assert highest <= LAST_PORT < ephemeral_ports()[0], (highest, ephemeral_ports())
    assert not port_block("gw99")  # no block past the range: closed_port then takes a port of the kernel's choice


def test_closed_port_hands_out_ports_of_this_workers_block_nothing_listens_on():
    ports = [closed_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    block = port_block(os.environ.get("PYTEST_XDIST_WORKER"))
    assert all(port in block for port in ports), (ports, block)
    for port in ports:
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("127.0.0.1", port)) != 0, port


def test_closed_port_passes_over_a_port_something_holds(monkeypatch):
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))
        free = closed_port()
        taken = [listening.getsockname()[1], bound.getsockname()[1]]
        monkeypatch.setattr(servers, "_ports", iter([*taken, free]))
        assert closed_port() == free
