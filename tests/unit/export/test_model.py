"""StackedLSTM: layout, Keras semantics, lengths and state."""

from __future__ import annotations

import pytest
import torch

from lstm_export import StackedLSTM


def test_layers_are_single_layer_lstms_with_declared_widths() -> None:
    model = StackedLSTM(2, [64, 32])
    assert [type(m) for m in model.layers] == [torch.nn.LSTM, torch.nn.LSTM]
    assert sorted(model.state_dict()) == sorted(
        f"layers.{k}.{p}_l0"
        for k in (0, 1)
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )
    assert model.state_dict()["layers.1.weight_ih_l0"].shape == (4 * 32, 64)


def test_bidirectional_keys_and_widths() -> None:
    model = StackedLSTM(3, [4, 5], bidirectional=True)
    keys = model.state_dict()
    assert "layers.1.weight_ih_l0_reverse" in keys
    assert keys["layers.1.weight_ih_l0"].shape == (4 * 5, 2 * 4)  # receives both directions
    seq, last = model(torch.randn(2, 6, 3))
    assert seq.shape == (2, 6, 10) and last.shape == (2, 10)


def test_last_hidden_is_state_at_each_sequences_own_last_step() -> None:
    torch.manual_seed(0)
    model = StackedLSTM(2, [8, 6]).eval()
    x = torch.randn(3, 9, 2)
    lengths = torch.tensor([9, 4, 1])
    seq, last = model(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone_seq, alone_last = model(x[i : i + 1, :n])
        torch.testing.assert_close(last[i], alone_last[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(seq[i, :n], alone_seq[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(seq[i, n - 1], last[i], rtol=0, atol=0)
        assert not seq[i, n:].any()


def test_bidirectional_last_hidden_concatenates_forward_then_backward() -> None:
    torch.manual_seed(1)
    model = StackedLSTM(2, [5], bidirectional=True).eval()
    x = torch.randn(1, 7, 2)
    seq, last = model(x)
    torch.testing.assert_close(last[0, :5], seq[0, -1, :5])  # forward ends at the last step
    torch.testing.assert_close(last[0, 5:], seq[0, 0, 5:])  # backward ends at the first


def test_dropout_only_in_training() -> None:
    torch.manual_seed(2)
    model = StackedLSTM(2, [16, 16], dropout=0.5)
    x = torch.randn(4, 5, 2)
    model.eval()
    assert torch.equal(model(x)[1], model(x)[1])
    model.train()
    assert not torch.equal(model(x)[1], model(x)[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 0, "layers": [4]}, "positive"),
        ({"input_size": 2, "layers": []}, "positive"),
        ({"input_size": 2, "layers": [4], "dropout": 1.0}, "dropout"),
    ],
)
def test_rejects_bad_architecture(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StackedLSTM(**kwargs)  # type: ignore[arg-type]
