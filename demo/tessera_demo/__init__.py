"""Drives a running local stack from outside: the rows 1-6 demonstration, its faults, the
outage probe.

``python -m tessera_demo demo|outage-probe`` (:mod:`tessera_demo.cli`). The
modules: ``stack_control`` (the stack, through ``python -m tessera_stack``),
``users`` (simulated HTTPS users, one loopback address each), ``rows_walk``
(each row measured around a replica kill), ``outage`` (the Redis outage
probe), ``revoked_clients`` (logged-out credentials presented throughout)
and ``faults`` (the probe under rows 4-6 for each shared store). The demo
depends on the deploy toolkit (``tessera_stack``), never the reverse.
"""
