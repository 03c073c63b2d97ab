"""Highly available Redis on loopback: a Sentinel group and a Cluster of real ``redis-server``s.

Both exist so failovers can be caused and measured, not imagined: every node
is a real process on 127.0.0.1 with AOF on (``appendfsync everysec``), and
:meth:`kill_primary` sends SIGKILL (no shutdown, no last fsync), the crash a
failover is for. Timeouts are short (a node is "down" after about a second),
so a failover completes in a few seconds::

    with RedisSentinelGroup(tmp_path / "sentinel") as group:
        client = instrumented_redis(group.url, timeout=2.0, latency=None)
        killed = group.kill_primary()
        group.wait_for_failover(timeout=30)   # a replica now serves as primary
        group.restart(killed)                 # the old primary rejoins as a replica

:class:`RedisSentinelGroup` is one primary, two replicas and three sentinels
(quorum 2); its :attr:`~RedisSentinelGroup.url` is
``redis+sentinel://127.0.0.1:P,127.0.0.1:P,127.0.0.1:P/<master-name>/0``.
:class:`RedisClusterGroup` is three primaries with one replica each; its
:attr:`~RedisClusterGroup.url` is ``redis+cluster://127.0.0.1:P,...`` (every
node). Each node keeps its port across restarts (sentinels and cluster peers
know nodes by address) and stops with the interpreter, like every server of
:mod:`tessera_stack.servers`. Nothing binds anything but 127.0.0.1.
"""

from __future__ import annotations

import abc
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import redis
from redis.crc import key_slot

from tessera_stack.processes import (
    StackError,
    StartStop,
    command_output,
    free_port,
    wait_until,
)
from tessera_stack.servers import LOOPBACK, RedisServer
from tessera_stack.servers.redis_server import ask, connect

__all__ = ["RedisClusterGroup", "RedisNode", "RedisSentinelGroup"]

# Replicas sync at once instead of waiting 5 s for more replicas to share
# one diskless transfer (Redis's default): a restarted node serves sooner.
_REPLICATION = ("repl-diskless-sync-delay 0",)
_DURABLE = ("appendonly yes", "appendfsync everysec", 'save ""')


def _redis_server() -> str:
    executable = shutil.which("redis-server")
    if executable is None:
        raise StackError(
            "redis-server not found on PATH; "
            "install it (deploy/scripts/bootstrap.sh does) or add it to PATH"
        )
    return executable


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(LOOPBACK)
        if port not in ports:
            ports.append(port)
    return ports


def _info(port: int, section: str) -> dict[str, Any]:
    try:
        with connect(port) as client:
            info: dict[str, Any] = client.info(section)
            return info
    except (redis.RedisError, OSError):
        return {}


class RedisNode(RedisServer):
    """One ``redis-server`` (or sentinel) of a replicated group.

    Unlike :class:`RedisServer` it keeps its data (AOF, fsync every second)
    and its port across restarts, and runs from a config file in its data
    directory that Redis itself rewrites (a sentinel records there what it
    learnt; a node records a new primary there after a failover).
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        port: int,
        settings: Sequence[str],
        sentinel: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(base_dir, port=port, startup_timeout=startup_timeout)
        self._settings = tuple(settings)
        self._sentinel = sentinel

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def role(self) -> str | None:
        """``master``, ``slave`` or ``sentinel`` as the node says; None when it does not answer."""
        role = _info(self.port, "server" if self._sentinel else "replication").get(
            "redis_mode" if self._sentinel else "role"
        )
        return None if role is None else str(role)

    def kill(self) -> None:
        """SIGKILL the node (no shutdown, no last fsync); its data and port stay."""
        pid = self.pid
        if pid is None:
            raise StackError(f"{self!r} is not running")
        os.kill(pid, signal.SIGKILL)
        self.stop()  # reaps the process

    def follow(self, primary: RedisNode) -> None:
        """Make a stopped node start as a replica of ``primary`` (rewrites its config)."""
        if self.running:
            raise StackError("stop the node before changing whom it follows")
        lines = [
            line
            for line in self.config_path.read_text().splitlines()
            if not line.startswith(("replicaof ", "slaveof "))
        ]
        lines.append(f"replicaof {LOOPBACK} {primary.port}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _prepare(self) -> None:
        super()._prepare()
        if not self.config_path.exists():  # a restart keeps what Redis rewrote
            lines = [
                f"port {self.port}",
                f"bind {LOOPBACK}",
                "protected-mode yes",
                f"dir {self.data_dir}",
                "daemonize no",
                'logfile ""',
                *self._settings,
            ]
            self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self, port: int) -> list[str]:
        argv = [_redis_server(), str(self.config_path)]
        return [*argv, "--sentinel"] if self._sentinel else argv


class _Group(StartStop):
    """What both topologies share: nodes, stop, remove_data, a context manager, and
    killing a primary, waiting for its successor and bringing it back."""

    def __init__(self, base_dir: Path | str) -> None:
        self._base_dir = Path(base_dir).absolute()
        self.nodes: list[RedisNode] = []
        self._killed: RedisNode | None = None

    def _all(self) -> list[RedisNode]:
        return list(self.nodes)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def ports(self) -> list[int]:
        """The data nodes' ports."""
        return [node.port for node in self.nodes]

    @property
    def pids(self) -> list[int | None]:
        """The data nodes' pids (None for a node that is not running)."""
        return [node.pid for node in self.nodes]

    def stop(self) -> None:
        for node in reversed(self._all()):
            node.stop()

    def remove_data(self) -> None:
        """Delete every node's data; the group must be stopped."""
        for node in self._all():
            node.remove_data()

    def node_on(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise StackError(f"no node of {self!r} listens on port {port}")

    def _wait(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        if not wait_until(predicate, timeout=timeout):
            raise StackError(f"{type(self).__name__}: {what} within {timeout:g} s")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._base_dir)!r})"

    @abc.abstractmethod
    def start(self) -> None:
        """Start every node; return once the group can fail over."""

    @abc.abstractmethod
    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node runs and every replica is in sync (raise StackError after)."""

    def _kill(self, primary: RedisNode | None, problem: str) -> RedisNode:
        """SIGKILL ``primary`` and remember it as the killed node; ``problem`` when it is
        not a running node."""
        if primary is None or not primary.running:
            raise StackError(problem)
        primary.kill()
        self._killed = primary
        return primary

    def _wait_for_promotion(
        self,
        what: Callable[[RedisNode], str],
        candidate: Callable[[], RedisNode | None],
        timeout: float,
        serves: Callable[[RedisNode], bool] = lambda _: True,
    ) -> RedisNode:
        """Until ``candidate()`` is a node other than the killed one that says it is a
        primary and ``serves``; that node. ``what(killed)``: the error's words."""
        killed = self._killed
        if killed is None:
            raise StackError("nothing was killed: call kill_primary() first")
        promoted: list[RedisNode] = []

        def failed_over() -> bool:
            node = candidate()
            if node is None or node is killed:
                return False
            if _info(node.port, "replication").get("role") != "master":
                return False
            if not serves(node):
                return False
            promoted[:] = [node]
            return True

        self._wait(what(killed), failed_over, timeout)
        return promoted[0]

    def _rejoin(self, node: RedisNode, timeout: float) -> None:
        """Start a killed node again and wait until the group is whole."""
        node.start()
        if self._killed is node:
            self._killed = None
        self.wait_healthy(timeout)


def _replica_in_sync(port: int) -> bool:
    info = _info(port, "replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


# -- Sentinel ------------------------------------------------------------------


class RedisSentinelGroup(_Group):
    """One primary, two replicas and three sentinels watching them (quorum 2).

    A primary that stops answering for ``down_after_ms`` is failed over by
    the sentinels; a sentinel does not fail over the same group again within
    twice ``failover_timeout_ms``.
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        master_name: str = "tessera",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(base_dir)
        self.master_name = master_name
        self._startup_timeout = startup_timeout
        ports = _distinct_free_ports(6)
        node_ports, sentinel_ports = ports[:3], ports[3:]
        primary = node_ports[0]
        for index, port in enumerate(node_ports):
            follows = [f"replicaof {LOOPBACK} {primary}"] if index else []
            self.nodes.append(
                RedisNode(
                    self._base_dir / f"node-{index}",
                    port=port,
                    settings=[*_DURABLE, *_REPLICATION, *follows],
                )
            )
        self.sentinels = [
            RedisNode(
                self._base_dir / f"sentinel-{index}",
                port=port,
                sentinel=True,
                settings=[
                    f"sentinel monitor {master_name} {LOOPBACK} {primary} 2",
                    f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                    f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {master_name} 2",
                ],
            )
            for index, port in enumerate(sentinel_ports)
        ]

    def _all(self) -> list[RedisNode]:
        return [*self.nodes, *self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:P,127.0.0.1:P,127.0.0.1:P/<master-name>/0``."""
        sentinels = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{sentinels}/{self.master_name}/0"

    @property
    def sentinel_ports(self) -> list[int]:
        return [s.port for s in self.sentinels]

    def start(self) -> None:
        """Start the nodes, then the sentinels; return once the group can fail over."""
        try:
            for node in self.nodes:
                node.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_healthy(self._startup_timeout)
        except BaseException:
            self.stop()
            raise

    def primary(self) -> RedisNode | None:
        """The node the sentinels name as primary (the first sentinel that answers)."""
        for sentinel in self.sentinels:
            reply = ask(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            if reply:
                return self.node_on(int(reply[1]))
        return None

    def kill_primary(self) -> RedisNode:
        """SIGKILL the current primary; returns the killed node (see :meth:`restart`)."""
        return self._kill(self.primary(), "the sentinels name no running primary")

    def pause_primary(self) -> RedisNode:
        """SIGSTOP the current primary (a frozen VM, a long GC pause of the host): it holds
        its connections and answers nothing; :meth:`resume` it, then :meth:`restart` it."""
        primary = self.primary()
        if primary is None or primary.pid is None:
            raise StackError("the sentinels name no running primary")
        os.kill(primary.pid, signal.SIGSTOP)
        self._killed = primary
        return primary

    def resume(self, node: RedisNode) -> None:
        """SIGCONT a node :meth:`pause_primary` paused. It comes back believing it is the
        primary until the sentinels demote it (tens of seconds)."""
        if node.pid is not None:
            os.kill(node.pid, signal.SIGCONT)

    def wait_for_failover(self, timeout: float = 30.0) -> RedisNode:
        """Block until every sentinel names a new, running primary that accepts writes."""

        def agreed_primary() -> RedisNode | None:
            named = {
                str(ask(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name))
                for s in self.sentinels
            }
            return self.primary() if len(named) == 1 else None

        return self._wait_for_promotion(
            lambda _: "no replica was promoted", agreed_primary, timeout
        )

    def restart(self, node: RedisNode, timeout: float = 30.0) -> None:
        """Start a killed node again as a replica of the current primary and wait for it.

        Sentinels would demote a returning primary by themselves, but only
        after about twenty seconds; telling it whom to follow first is what an
        operator does, and keeps its stale data from ever being served.
        """
        primary = self.primary()
        if primary is None or primary is node:
            raise StackError("no other primary to rejoin")
        node.follow(primary)
        self._rejoin(node, timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node runs, every replica is in sync, every sentinel sees all of it."""

        def healthy() -> bool:
            primary = self.primary()
            if primary is None or not all(n.running for n in self._all()):
                return False
            replicas = [n for n in self.nodes if n is not primary]
            if not all(_replica_in_sync(n.port) for n in replicas):
                return False
            return all(self._sentinel_sees_all(s, primary) for s in self.sentinels)

        self._wait("the group did not become healthy", healthy, timeout)

    def _sentinel_sees_all(self, sentinel: RedisNode, primary: RedisNode) -> bool:
        try:
            with connect(sentinel.port) as client:
                master = cast(dict[str, Any], client.sentinel_master(self.master_name))
                replicas = client.sentinel_slaves(self.master_name)
        except (redis.RedisError, OSError):
            return False
        up = {
            int(r["port"])
            for r in replicas
            if r["flags"] == "slave" and r["master-link-status"] == "ok"
        }
        return (
            master["flags"] == "master"
            and int(master["port"]) == primary.port
            and int(master["num-other-sentinels"]) == len(self.sentinels) - 1
            and up == {n.port for n in self.nodes if n is not primary}
        )


# -- Cluster -------------------------------------------------------------------


class RedisClusterGroup(_Group):
    """Three primaries with one replica each (``cluster-replicas 1``).

    A primary that stops answering for ``node_timeout_ms`` is marked failed
    by the other primaries and its replica takes its slots over. Slots of
    the other primaries keep serving meanwhile (full coverage is not
    required).
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        node_timeout_ms: int = 1000,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(base_dir)
        self._startup_timeout = startup_timeout
        self._killed_key = ""
        ports = _distinct_free_ports(12)  # a client port and a bus port per node
        for index in range(6):
            client_port, bus_port = ports[2 * index], ports[2 * index + 1]
            self.nodes.append(
                RedisNode(
                    self._base_dir / f"node-{index}",
                    port=client_port,
                    settings=[
                        *_DURABLE,
                        *_REPLICATION,
                        "cluster-enabled yes",
                        "cluster-config-file nodes.conf",
                        f"cluster-node-timeout {node_timeout_ms}",
                        f"cluster-port {bus_port}",
                        "cluster-require-full-coverage no",
                    ],
                )
            )

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P,...`` (every node; any one is enough to start)."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def start(self) -> None:
        """Start the nodes, create the cluster the first time, wait until it is whole."""
        try:
            fresh = not any((n.data_dir / "nodes.conf").exists() for n in self.nodes)
            for node in self.nodes:
                node.start()
            if fresh:
                self._create()
            self.wait_healthy(self._startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise StackError("redis-cli not found on PATH (it comes with redis-server)")
        result = subprocess.run(
            [
                redis_cli,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=self._startup_timeout,
        )
        if result.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed:\n{command_output(result)}")

    def primary_for(self, key: str) -> RedisNode | None:
        """The node serving ``key``'s slot, as the running nodes report it."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running:
                continue
            ranges = ask(node.port, "CLUSTER", "SLOTS")
            for start, end, owner, *_ in ranges or []:
                if int(start) <= slot <= int(end):
                    return self.node_on(int(owner[1]))
        return None

    def primaries(self) -> list[RedisNode]:
        return [n for n in self.nodes if _info(n.port, "replication").get("role") == "master"]

    def kill_primary(self, key: str) -> RedisNode:
        """SIGKILL the primary of ``key``'s slot; returns the killed node."""
        killed = self._kill(self.primary_for(key), f"no running primary serves {key!r}")
        self._killed_key = key
        return killed

    def wait_for_failover(self, timeout: float = 30.0) -> RedisNode:
        """Block until a replica serves the killed primary's slots and the cluster is ok."""
        key = self._killed_key
        return self._wait_for_promotion(
            lambda killed: f"no replica took over from {killed.address}",
            lambda: self.primary_for(key),
            timeout,
            serves=lambda owner: "cluster_state:ok" in str(ask(owner.port, "CLUSTER", "INFO")),
        )

    def restart(self, node: RedisNode, timeout: float = 30.0) -> None:
        """Start a killed node again; the cluster makes it a replica of its successor."""
        self._rejoin(node, timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until all six nodes agree the cluster is ok and every replica is in sync."""

        def healthy() -> bool:
            if not all(n.running for n in self.nodes):
                return False
            for node in self.nodes:
                info = str(ask(node.port, "CLUSTER", "INFO"))
                if "cluster_state:ok" not in info or "cluster_known_nodes:6" not in info:
                    return False
            primaries = self.primaries()
            replicas = [n for n in self.nodes if n not in primaries]
            return len(primaries) == 3 and all(_replica_in_sync(n.port) for n in replicas)

        self._wait("the cluster did not become healthy", healthy, timeout)
