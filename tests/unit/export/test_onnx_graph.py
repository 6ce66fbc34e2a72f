"""The graph writer: one native LSTM node per layer, interface and metadata as documented."""

from __future__ import annotations

import onnx
import pytest
import torch

from lstm_export import StackedLSTM, build_model
from lstm_export.verify import verify
from lstm_serving.contract import METADATA_KEY, Architecture

LAYOUTS = [
    pytest.param(3, [16], False, id="1-layer"),
    pytest.param(2, [64, 32], False, id="2-layers-mixed-widths"),
    pytest.param(4, [8, 12, 6], True, id="3-layers-bidirectional"),
]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(("input_size", "layers", "bidirectional"), LAYOUTS)
def test_layout_interface_and_parity(
    input_size: int, layers: list[int], bidirectional: bool
) -> None:
    torch.manual_seed(0)
    module = StackedLSTM(input_size, layers, bidirectional).eval()
    model = build_model(module)
    d = 2 if bidirectional else 1
    lstm_nodes = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert len(lstm_nodes) == len(layers)
    direction = b"bidirectional" if bidirectional else b"forward"
    for node, units in zip(lstm_nodes, layers, strict=True):
        attrs = {a.name: a for a in node.attribute}
        assert attrs["hidden_size"].i == units and attrs["direction"].s == direction
        assert "layout" not in attrs or attrs["layout"].i == 0  # ORT refuses layout=1
        assert node.input[4] == "lengths"  # sequence_lens
    inputs = {v.name: _dims(v) for v in model.graph.input}
    outputs = {v.name: _dims(v) for v in model.graph.output}
    assert inputs["input"] == ["batch", "time", input_size]
    assert inputs["lengths"] == ["batch"]
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert outputs["last_hidden"] == ["batch", d * layers[-1]]
    assert outputs["sequence"] == ["batch", "time", d * layers[-1]]
    for k, units in enumerate(layers):
        for s in "hc":
            assert inputs[f"initial_{s}_{k}"] == [d, "batch", units]
            assert outputs[f"final_{s}_{k}"] == [d, "batch", units]
    assert model.opset_import[0].version >= 17
    report = verify(module, model)
    assert report.passed, report.cases
    assert len(report.cases) == 9 + (0 if bidirectional else 1)


def test_metadata_records_architecture() -> None:
    torch.manual_seed(0)
    model = build_model(StackedLSTM(2, [64, 32]))
    props = {p.key: p.value for p in model.metadata_props}
    arch = Architecture.from_json(props[METADATA_KEY])
    assert arch.input_size == 2 and arch.output_size == 32 and arch.opset == 17
    assert [(la.units, la.input_size, la.direction) for la in arch.layers] == [
        (64, 2, "forward"),
        (32, 64, "forward"),
    ]
    assert [la.keras_parameters for la in arch.layers] == [17152, 12416]
    assert [la.parameters for la in arch.layers] == [17408, 12544]
    assert len(arch.weights_sha256) == 64 and arch.created and arch.torch_version
    assert arch.exporter.startswith("lstm-serving")


def test_weights_hash_changes_with_weights() -> None:
    torch.manual_seed(0)
    a = StackedLSTM(2, [4])
    torch.manual_seed(1)
    b = StackedLSTM(2, [4])
    hashes = {
        Architecture.from_json(build_model(m).metadata_props[0].value).weights_sha256
        for m in (a, a, b)
    }
    assert len(hashes) == 2
