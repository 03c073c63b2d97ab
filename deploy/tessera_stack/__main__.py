"""``python -m tessera_stack COMMAND``: the local stack (see tessera_stack.launcher)."""

from tessera_stack.launcher import main

raise SystemExit(main())
