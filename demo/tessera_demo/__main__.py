"""``python -m tessera_demo COMMAND``: drive a running stack (see tessera_demo.cli)."""

from tessera_demo.cli import main

raise SystemExit(main())
