"""The shipped seed model is what the exporter makes from seed 0, and it serves the classic case."""

from __future__ import annotations

import onnx
import torch

from lstm_export import StackedLSTM, build_model
from lstm_serving.contract import METADATA_KEY, Architecture
from tests.helpers import SEED_REPOSITORY

SEED_MODEL = SEED_REPOSITORY / "seed/1/model.onnx"


def test_seed_model_reexports_bit_for_bit() -> None:
    """Everything but the `created` time in the metadata is identical (see README)."""
    shipped = onnx.load(str(SEED_MODEL))
    torch.manual_seed(0)
    fresh = build_model(StackedLSTM(2, [64, 32]))
    assert shipped.graph.SerializeToString() == fresh.graph.SerializeToString()
    a = Architecture.from_json({p.key: p.value for p in shipped.metadata_props}[METADATA_KEY])
    b = Architecture.from_json({p.key: p.value for p in fresh.metadata_props}[METADATA_KEY])
    assert a.weights_sha256 == b.weights_sha256
    assert a.to_json().replace(a.created, "") == b.to_json().replace(b.created, "")
    assert a.summary() == b.summary()
