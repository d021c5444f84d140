"""Cutting a worker's real connections: a network namespace joined to the host by a veth pair, and a TCP
proxy per service on the host side of the veth that the test can cut, black-hole or slow.

A worker started inside the namespace reaches Postgres, Redis and S3 only through these proxies (the
services listen on the host's 127.0.0.1, which a namespace cannot reach), so each of its connections can be
failed on its own, the way production fails: refused and reset (`cut`), accepted and never answered
(`blackhole`, the hung case), or delayed (`slow`). The link itself can also be dropped (`ip link set down`)
or degraded (`tc netem`).

Only addresses of the /30 made here are ever configured; nothing else on the host is touched.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

SUBNET_POOL = ipaddress.ip_network("10.231.0.0/16")  # private; /30s are picked from it at random
COMMAND_TIMEOUT = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=check)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"genqf-probe-{uuid.uuid4().hex[:6]}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode != 0:
        return f"cannot create a network namespace (needs root / CAP_SYS_ADMIN): {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def netem_unavailable() -> str | None:
    """Why `tc ... netem` cannot be used here (None: it can): kernels built without sch_netem refuse it."""
    probe = f"gqfp{uuid.uuid4().hex[:8]}"
    made = _ip("link", "add", probe, "type", "veth", "peer", "name", f"{probe}n", check=False)
    if made.returncode != 0:
        return f"cannot create a veth pair: {made.stderr.strip()}"
    try:
        qdisc = subprocess.run(
            ["tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms"],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
        )  # fmt: skip
        return None if qdisc.returncode == 0 else f"tc netem refused: {qdisc.stderr.strip()}"
    finally:
        _ip("link", "del", probe, check=False)


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show").stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return found


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    subnets = list(SUBNET_POOL.subnets(new_prefix=30))
    for _ in range(100):
        candidate = random.choice(subnets)
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError(f"no free /30 in {SUBNET_POOL}")


@dataclass
class Namespace:
    """`genqf-<id>`: a network namespace with one veth pair to the host, a /30 on it, loopback up."""

    # genqf-<creating pid>-<id>: a run that died before its cleanup is recognised by the next one.
    name: str = field(default_factory=lambda: f"genqf-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    host_ip: str = ""
    inner_ip: str = ""

    def __post_init__(self) -> None:
        suffix = self.name.rsplit("-", 1)[-1]
        self.host_dev = f"gqf{suffix}h"[:15]  # interface names are at most 15 characters
        self.inner_dev = f"gqf{suffix}n"[:15]

    def create(self) -> Namespace:
        subnet = _free_subnet()
        host, inner = list(subnet.hosts())
        self.host_ip, self.inner_ip = str(host), str(inner)
        _ip("netns", "add", self.name)
        try:
            veth = ("type", "veth", "peer", "name", self.inner_dev, "netns", self.name)
            _ip("link", "add", self.host_dev, *veth)
            _ip("addr", "add", f"{host}/30", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("-n", self.name, "addr", "add", f"{inner}/30", "dev", self.inner_dev)
            _ip("-n", self.name, "link", "set", self.inner_dev, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """Idempotent: deleting the namespace removes its veth end, and with it the host's."""
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_dev, check=False)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: the pid stays the program's)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def link(self, up: bool) -> None:
        """Drop or restore the veth link (both ends): every packet between worker and host is lost."""
        state = "up" if up else "down"
        _ip("link", "set", self.host_dev, state)
        _ip("-n", self.name, "link", "set", self.inner_dev, state)

    def netem(self, spec: str | None) -> None:
        """`tc qdisc ... netem <spec>` on both ends (e.g. "delay 200ms", "loss 100%"); None clears it."""
        for prefix, dev in (([], self.host_dev), (["ip", "netns", "exec", self.name], self.inner_dev)):
            if spec is None:
                subprocess.run(
                    [*prefix, "tc", "qdisc", "del", "dev", dev, "root"],
                    capture_output=True, timeout=COMMAND_TIMEOUT, check=False,
                )  # fmt: skip
            else:
                subprocess.run(
                    [*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()],
                    capture_output=True, timeout=COMMAND_TIMEOUT, check=True,
                )  # fmt: skip


def remove_abandoned() -> list[str]:
    """Delete the namespaces (and veths) of fault-suite runs whose process is gone; their names."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "genqf" or not parts[1].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[1]}"):
            continue
        Namespace(name).delete()
        removed.append(name)
    return removed


class Mode(enum.Enum):
    passing = "pass"
    cut = "cut"  # connections reset, new ones reset at once: the service is down
    # Connections accepted and nothing answered until restored (then what was held flows on): a hung
    # service, or one behind a load balancer that stopped forwarding. The kernel still acknowledges
    # every byte, so only an application-level timeout ends a wait.
    blackhole = "blackhole"
    slow = "slow"  # every chunk forwarded after a delay


class _Link:
    """One client connection and its upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream

    def close(self, reset: bool = False) -> None:
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                if reset:  # RST, not FIN: the peer sees "connection reset", as when a host goes away
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forwards `listen_host:port` to `target_host:target_port` with threads, in one of four modes."""

    def __init__(self, listen_host: str, target_host: str, target_port: int, name: str = "") -> None:
        self.name = name or f"{target_host}:{target_port}"
        self.target = (target_host, target_port)
        self.mode = Mode.passing
        self.delay = 0.0
        self._flowing = threading.Event()  # cleared while black-holed: every pump holds its bytes
        self._flowing.set()
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.create_server((listen_host, 0), backlog=128)
        self.host, self.port = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set(self, mode: Mode, delay: float = 0.0) -> None:
        with self._lock:
            self.mode, self.delay = mode, delay
            links = list(self._links)
        if mode == Mode.blackhole:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == Mode.cut:
            for link in links:
                self._drop(link, reset=True)

    def restore(self) -> None:
        """Back to forwarding; what a black hole held flows on (unless its client gave up meanwhile)."""
        self.set(Mode.passing)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._drop(link)
        self._thread.join(timeout=5)

    def _drop(self, link: _Link, reset: bool = False) -> None:
        with self._lock:
            self._links.discard(link)
        link.close(reset)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            mode = self.mode
            if mode == Mode.cut:
                _Link(client, None).close(reset=True)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # black-holed: accepted, and the server never hears of it until restored
        if self._closed:
            _Link(client, None).close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _Link(client, None).close(reset=True)
            return
        link = _Link(client, upstream)
        with self._lock:
            self._links.add(link)
        threading.Thread(target=self._pump, args=(link, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(link, False), daemon=True).start()

    def _pump(self, link: _Link, outbound: bool) -> None:
        source = link.client if outbound else link.upstream
        assert source is not None
        target = link.upstream if outbound else link.client
        assert target is not None
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # held while black-holed
                if self.mode == Mode.slow and self.delay:
                    time.sleep(self.delay)
                target.sendall(data)
        except OSError:
            pass
        self._drop(link)
