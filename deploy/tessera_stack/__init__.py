"""tessera's local infrastructure: throwaway servers and the stack launcher.

``python -m tessera_stack up|down|status|logs|row|scale|add-replica|
remove-replica|kill-replica|restart-replicas`` runs the local stack
(PostgreSQL, Redis, the auth service, resource replicas, nginx with TLS);
see :mod:`tessera_stack.cli` and :mod:`tessera_stack.launcher`
(``python -m tessera_demo`` drives it from outside). :class:`PostgresServer`,
:class:`RedisServer` and :class:`NginxServer` are the real servers it (and
the test suite) starts as local processes.
"""

from tessera_stack.processes import StackError, free_port
from tessera_stack.servers import NginxServer, PostgresServer, RedisServer

__all__ = ["NginxServer", "PostgresServer", "RedisServer", "StackError", "free_port"]
