"""The demonstration's failure table, for real: a Sentinel primary SIGKILLed under row 6.

``demo --faults`` starts a stack of its own for a topology the demo's stack
does not run (here: the demo's stack is not running at all), fails the
store under streaming users, users holding credentials logged out before the
fault, users whose logout begins with it and users logging in and out
throughout, and deletes that stack after. What must hold: not one revoked
credential accepted, not one 502, nobody's session lost. Times and counts
are recorded as JUnit properties, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tessera_demo.faults import FAULTS, OWN_STACKS, format_faults, run_faults
from tessera_demo.stack_control import StackControl

from .private_stack import CHEAP_ARGON2

pytestmark = pytest.mark.slow


async def test_a_sentinel_failover_under_row_6_accepts_no_revoked_credential_and_no_502(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    for name, value in CHEAP_ARGON2.items():
        monkeypatch.setenv(name, value)
    control = StackControl(tmp_path / "run")
    sentinel = [fault for fault in FAULTS if fault.topology == "sentinel"]

    lines = await run_faults(control, faults=sentinel, rows=(6,))

    (line,) = lines
    report = line.report
    print(format_faults(lines))
    for key, value in report.figures().items():
        record_property(key, value)
    assert report.row.number == 6
    assert report.topology == "sentinel"
    assert report.revoked is not None
    # The attack was real: both credentials were accepted while live, presented after
    # their logout many times, and logouts met the fault.
    assert report.revoked.armed() == {"cookie", "bearer"}
    assert report.revoked_checks > 0
    assert report.revocations_during > 0
    assert report.revoked_accepted == 0, "\n".join(report.accepted_details())
    assert report.bad_gateway == 0
    assert report.other_failures == ()
    assert report.users_lost == ()
    assert line.unexpected() == []
    # The demo's own stack is gone.
    assert not (control.layout.root / OWN_STACKS).exists()
