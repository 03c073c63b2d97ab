"""``python -m tessera_stack COMMAND``: the local stack (see tessera_stack.cli)."""

from tessera_stack.cli import main

raise SystemExit(main())
