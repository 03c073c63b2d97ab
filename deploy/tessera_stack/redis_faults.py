"""Which Redis process a fault hits, and how to tell the store is back: one per topology.

The outage probe (:mod:`tessera_demo.outage`) takes the stack's shared
store away under traffic. What "away" and "back" mean depends on what the
stack runs (``up --redis single|sentinel|cluster``):

- ``single``: the one durable server. SIGSTOP then SIGCONT, or SIGKILL and
  ``up`` (same port, AOF); it is back when it answers ``PING``.
- ``sentinel``: the primary the sentinels name, SIGKILLed; the store is back
  when every answering sentinel names another node and that node says it
  is a master (the services find it through the sentinels by themselves).
- ``cluster``: the primary serving one slot, SIGKILLed: the slot of the
  revocation plane (``{rev}``, :func:`tessera_verify.redis_layout.revocation_generation`),
  or, with ``slot="sessions"``, a primary that does not serve it (a third of
  the sessions live there, the plane does not). Back when another node
  serves the slot and the cluster says ``cluster_state:ok``.

After a group fault, :func:`repair` runs ``up`` (which restarts the dead node
on its port, as a replica) and waits until the group is whole again, so the
next fault meets a healthy group. Every wait is bounded; nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.crc import key_slot

from tessera_stack import redis_acl
from tessera_stack.processes import StackError, is_alive
from tessera_stack.servers.redis_server import ask
from tessera_stack.stack_redis import GroupNode, RedisGroup
from tessera_stack.state import Layout, StackState
from tessera_verify import redis_layout

__all__ = [
    "SLOTS",
    "FaultTarget",
    "find_target",
    "group_is_whole",
    "repair",
    "store_is_back",
]

#: Cluster only: whose primary dies, the revocation plane's or another one.
SLOTS = ("rev", "sessions")
REPAIR_TIMEOUT = 60.0
POLL = 0.05
_TIMEOUT = 0.5
#: One command to a node, answering None at once when it cannot (see servers.redis_server).
_ask = functools.partial(ask, timeout=_TIMEOUT)


@dataclass(frozen=True)
class FaultTarget:
    """The process a fault hits, and what the store is around it."""

    topology: str  # single | sentinel | cluster
    pid: int
    port: int
    #: For tables: "Redis (AOF)", "Sentinel primary", "Cluster primary of {rev}".
    label: str
    group: RedisGroup | None = None
    #: Cluster: a key whose slot the killed primary served.
    key: str = ""
    #: Single: the administrator's password (the stack's Redis has users).
    password: str | None = None

    @property
    def data_ports(self) -> tuple[int, ...]:
        """The group's data nodes (not sentinels), every one."""
        if self.group is None:
            return (self.port,)
        return tuple(n.port for n in self.group.nodes if not n.sentinel)

    @property
    def sentinel_ports(self) -> tuple[int, ...]:
        return () if self.group is None else tuple(n.port for n in self.group.nodes if n.sentinel)


def _info(port: int, section: str) -> dict[str, str]:
    text = _ask(port, "INFO", section)
    if not isinstance(text, str | dict):
        return {}
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


def _role(port: int) -> str | None:
    return _info(port, "replication").get("role")


def _sentinel_primary(sentinel_port: int, master_name: str) -> int | None:
    reply = _ask(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
    return int(reply[1]) if isinstance(reply, list | tuple) and len(reply) == 2 else None


def _slot_owner(ports: tuple[int, ...], slot: int, skip: int | None = None) -> int | None:
    """The port serving ``slot``, as the first answering node (other than ``skip``) says."""
    for port in ports:
        if port == skip:
            continue
        ranges = _ask(port, "CLUSTER", "SLOTS")
        if not isinstance(ranges, list):
            continue
        for start, end, owner, *_ in ranges:
            if int(start) <= slot <= int(end):
                return int(owner[1])
    return None


def _pid(layout: Layout, group: RedisGroup, port: int) -> int:
    node = next((n for n in group.nodes if n.port == port), None)
    pid = None if node is None else group.server(layout, node).pid
    if node is None or pid is None:
        raise StackError(f"no running node of the Redis {group.topology} group on port {port}")
    return pid


def find_target(layout: Layout, state: StackState, slot: str = "rev") -> FaultTarget:
    """The process to take away in the stack described by ``state`` (module doc)."""
    if state.redis != "managed":
        raise StackError("the stack uses an external Redis; the probe takes only its own away")
    topology = state.redis_topology or "single"
    if topology == "single":
        if state.redis_port is None:
            raise StackError("the stack records no Redis port")
        pid = layout.redis(state.redis_port).pid
        if pid is None:
            raise StackError("the stack's Redis is not running; `./tessera up`")
        password = layout.redis_password(redis_acl.ADMIN)
        return FaultTarget("single", pid, state.redis_port, "Redis (AOF)", password=password)
    group = RedisGroup.load(layout, topology)
    if group is None:
        raise StackError(f"the stack records no Redis {topology} group")
    if topology == "sentinel":
        sentinels = [n.port for n in group.nodes if n.sentinel]
        named = {_sentinel_primary(port, group.master_name) for port in sentinels} - {None}
        if len(named) != 1:
            raise StackError(f"the sentinels do not agree on a primary: {sorted(map(str, named))}")
        port = named.pop()
        assert port is not None
        return FaultTarget("sentinel", _pid(layout, group, port), port, "Sentinel primary", group)
    if slot not in SLOTS:
        raise StackError(f"slot must be one of {', '.join(SLOTS)}")
    data = tuple(n.port for n in group.nodes if not n.sentinel)
    plane = redis_layout.revocation_generation()
    plane_owner = _slot_owner(data, key_slot(plane.encode()))
    if plane_owner is None:
        raise StackError("no node of the cluster serves the revocation plane's slot")
    if slot == "rev":
        pid = _pid(layout, group, plane_owner)
        return FaultTarget("cluster", pid, plane_owner, "Cluster primary of {rev}", group, plane)
    # Another primary: the first key (by a bounded search) whose slot it serves.
    for index in range(10_000):
        key = f"tessera-fault-probe:{index}"
        owner = _slot_owner(data, key_slot(key.encode()))
        if owner is not None and owner != plane_owner:
            label = "Cluster primary of sessions"
            return FaultTarget("cluster", _pid(layout, group, owner), owner, label, group, key)
    raise StackError("every slot probed is served by the revocation plane's primary")


def store_is_back(target: FaultTarget) -> bool:
    """Whether the store serves again after ``target`` was taken away (module doc)."""
    if target.topology == "single":
        return _ask(target.port, "PING", password=target.password) is True
    assert target.group is not None
    if target.topology == "sentinel":
        named = {_sentinel_primary(p, target.group.master_name) for p in target.sentinel_ports}
        named.discard(None)
        if len(named) != 1:
            return False
        port = named.pop()
        return port is not None and port != target.port and _role(port) == "master"
    owner = _slot_owner(target.data_ports, key_slot(target.key.encode()), skip=target.port)
    if owner is None or owner == target.port or _role(owner) != "master":
        return False
    return "cluster_state:ok" in str(_ask(owner, "CLUSTER", "INFO"))


def group_is_whole(layout: Layout, group: RedisGroup) -> bool:
    """Every node runs; replicas are in sync; sentinels (or cluster nodes) see all of it."""
    data = [n for n in group.nodes if not n.sentinel]
    if not all(group.server(layout, n).running for n in group.nodes):
        return False
    roles = {n.port: _info(n.port, "replication") for n in data}
    masters = [port for port, info in roles.items() if info.get("role") == "master"]
    replicas_in_sync = all(
        info.get("role") == "master" or info.get("master_link_status") == "up"
        for info in roles.values()
    )
    if not replicas_in_sync:
        return False
    if group.topology == "cluster":
        return len(masters) == 3 and all(_cluster_ok(n) for n in data)
    return len(masters) == 1 and all(
        _sentinel_sees_all(s, group, masters[0]) for s in group.nodes if s.sentinel
    )


def _cluster_ok(node: GroupNode) -> bool:
    info = str(_ask(node.port, "CLUSTER", "INFO"))
    return "cluster_state:ok" in info and "cluster_known_nodes:6" in info


def _sentinel_sees_all(sentinel: GroupNode, group: RedisGroup, primary: int) -> bool:
    if _sentinel_primary(sentinel.port, group.master_name) != primary:
        return False
    replicas = _ask(sentinel.port, "SENTINEL", "REPLICAS", group.master_name)
    if not isinstance(replicas, list):
        return False
    seen: set[int] = set()
    for entry in replicas:
        if isinstance(entry, dict):
            fields = {str(k): v for k, v in entry.items()}
        elif isinstance(entry, list):
            fields = dict(zip(entry[::2], entry[1::2], strict=False))
        else:
            continue
        if fields.get("flags") == "slave" and fields.get("master-link-status") == "ok":
            seen.add(int(fields["port"]))
    expected = {n.port for n in group.nodes if not n.sentinel and n.port != primary}
    return seen == expected


async def repair(
    layout: Layout,
    target: FaultTarget,
    bring_back: Callable[[], Awaitable[object]],
    timeout: float = REPAIR_TIMEOUT,
) -> float:
    """After a group fault: ``bring_back`` (``up``), then wait for the whole group.

    Returns the seconds it took. A single Redis needs no repair beyond its
    restart (which the probe measures itself): this returns 0 at once.
    """
    if target.group is None:
        return 0.0
    started = time.monotonic()
    if not is_alive(target.pid):
        await bring_back()
    deadline = started + timeout
    group = target.group
    while not await asyncio.to_thread(group_is_whole, layout, group):
        if time.monotonic() > deadline:
            raise StackError(
                f"the Redis {group.topology} group was not whole again within {timeout:g} s"
            )
        await asyncio.sleep(POLL * 4)
    return time.monotonic() - started
