"""`lstm-client load --verify`: answers checked against ONNX Runtime on the same model file.

The one client-side module that imports ONNX Runtime (through the server's runtime, so both
run the model alike); the CLI imports it only when --verify is given, and it needs the
`verify` extra (`pip install 'lstm-serving[verify]'`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstm_serving.client.load.workload import Workload
from lstm_serving.contract import LAST_HIDDEN
from lstm_serving.core.runtime import Model


@dataclass
class Verification:
    checked: int = 0
    wrong: int = 0
    max_abs_diff: float = 0.0


def _max_abs_diff(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """Over every expected output; a missing output or a wrong shape is infinitely wrong."""
    if not got:
        return float("inf")
    return max(
        float(np.abs(got[n] - expected[n]).max())
        if got[n].shape == expected[n].shape
        else float("inf")
        for n in expected
    )


def verify(
    work: Workload, answers: list[tuple[int, object]], model_file: Path, tolerance: float = 1e-5
) -> Verification:
    """Each answer against ONNX Runtime (CPU) on the same input, in this process."""
    model = Model(model_file, model_file.parent.parent.name, 1, "cpu", 1)
    result = Verification()
    for index, response in answers:
        case = work.cases[index % len(work.cases)]
        got = work.outputs(response)
        expected = model.run(case.inputs, case.lengths, list(got) or [LAST_HIDDEN])
        diff = _max_abs_diff(got, expected)
        result.checked += 1
        result.wrong += diff > tolerance
        result.max_abs_diff = max(result.max_abs_diff, diff)
    return result
