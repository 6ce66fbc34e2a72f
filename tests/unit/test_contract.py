"""The model contract on its own: the architecture record round-trips through its JSON, says
its format by what it holds, and an older format reader is told to upgrade, not misled."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lstm_serving.contract import (
    FORMAT_VERSION,
    Architecture,
    EmbeddingSpec,
    HeadSpec,
    batch_axis,
    final_state,
    initial_state,
    is_initial_state,
    parameter_count,
)
from tests.helpers import architecture

HEAD = HeadSpec(3, "softmax", False, 99, "mean", (0.2, 0.3, 0.5), (("dense", 8, "relu"),), "out")
TEXT = EmbeddingSpec(vocabulary=50, width=2, padding_id=0, mask_zero=True)


@pytest.mark.parametrize(
    ("changes", "version"),
    [
        ({}, 1),
        ({"source": "keras 3.15.1 .keras", "mask_value": 0.0}, 2),
        ({"head": HEAD}, 3),
        ({"embedding": TEXT}, 3),
    ],
    ids=["plain", "masking", "head", "tokens"],
)
def test_the_record_round_trips_and_says_its_format(
    changes: dict[str, object], version: int
) -> None:
    arch = dataclasses.replace(architecture(2, [4, 3]), **changes)  # type: ignore[arg-type]
    text = arch.to_json()
    assert json.loads(text)["format_version"] == version
    assert Architecture.from_json(text) == dataclasses.replace(arch, format_version=version)


def test_a_newer_format_is_refused_by_name_and_a_broken_one_as_malformed() -> None:
    record = json.loads(architecture(2, [4]).to_json())
    record["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer than this server understands"):
        Architecture.from_json(json.dumps(record))
    with pytest.raises(ValueError, match="malformed"):
        Architecture.from_json(json.dumps({"layers": []}))
    with pytest.raises(ValueError, match="malformed"):  # a RecursionError would kill reload
        Architecture.from_json("[" * 100_000 + "]" * 100_000)


def test_the_head_reads_as_the_pytorch_forward_it_stands_for() -> None:
    assert HEAD.forward(bidirectional=False) == "softmax(out(relu(dense(out.mean(1)))))"
    final = HeadSpec(1, "linear", False, 5, "final-states")
    assert final.forward(bidirectional=True) == "fc(cat(h_n[-2], h_n[-1]))"
    legacy = HeadSpec(2, "sigmoid", True, 10)  # a file from before `input` was recorded
    assert legacy.reads == "every-step" and legacy.forward(False) == "sigmoid(fc(out))"


def test_a_text_model_takes_tokens_masks_and_counts_its_table() -> None:
    text = dataclasses.replace(architecture(2, [4]), embedding=TEXT)
    assert text.takes_tokens and text.masks
    assert text.parameters == architecture(2, [4]).parameters + 50 * 2
    assert "embedding(50, 2)" in text.summary() and "token id is 0" in text.summary()


def test_a_layers_non_default_options_show_and_round_trip() -> None:
    arch = architecture(2, [4])
    odd = dataclasses.replace(arch.layers[0], activations=("HardSigmoid", "Tanh"), bias=False)
    assert odd.options == ["gates=HardSigmoid", "use_bias=False"]
    changed = dataclasses.replace(arch, layers=(odd,))
    assert "LSTM(4, gates=HardSigmoid, use_bias=False)" in changed.summary()
    text = changed.to_json()
    assert json.loads(text)["format_version"] == 3  # an older server is told to upgrade
    assert Architecture.from_json(text).layers == (odd,)


def test_names_and_axes() -> None:
    assert (initial_state(1, "h"), final_state(0, "c")) == ("initial_h_1", "final_c_0")
    assert is_initial_state("initial_c_3") and not is_initial_state("final_c_3")
    assert (batch_axis("final_h_0"), batch_axis("sequence")) == (1, 0)
    assert (parameter_count(2, 64, 1), parameter_count(2, 64, 1, keras=True)) == (17408, 17152)
