"""``python -m tessera_stack up|down|status|logs [NAME]``: the local stack."""

from tessera_stack.launcher import main

raise SystemExit(main())
