"""Cases that end without a number: each recorded with its state and reason (stored in the run's
JSON), then skipped or failed in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ..errors import CaseStopped, State

if TYPE_CHECKING:
    from .cases import Case


class StateRecorder:
    """Cases that did not produce a number, each with its state and reason (stored in the JSON)."""

    def __init__(self):
        self.records: list[dict] = []

    def add(self, case: Case, state: State | str, reason: str, nodeid: str = "", kernel: str | None = None) -> None:
        from ..formats import get_format
        fmt = get_format(case.format) if case.format else None
        self.records.append({"case": case.id, "nodeid": nodeid, "state": state, "reason": reason,
                             **case.params(),
                             **(fmt.record_fields() if fmt else {"bits": None, "display_order": None}),
                             **({"kernel": kernel} if kernel else {})})

    def add_kernel(self, case, state: State | str, reason: str, nodeid: str = "") -> None:
        self.records.append({"case": case.id, "nodeid": nodeid, "state": state, "reason": reason,
                             "suite": "kernels", "kernel": case.kernel, "model": case.model, "shape": case.shape,
                             "K": case.k, "N": case.n, "M": case.m,
                             **_kernel(case.kernel).record_fields()})


def record_and_end(states: StateRecorder, case, exc: CaseStopped, nodeid: str, kernel_case: bool = False):
    """The one place a stated case is recorded and ended: pytest.fail for a wrong result or bad
    input, pytest.skip for what cannot run here."""
    if kernel_case:
        states.add_kernel(case, exc.state, exc.reason, nodeid)
    else:
        states.add(case, exc.state, exc.reason, nodeid, kernel=exc.kernel)
    if exc.fail:  # raised from None: pytest printed the reason twice, around "During handling of the above ..."
        raise pytest.fail.Exception(exc.reason, pytrace=False) from None
    pytest.skip(f"{exc.state}: {exc.reason}")


def _kernel(name: str):
    from ..kernels import KERNELS
    return KERNELS[name]
