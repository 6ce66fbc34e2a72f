"""The verifier catches a wrong model, not only passes a right one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from lstm_export import StackedLSTM, build_model
from lstm_export.verify import verify


def _module() -> StackedLSTM:
    torch.manual_seed(0)
    return StackedLSTM(2, [8, 4]).eval()


def test_corrupted_weight_is_caught() -> None:
    module = _module()
    model = build_model(module)
    for init in model.graph.initializer:
        if init.name == "R_1":
            array = numpy_helper.to_array(init).copy()
            array[0, 3, 1] += 0.01  # one recurrent weight of the second layer
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    report = verify(module, model)
    assert not report.passed
    assert report.max_abs_diff > 1e-4


def test_swapped_gate_order_is_caught() -> None:
    """The classic export bug: PyTorch's i,f,g,o copied as if it were ONNX's i,o,f,c."""
    module = _module()
    model = build_model(module)
    w = next(i for i in model.graph.initializer if i.name == "W_0")
    array = numpy_helper.to_array(w)
    blocks = np.split(array, 4, axis=1)
    w.CopyFrom(numpy_helper.from_array(np.concatenate([blocks[i] for i in (0, 2, 1, 3)], 1), "W_0"))
    assert not verify(module, model).passed


def test_malformed_graph_fails_the_checker() -> None:
    module = _module()
    model = build_model(module)
    model.graph.node[1].input[0] = "no_such_tensor"
    with pytest.raises(onnx.checker.ValidationError):
        verify(module, model)


def test_state_carry_over_case_is_checked_for_unidirectional() -> None:
    report = verify(_module(), build_model(_module()))
    chunk = [c for c in report.cases if "chunks" in c.name]
    assert len(chunk) == 1 and chunk[0].max_abs_diff <= 1e-5
