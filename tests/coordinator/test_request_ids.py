"""Generated request ids: well-formed, unique within a process and across processes."""

from __future__ import annotations

import subprocess
import sys

from aeamc.coordinator.logs import incoming_request_id, new_request_id
from aeamc.shared.runtime.logs import well_formed


def test_generated_ids_are_well_formed_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(well_formed(i) for i in ids)
    assert incoming_request_id(None) not in ids
    assert incoming_request_id("kept-1") == "kept-1"


def test_two_processes_generate_different_ids() -> None:
    code = "from aeamc.coordinator.logs import new_request_id as n; print(n(), n())"
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert len({*runs[0], *runs[1]}) == 4
