"""A state_dict holds weights, not the forward: a head's input and activation are refused
until stated, and once stated the graph answers as the user's own module does, at full length
and, with lengths, as each row run alone at its own length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lstm_export.cli import main as export_main
from lstm_serving.core.runtime import Model


class BiLastStep(nn.Module):
    """The README-shaped forward on a bidirectional LSTM: out[:, -1] is NOT h_n for the
    backward half (there it is the output after one step)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lstm(x)[0]
        y: torch.Tensor = self.fc(out[:, -1])
        return y


class BiFinalStates(BiLastStep):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(x)
        y: torch.Tensor = self.fc(torch.cat((h_n[-2], h_n[-1]), dim=1))
        return y


class Pooled(nn.Module):
    def __init__(self, pool: str, activation: str) -> None:
        super().__init__()
        self.pool, self.activation = pool, activation
        self.lstm = nn.LSTM(3, 5, batch_first=True)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lstm(x)[0]
        read = out.mean(1) if self.pool == "mean" else out.max(1).values
        return getattr(torch, self.activation)(self.fc(read))  # type: ignore[no-any-return]


class SigmoidOfFinalState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True)
        self.fc = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(x)
        return torch.sigmoid(self.fc(h_n[-1]))


# name: (the user's module, the flags that state its forward)
CASES = {
    "bi-last-step": (BiLastStep, ["--head-input", "last-step", "--head-activation", "linear"]),
    "bi-final-states": (
        BiFinalStates,
        ["--head-input", "final-states", "--head-activation", "linear"],
    ),
    "mean": (lambda: Pooled("mean", "tanh"), ["--head-input", "mean", "--head-activation", "tanh"]),
    "max": (lambda: Pooled("max", "relu"), ["--head-input", "max", "--head-activation", "relu"]),
    "sigmoid": (
        SigmoidOfFinalState,
        ["--head-input", "final-states", "--head-activation", "sigmoid"],
    ),
}


def _export(tmp_path: Path, module: nn.Module, *flags: str) -> int:
    torch.save(module.state_dict(), tmp_path / "w.pt")
    argv = ["--weights", str(tmp_path / "w.pt"), "--name", "m", "--version", "1"]
    return export_main([*argv, "--repository", str(tmp_path / "r"), "--force", *flags])


@pytest.mark.parametrize("name", list(CASES))
def test_a_head_is_refused_until_its_forward_is_stated_then_equals_the_module(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, flags = CASES[name]
    torch.manual_seed(3)
    module = make().eval()
    assert _export(tmp_path, module) == 1
    refusal = capsys.readouterr().err
    assert "missing: --head-input, --head-activation" in refusal
    for line in ("--head-input last-step     y = fc(out[:, -1])", "y = fc(out.mean(1))"):
        assert line in refusal
    assert _export(tmp_path, module, flags[0], flags[1]) == 1  # one stated is not enough
    assert "missing: --head-activation" in capsys.readouterr().err

    assert _export(tmp_path, module, *flags) == 0
    printed = capsys.readouterr().out
    assert "Verification passed" in printed and "Forward: out, (h_n, c_n) = lstm(x)" in printed
    served = Model(tmp_path / "r/m/1/model.onnx", "m", 1)  # the server's runtime: zero states
    rng = np.random.default_rng(4)
    for batch, time in ((1, 1), (5, 9), (8, 20)):  # full length: the module as the user runs it
        x = rng.standard_normal((batch, time, 3)).astype(np.float32)
        lengths = np.full(batch, time, np.int32)
        got = served.run(x, lengths, ["prediction"], None)["prediction"]
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-5, (batch, time)
    # mixed lengths: each row equals the module run on that row's own steps alone
    x = rng.standard_normal((4, 7, 3)).astype(np.float32)
    lengths = np.array([7, 1, 4, 6], np.int32)
    got = served.run(x, lengths, ["prediction"], None)["prediction"]
    for row, length in enumerate(lengths):
        with torch.no_grad():
            alone = module(torch.from_numpy(x[row : row + 1, :length])).numpy()
        assert np.abs(got[row] - alone[0]).max() <= 1e-5, (row, length)


def test_without_a_head_no_flag_is_needed(tmp_path: Path) -> None:
    assert _export(tmp_path, nn.LSTM(3, 4, num_layers=2, batch_first=True)) == 0
