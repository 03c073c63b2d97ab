"""tessera's local infrastructure: throwaway servers and the stack launcher.

``python -m tessera_stack up|down|status|logs`` runs the local stack;
:class:`PostgresServer` and :class:`RedisServer` are the real servers it
(and the test suite) starts as local processes.
"""

from tessera_stack.processes import StackError, free_port
from tessera_stack.servers import PostgresServer, RedisServer

__all__ = ["PostgresServer", "RedisServer", "StackError", "free_port"]
