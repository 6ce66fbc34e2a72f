"""`--torch FILE.pt2`: the forward is read from the user's torch.export program, verified by
running that program, and then holds at every length and with `lengths` (checked here against
the eager module, which runs at any length)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lstm_export.cli import main as export_main
from lstm_serving.core.runtime import Model

TRACED = (2, 7, 3)  # batch, time, features the programs are traced at


class Heads(nn.Module):
    """One LSTM stack and one of the heads people write, chosen by `kind`."""

    def __init__(self, kind: str, bidirectional: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        self.kind, self.batch_first = kind, batch_first
        self.lstm = nn.LSTM(
            3, 6, num_layers=2, batch_first=batch_first, bidirectional=bidirectional
        )
        width = 12 if bidirectional else 6
        self.fc1, self.fc2 = nn.Linear(width, 5), nn.Linear(5, 2)
        self.lstm2 = nn.LSTM(width, 4, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 if kind == "two-lstms-mean" else width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h_n, _) = self.lstm(x)
        if self.kind == "last-step":
            y: torch.Tensor = self.fc(out[:, -1])
        elif self.kind == "mlp":
            y = torch.sigmoid(self.fc2(torch.relu(self.fc1(h_n[-1]))))
        elif self.kind == "cat-states":
            y = self.fc(torch.cat((h_n[-2], h_n[-1]), dim=1))
        elif self.kind == "two-lstms-mean":
            y = self.fc(self.lstm2(self.drop(out))[0].mean(1))
        elif self.kind == "max-softmax":
            y = torch.softmax(self.fc(out.max(1).values), dim=-1)
        else:  # per-step tagger, and the time-major module's last step
            y = self.fc(out) if self.batch_first else self.fc(out[-1])
        return y


CASES: dict[str, Callable[[], Heads]] = {
    "bi-last-step": lambda: Heads("last-step", bidirectional=True),
    "mlp": lambda: Heads("mlp"),
    "bi-cat-states": lambda: Heads("cat-states", bidirectional=True),
    "two-lstms-mean": lambda: Heads("two-lstms-mean"),
    "max-softmax": lambda: Heads("max-softmax"),
    "tagger": lambda: Heads("tagger"),
}


def _export(tmp_path: Path, module: nn.Module, example: torch.Tensor, saved: str = "pt2") -> int:
    """The module saved as a torch.export program, or traced and saved as TorchScript."""
    path = tmp_path / f"model.{saved}"
    if saved == "pt2":
        torch.export.save(torch.export.export(module, (example,)), str(path))
    else:
        torch.jit.save(torch.jit.trace(module, (example,)), str(path))  # type: ignore[no-untyped-call]
    argv = ["--torch", str(path), "--name", "m", "--version", "1", "--force"]
    return export_main([*argv, "--repository", str(tmp_path / "r")])


@pytest.mark.parametrize("saved", ["pt2", "torchscript"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_program_is_served_as_its_eager_module_answers_at_any_length(
    tmp_path: Path, name: str, saved: str, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(5)
    module = CASES[name]().eval()
    assert _export(tmp_path, module, torch.zeros(TRACED), saved) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Verification passed" in printed and "the program, shape [" in printed
    served = Model(tmp_path / "r/m/1/model.onnx", "m", 1)
    rng = np.random.default_rng(6)
    for batch, time in ((1, 1), (4, 12), (3, 7)):
        x = rng.standard_normal((batch, time, 3)).astype(np.float32)
        got = served.run(x, np.full(batch, time, np.int32), ["prediction"])["prediction"]
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-5, (batch, time)
    x = rng.standard_normal((3, 9, 3)).astype(np.float32)
    lengths = np.array([9, 2, 5], np.int32)
    got = served.run(x, lengths, ["prediction"])["prediction"]
    for row, length in enumerate(lengths):
        with torch.no_grad():
            alone = module(torch.from_numpy(x[row : row + 1, :length])).numpy()[0]
        assert np.abs(got[row, : len(alone)] - alone).max() <= 1e-5, (row, length)


def test_a_time_major_program_is_served_batch_first(tmp_path: Path) -> None:
    torch.manual_seed(7)
    module = Heads("time-major last step", batch_first=False).eval()  # fc(out[-1])
    assert _export(tmp_path, module, torch.zeros(7, 2, 3)) == 0
    x = np.random.default_rng(8).standard_normal((2, 10, 3)).astype(np.float32)
    got = Model(tmp_path / "r/m/1/model.onnx", "m", 1).run(
        x, np.full(2, 10, np.int32), ["prediction"]
    )
    with torch.no_grad():
        expected = module(torch.from_numpy(x.transpose(1, 0, 2).copy())).numpy()
    assert np.abs(got["prediction"] - expected).max() <= 1e-5


class Unmapped(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lstm = nn.LSTM(3, 4, batch_first=True, bidirectional=kind == "bi-h_n[-1]")
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor
        out, (h_n, _) = self.lstm(x)
        if self.kind == "gelu":
            return nn.functional.gelu(self.fc(out[:, -1]))
        if self.kind == "no head":
            return out
        y: torch.Tensor = self.fc(h_n[-1] if self.kind == "bi-h_n[-1]" else out[:, 0])
        return y  # out[:, 0], the first step, is not a head input this maps


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("gelu", "aten.gelu.default (gelu"),
        ("bi-h_n[-1]", "for a bidirectional LSTM, h_n[-1] is the backward direction alone"),
        ("no head", "a Linear head's output is mapped"),
        ("first step", "out[:, -1], h_n[-1] and h_n[-2] are the selections mapped"),
    ],
)
def test_what_cannot_be_mapped_is_refused_naming_the_op(
    tmp_path: Path, kind: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _export(tmp_path, Unmapped(kind).eval(), torch.zeros(TRACED)) == 1
    err = capsys.readouterr().err
    assert message in err and "Verification passed" not in err
    assert not (tmp_path / "r").exists()


class TextClassifier(nn.Module):
    """nn.Embedding(padding_idx=0) -> bidirectional LSTM -> fc(out[:, -1]): a PyTorch text model."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(30, 5, padding_idx=0)
        self.lstm = nn.LSTM(5, 4, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lstm(self.embedding(ids))[0]
        y: torch.Tensor = self.fc(out[:, -1])
        return y


def test_an_embedding_program_takes_token_ids(tmp_path: Path) -> None:
    torch.manual_seed(9)
    module = TextClassifier().eval()
    assert _export(tmp_path, module, torch.zeros(2, 7, dtype=torch.int64)) == 0
    served = Model(tmp_path / "r/m/1/model.onnx", "m", 1)
    embedding = served.architecture.embedding
    assert embedding is not None and (embedding.vocabulary, embedding.padding_id) == (30, 0)
    ids = np.random.default_rng(10).integers(0, 30, size=(3, 11)).astype(np.int64)
    got = served.run(ids, np.full(3, 11, np.int32), ["prediction"])["prediction"]
    with torch.no_grad():
        expected = module(torch.from_numpy(ids)).numpy()
    assert np.abs(got - expected).max() <= 1e-5


def test_a_traced_text_model_and_a_scripted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A traced TorchScript text model maps as its program does; a scripted module's control
    flow is refused, naming it and what to do."""
    torch.manual_seed(11)
    module = TextClassifier().eval()
    assert _export(tmp_path, module, torch.zeros(2, 7, dtype=torch.int64), "torchscript") == 0
    ids = np.random.default_rng(12).integers(0, 30, size=(2, 9)).astype(np.int64)
    got = Model(tmp_path / "r/m/1/model.onnx", "m", 1).run(
        ids, np.full(2, 9, np.int32), ["prediction"]
    )
    with torch.no_grad():
        assert np.abs(got["prediction"] - module(torch.from_numpy(ids)).numpy()).max() <= 1e-5
    torch.jit.save(torch.jit.script(Heads("last-step")), str(tmp_path / "scripted.pt"))
    argv = ["--torch", str(tmp_path / "scripted.pt"), "--name", "s"]
    assert export_main([*argv, "--repository", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "save the model with torch.jit.trace or torch.export" in err
    assert "Verification passed" not in err
