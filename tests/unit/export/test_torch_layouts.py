"""The PyTorch state_dicts people have: a plain nn.LSTM(num_layers=N), LSTMs under prefixes,
a trailing nn.Linear head; exported with --weights alone, served as PyTorch answers."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.core.runtime import Model
from lstm_serving.server.app import LstmServer
from tests.helpers import ROOT, export, start_server

pytestmark = pytest.mark.slow  # lstm-export runs as a process (a few seconds each)


class PlainLSTM(nn.Module):
    """nn.LSTM(num_layers=2) alone: the answer is the last step's output."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lstm(x)[0]
        return out[:, -1]


class Prefixed(nn.Module):
    """Two LSTMs of different widths under their own names, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm1 = nn.LSTM(3, 12, batch_first=True)
        self.lstm2 = nn.LSTM(12, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.lstm2(self.lstm1(x)[0])[0][:, -1]))


class Bidirectional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(3, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)[0]  # [B, T, 12]: per step, forward and backward
        step: torch.Tensor = self.head(out)  # a per-step head
        return step


# name: (module, extra lstm-export flags)
CASES = {
    "plain": (PlainLSTM, []),
    "prefixed": (Prefixed, ["--head-input", "last-step", "--head-activation", "sigmoid"]),
    "bidirectional": (Bidirectional, ["--head-input", "every-step", "--head-activation", "linear"]),
}


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, nn.Module]:
    root = tmp_path_factory.mktemp("torch")
    built = {}
    for seed, (name, (make, flags)) in enumerate(CASES.items()):
        torch.manual_seed(seed)
        module = make().eval()
        torch.save(module.state_dict(), root / f"{name}.pt")
        weights = str(root / f"{name}.pt")
        run = export(
            "--weights", weights, "--name", name, "--repository", str(root / "models"), *flags
        )
        assert run.returncode == 0, run.stderr
        built[name] = module
    built["_root"] = root  # type: ignore[assignment]
    return built


@pytest.fixture(scope="module")
async def client(modules: dict[str, nn.Module]) -> AsyncIterator[AsyncLstmClient]:
    root = modules["_root"]
    server: LstmServer = await start_server(repository=Path(str(root)) / "models")
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        yield client
    await server.stop(grace=1)


@pytest.mark.parametrize("name", list(CASES))
async def test_served_answers_equal_the_pytorch_forward(
    modules: dict[str, nn.Module], client: AsyncLstmClient, name: str
) -> None:
    x = np.random.default_rng(1).standard_normal((4, 9, 3)).astype(np.float32)
    with torch.no_grad():
        expected = modules[name](torch.from_numpy(x)).numpy()
    answer = await client.predict(name, x)  # the model's own answer: its head's, or the state
    got = answer.prediction if answer.prediction is not None else answer.last_hidden
    assert got is not None and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5


def export_state(
    tmp_path: Path, state: dict[str, torch.Tensor], *flags: str
) -> subprocess.CompletedProcess[str]:
    torch.save(state, tmp_path / "w.pt")
    return export(
        "--weights",
        str(tmp_path / "w.pt"),
        "--name",
        "m",
        "--repository",
        str(tmp_path / "r"),
        *flags,
    )


def test_layouts_that_cannot_be_read_say_what_to_do(tmp_path: Path) -> None:
    lstm = nn.LSTM(3, 4).state_dict()
    two_heads = {**lstm, "a.weight": torch.zeros(2, 4), "b.weight": torch.zeros(3, 4)}
    run = export_state(tmp_path, two_heads)
    assert run.returncode == 1 and "name it with --head PREFIX" in run.stderr
    assert "a., b." in run.stderr
    stated = ("--head-input", "last-step", "--head-activation", "linear")
    chosen = export_state(tmp_path, two_heads, "--head", "b.", *stated)
    assert chosen.returncode == 1 and "unexpected key a.weight" in chosen.stderr
    no_lstm = export_state(tmp_path, {"fc.weight": torch.zeros(2, 4)})
    assert no_lstm.returncode == 1 and "no LSTM weights found" in no_lstm.stderr
    wrong_check = export_state(tmp_path, lstm, "--layers", "5")
    assert (
        wrong_check.returncode == 1 and "shape [16, 4] in the file, [20, 5]" in wrong_check.stderr
    )


def test_files_passed_to_the_wrong_flag_are_named_for_what_they_are(tmp_path: Path) -> None:
    """Whatever the flag, the file is read for what it is, never unpickled, and the message
    names the kind and the way in."""
    module = nn.LSTM(3, 4, batch_first=True)
    torch.jit.save(torch.jit.script(module), tmp_path / "scripted.pt")
    onnx_file = tmp_path / "model.onnx"
    torch.onnx.export(module, (torch.zeros(1, 2, 3),), str(onnx_file), dynamo=False)
    (tmp_path / "notes.txt").write_text("hello")
    cases = {
        ("--weights", "scripted.pt"): "a TorchScript archive (torch.jit.save)",
        ("--weights", "model.onnx"): "an ONNX model; adopt it with --onnx",
        ("--weights", "notes.txt"): "not a model file this tool knows",
        ("--keras", "scripted.pt"): "a TorchScript archive",
    }
    seed_keras = ROOT / "models/seed/1/model.onnx"
    cases[("--keras", str(seed_keras))] = "an ONNX model"
    for (flag, name), message in cases.items():
        run = export(flag, str(tmp_path / name), "--name", "m", "--repository", str(tmp_path))
        assert run.returncode == 1 and message in run.stderr, (flag, name, run.stderr)
        assert "pickled" not in run.stderr


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.GRU(3, 4), "an nn.GRU (3 gate blocks); lstm-serving serves LSTMs only"),
        (nn.RNN(3, 4), "an nn.RNN (no gates); lstm-serving serves LSTMs only"),
        (nn.LSTM(3, 8, proj_size=4), "proj_size (projected hidden states)"),
    ],
    ids=["gru", "rnn", "proj_size"],
)
def test_recurrent_layers_that_are_not_lstms_are_named(
    tmp_path: Path, module: nn.Module, message: str
) -> None:
    run = export_state(tmp_path, module.state_dict())
    assert run.returncode == 1 and message in run.stderr, run.stderr
    assert "--layers" not in run.stderr  # nothing blamed on flags the user never gave


class TextClassifier(nn.Module):
    """ids -> nn.Embedding -> LSTM -> fc(out[:, -1]): a text model's state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 3)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(self.lstm(self.embedding(ids))[0][:, -1])
        return y


def test_an_embedding_in_a_state_dict_is_read_in_front_not_taken_for_a_head(
    tmp_path: Path,
) -> None:
    torch.manual_seed(2)
    module = TextClassifier().eval()
    stated = ("--head-input", "last-step", "--head-activation", "linear")
    run = export_state(tmp_path, module.state_dict(), *stated)
    assert run.returncode == 0, run.stderr
    assert "embedding(20, 3)" in run.stdout
    served = Model(tmp_path / "r/m/1/model.onnx", "m", 1)
    ids = np.random.default_rng(3).integers(0, 20, size=(3, 6)).astype(np.int64)
    got = served.run(ids, np.full(3, 6, np.int32), ["prediction"])["prediction"]
    with torch.no_grad():
        expected = module(torch.from_numpy(ids)).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    narrow = {**nn.Embedding(20, 5).state_dict(prefix="embed."), **nn.LSTM(3, 3).state_dict()}
    refused = export_state(tmp_path, narrow)
    assert refused.returncode == 1 and "embed.weight [20, 5]: one nn.Embedding" in refused.stderr
