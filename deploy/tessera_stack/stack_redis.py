"""The stack's Redis as a group: ``up --redis sentinel`` or ``up --redis cluster``.

:mod:`tessera_stack.redis_topologies` builds the groups (a primary, two
replicas and three sentinels; or three primaries with a replica each, every
node durable). This module runs one for the local stack:

- its nodes are detached (they outlive the launcher), with their pid and
  log files under the run directory: ``redis-sentinel-node-0``,
  ``redis-sentinel-sentinel-0``, ``redis-cluster-node-3``, ...;
- every node's port is recorded next to the group's data
  (``data/redis-<topology>/nodes.json``). Sentinels and cluster peers know
  nodes by address, so a node only ever comes back on its own port: a
  later ``up`` (after a node crashed, or after ``down``) starts the dead
  nodes of the same group, with their data, on those ports. A port another
  program has taken meanwhile is an error, not a move.

A data node of a Sentinel group that comes back after a failover is told to
follow the primary the sentinels name before it starts (as
:meth:`RedisSentinelGroup.restart` does), so its stale data is never served.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from tessera_stack.processes import StackError, port_is_open
from tessera_stack.redis_topologies import RedisClusterGroup, RedisNode, RedisSentinelGroup
from tessera_stack.servers import LOOPBACK
from tessera_stack.state import Layout

__all__ = [
    "GROUPS",
    "TOPOLOGIES",
    "GroupNode",
    "RedisGroup",
    "ensure_group",
    "recorded_groups",
    "stop_groups",
]

#: ``up --redis``: one durable server (the default), or a group.
TOPOLOGIES = ("single", "sentinel", "cluster")
GROUPS = ("sentinel", "cluster")
RECORD = "nodes.json"


@dataclass(frozen=True)
class GroupNode:
    """One process of a group: its directory in the group's, its port, its kind."""

    directory: str  # node-0, sentinel-1
    port: int
    sentinel: bool = False


@dataclass(frozen=True)
class RedisGroup:
    """A group the stack runs, as recorded with its data."""

    topology: str
    url: str
    nodes: tuple[GroupNode, ...]
    master_name: str = ""  # Sentinel only

    @staticmethod
    def directory(layout: Layout, topology: str) -> Path:
        return layout.data / f"redis-{topology}"

    @classmethod
    def load(cls, layout: Layout, topology: str) -> RedisGroup | None:
        """The recorded group, or ``None`` when there is none (or it is garbled)."""
        path = cls.directory(layout, topology) / RECORD
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            nodes = tuple(
                GroupNode(str(n["directory"]), int(n["port"]), bool(n.get("sentinel")))
                for n in raw["nodes"]
            )
            return cls(topology, str(raw["url"]), nodes, str(raw.get("master_name", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, layout: Layout) -> None:
        path = self.directory(layout, self.topology) / RECORD
        tmp = path.with_name(f".{RECORD}.tmp")
        record = {
            "url": self.url,
            "master_name": self.master_name,
            "nodes": [asdict(node) for node in self.nodes],
        }
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def process(self, node: GroupNode) -> str:
        """The node's pid and log file name: ``redis-cluster-node-3``."""
        return f"redis-{self.topology}-{node.directory}"

    def server(self, layout: Layout, node: GroupNode) -> RedisNode:
        """The node as a detached server on its recorded port (its config is on disk)."""
        server = RedisNode(
            self.directory(layout, self.topology) / node.directory,
            port=node.port,
            settings=(),
            sentinel=node.sentinel,
        )
        name = self.process(node)
        server.detach(layout.pid(name), layout.log(name))
        return server

    def pids(self, layout: Layout) -> list[tuple[str, int | None, GroupNode]]:
        """Every node's process name and pid (``None`` when it is not running)."""
        return [(self.process(n), self.server(layout, n).pid, n) for n in self.nodes]


def recorded_groups(layout: Layout) -> list[RedisGroup]:
    """Every group with a record in the run directory (running or not)."""
    groups = (RedisGroup.load(layout, topology) for topology in GROUPS)
    return [group for group in groups if group is not None]


def ensure_group(layout: Layout, topology: str) -> tuple[RedisGroup, bool]:
    """The group running, started (or its dead nodes restarted) as needed.

    Returns the group and whether any node came back (so services already
    running must reconnect).
    """
    group = RedisGroup.load(layout, topology)
    if group is None:
        return _create(layout, topology), False
    dead = [node for node in group.nodes if not group.server(layout, node).running]
    if not dead:
        return group, False
    for node in dead:
        if port_is_open(node.port, LOOPBACK):
            raise StackError(
                f"{group.process(node)} of the Redis {topology} group is not running, and "
                f"its port {node.port} on {LOOPBACK} is in use by another program; the "
                "group knows its nodes by address, so stop that program and run `up` again"
            )
    names = ", ".join(group.process(node) for node in dead)
    print(f"starting {names} again, on the recorded ports, with the data ...", flush=True)
    # Data nodes first: a sentinel that starts before them would see them down.
    for node in sorted(dead, key=lambda n: n.sentinel):
        server = group.server(layout, node)
        if topology == "sentinel" and not node.sentinel:
            _follow_current_primary(layout, group, server)
        server.start()
    return group, True


def _follow_current_primary(layout: Layout, group: RedisGroup, server: RedisNode) -> None:
    """Point a stopped Sentinel data node at the primary the sentinels name, if not itself."""
    for sentinel in (node for node in group.nodes if node.sentinel):
        client = redis.Redis(
            host=LOOPBACK, port=sentinel.port, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            address = client.sentinel_get_master_addr_by_name(group.master_name)
        except (redis.RedisError, OSError):
            continue
        finally:
            client.close()
        if isinstance(address, tuple) and int(address[1]) != server.port:
            primary = next((n for n in group.nodes if n.port == int(address[1])), None)
            if primary is not None:
                server.follow(group.server(layout, primary))
        return


def _create(layout: Layout, topology: str) -> RedisGroup:
    directory = RedisGroup.directory(layout, topology)
    if directory.exists():
        # A group whose record was never written (its first start failed).
        shutil.rmtree(directory)
    built: RedisSentinelGroup | RedisClusterGroup
    members: Sequence[RedisNode]
    if topology == "sentinel":
        built = RedisSentinelGroup(directory)
        members = [*built.nodes, *built.sentinels]
        master_name = built.master_name
    elif topology == "cluster":
        built = RedisClusterGroup(directory)
        members = built.nodes
        master_name = ""
    else:
        raise StackError(f"unknown Redis topology {topology!r}; choose one of {', '.join(GROUPS)}")
    sentinels = {id(s) for s in getattr(built, "sentinels", [])}
    group = RedisGroup(
        topology,
        built.url,
        tuple(
            GroupNode(member.base_dir.name, member.port, id(member) in sentinels)
            for member in members
        ),
        master_name,
    )
    for member, node in zip(members, group.nodes, strict=True):
        name = group.process(node)
        member.detach(layout.pid(name), layout.log(name))
    print(f"starting a Redis {topology} group ({len(members)} processes) ...", flush=True)
    built.start()
    group.save(layout)
    return group


def stop_groups(layout: Layout, timeout: float = 10.0, only: str | None = None) -> list[str]:
    """Stop every node of every recorded group (or of group ``only``); the names that ran.

    The data and the record stay: the next ``up`` starts the same group again.
    """
    stopped: list[str] = []
    for group in recorded_groups(layout):
        if only is not None and group.topology != only:
            continue
        # Sentinels first, so none starts a failover while the data nodes stop.
        for node in sorted(group.nodes, key=lambda n: not n.sentinel):
            server = group.server(layout, node)
            if server.running:
                stopped.append(group.process(node))
            server.stop(timeout)
    return stopped
