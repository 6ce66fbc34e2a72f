"""`lstm-export --onnx`: ONNX files people already have, adopted by the real CLI, served by a
real server equal to ONNX Runtime on the user's own file, and then used as the original cannot
be: mixed lengths batched exactly, state carried by the client and by the server, every step's
output. A Triton model folder is adopted with the flags its config maps to; every graph that
cannot be mapped is refused naming the node or feature."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lstm_export.onnx_source import AdoptionError, arrange, read_onnx
from lstm_serving.client.client import AsyncLstmClient
from lstm_serving.server.app import LstmServer
from tests.helpers import export, start_server
from tests.unit.export.onnx_graphs import GRAPHS, Original, triton_graph

pytestmark = pytest.mark.slow  # five exports through the CLI, each importing torch
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Original]:
    root = tmp_path_factory.mktemp("onnx")
    built = {}
    for name, build in GRAPHS.items():
        original = build(root / f"{name}.onnx")
        run = export(
            "--onnx", str(original.path), "--name", name, "--repository", str(root / "models")
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert (
            "Verification passed" in run.stdout
            and f"its outputs: {original.answer} ->" in run.stdout
        )
        built[name] = original
    return built


@pytest.fixture(scope="module")
async def client(originals: dict[str, Original]) -> AsyncIterator[AsyncLstmClient]:
    repository = next(iter(originals.values())).path.parent / "models"
    server: LstmServer = await start_server(repository=repository)
    async with AsyncLstmClient(f"127.0.0.1:{server.port}") as client:
        yield client
    await server.stop(grace=1)


def own_answer(answer: object) -> np.ndarray:
    got = getattr(answer, "prediction", None)
    got = got if got is not None else getattr(answer, "last_hidden", None)
    assert got is not None
    return np.asarray(got)


def close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= TOLERANCE


@pytest.mark.parametrize("name", list(GRAPHS))
async def test_served_equal_to_the_original_then_what_it_cannot_do(
    originals: dict[str, Original], client: AsyncLstmClient, name: str
) -> None:
    original = originals[name]
    x = original.inputs(4, 9)
    close(own_answer(await client.predict(name, x)), original.run(x)[0])

    # mixed lengths in one batch: each row as the original answers that row's steps alone
    lengths = [9, 4, 1, 6]
    batched = own_answer(await client.predict(name, x, lengths=lengths))
    for row, length in enumerate(lengths):
        close(batched[row], original.run(x[row : row + 1, :length])[0][0])

    if original.carries_state:  # 4 steps, then 5 more from the state it returned
        first = await client.predict(name, x[:, :4], return_state=True)
        second = await client.predict(name, x[:, 4:], initial_state=first.states)
        close(own_answer(second), original.run(x)[0])
        async with client.sequence(name, f"adopted-{name}") as sequence:
            await sequence.step(x[2, :3])
            await sequence.step(x[2, 3:7])
            last = await sequence.step(x[2, 7:], end=True)
        close(own_answer(last), original.run(x[2:3])[0])

    steps = await client.predict(name, x, lengths=lengths, output="sequence")
    assert steps.sequence is not None and steps.sequence.shape[:2] == (4, 9)
    assert not np.any(steps.sequence[1, 4:])  # zeros past each length


async def test_every_output_of_a_hand_built_graph_is_served(
    originals: dict[str, Original], client: AsyncLstmClient
) -> None:
    original = originals["triton"]
    x = original.inputs(3, 8, seed=5)
    hidden, sequence, cell0 = original.run(
        x, ["OUTPUT__HIDDEN", "OUTPUT__SEQUENCE", "OUTPUT__CELL0"]
    )
    answer = await client.predict("triton", x, output="both", return_state=True)
    assert answer.last_hidden is not None and answer.sequence is not None
    close(answer.last_hidden, hidden)
    close(answer.sequence, sequence)
    close(answer.states[0][1], cell0)


def test_described_as_adopted(originals: dict[str, Original], tmp_path: Path) -> None:
    run = export(
        "--onnx", str(originals["triton"].path), "--name", "t", "--repository", str(tmp_path)
    )
    assert run.returncode == 0, run.stderr
    assert (
        "Exported from: ONNX triton.onnx (hand-built); its outputs: OUTPUT__HIDDEN -> "
        "last_hidden, OUTPUT__SEQUENCE -> sequence, OUTPUT__CELL0 -> final_c_0"
    ) in run.stdout


BATCHED = """
name: "sensor_lstm"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 4, 8 ] }
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT__0" value {
    data_type: TYPE_FP32 dims: [ 1, 4 ] zero_data: true } } } ]
"""
SEQUENCES = """
backend: "onnxruntime"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [ { name: "START" control [ {
    kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
  oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 2000 }
}
instance_group [ { count: 1 kind: KIND_GPU }, { count: 2 kind: KIND_GPU } ]
"""
CONFIGS = {  # config.pbtxt: (model name, the flags printed, the fields named as ignored)
    BATCHED: (
        "sensor_lstm",
        "--max-batch-size 16 --workers 2 --device cpu --max-queue-delay-ms 0.5",
        ["dynamic_batching.preferred_batch_size", "model_warmup"],
    ),
    SEQUENCES: (
        "sensor",
        "--max-batch-size 8 --workers 3 --device cuda --sequence-idle-timeout 5 "
        "--max-queue-delay-ms 2",
        ["sequence_batching.control_input", "sequence_batching.oldest.max_candidate_sequences"],
    ),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_triton_model_folder_is_adopted_with_the_flags_it_maps_to(
    tmp_path: Path, config: str
) -> None:
    folder = tmp_path / "triton" / "sensor"
    (folder / "1").mkdir(parents=True)
    (folder / "3").mkdir()
    (folder / "config.pbtxt").write_text(config)
    triton_graph(folder / "1" / "model.onnx")
    triton_graph(folder / "3" / "model.onnx")
    run = export("--onnx", str(folder), "--repository", str(tmp_path / "models"))
    assert run.returncode == 0, run.stderr
    name, flags, ignored = CONFIGS[config]
    assert sorted(p.name for p in (tmp_path / "models" / name).iterdir()) == ["1", "3"]
    assert f"lstm-serve --repository {tmp_path / 'models'} {flags}\n" in run.stdout
    named = [line.split(": ")[1] for line in run.stdout.splitlines() if "ignored from" in line]
    assert named == ignored


def test_a_triton_folder_of_another_platform_or_a_misspelt_config_is_refused(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True)
    triton_graph(folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text('platform: "tensorflow_savedmodel"')
    refused = export("--onnx", str(folder), "--repository", str(tmp_path / "other"))
    assert refused.returncode == 1 and "only ONNX models (onnxruntime_onnx)" in refused.stderr
    (folder / "config.pbtxt").write_text("max_batch_sise: 4")
    misspelt = export("--onnx", str(folder), "--repository", str(tmp_path / "other"))
    assert misspelt.returncode == 1 and "max_batch_sise" in misspelt.stderr
    assert not (tmp_path / "other").exists()


# --- refusals, each naming the node or file feature ------------------------------------------


def graph(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, list[Any]]],
    outputs: list[str],
    weights: dict[str, np.ndarray],
    path: Path,
) -> Path:
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            [numpy_helper.from_array(a, n) for n, a in weights.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


FLOAT_INPUT: dict[str, tuple[int, list[Any]]] = {"x": (TensorProto.FLOAT, ["t", "b", 3])}


def lstm_weights(directions: int = 1, units: int = 2, inputs: int = 3) -> dict[str, np.ndarray]:
    return {
        "W": np.ones((directions, 4 * units, inputs), np.float32),
        "R": np.ones((directions, 4 * units, units), np.float32),
    }


def one_lstm(path: Path, outputs: list[str] | None = None, **attributes: Any) -> Path:
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y", "h"], hidden_size=2, **attributes)
    directions = 2 if attributes.get("direction") == "bidirectional" else 1
    return graph([node], FLOAT_INPUT, outputs or ["h"], lstm_weights(directions), path)


REFUSALS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "gru": (
        lambda p: graph(
            [helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=2)],
            FLOAT_INPUT,
            ["y"],
            {"W": np.ones((1, 6, 3), np.float32), "R": np.ones((1, 6, 2), np.float32)},
            p,
        ),
        "no LSTM node: its recurrence is a GRU node y, which is not mapped",
    ),
    "two inputs": (
        lambda p: graph(
            [helper.make_node("LSTM", ["x", "W", "R", "", "", "h0"], ["y", "h"], hidden_size=2)],
            {**FLOAT_INPUT, "h0": (TensorProto.FLOAT, [1, "b", 2])},
            ["h"],
            lstm_weights(),
            p,
        ),
        "the graph takes 2 inputs (x, h0): one sequence input and, optionally, its lengths",
    ),
    "reverse": (
        lambda p: one_lstm(p, direction="reverse"),
        "LSTM node y: a reverse-only LSTM is not mapped",
    ),
    "clip": (lambda p: one_lstm(p, clip=3.0), "LSTM node y: the clip attribute is not mapped"),
    "layout": (lambda p: one_lstm(p, layout=1), "LSTM node y: layout 1 (batch first)"),
    "activations": (
        lambda p: one_lstm(p, activations=["Sigmoid", "Tanh", "Relu"]),
        "activations ['Sigmoid', 'Tanh', 'Relu'] are not mapped",
    ),
    "intermediate output": (
        lambda p: graph(
            [
                helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2),
                helper.make_node("Mul", ["y", "y"], ["z"]),
            ],
            FLOAT_INPUT,
            ["z"],
            lstm_weights(),
            p,
        ),
        "Mul node z is not mapped: around the LSTM nodes a graph may hold",
    ),
    "state output": (
        lambda p: one_lstm(p, outputs=["y", "h"], direction="bidirectional"),
        "",  # mapped: every step and both directions' final states
    ),
    "bidirectional last step": (
        lambda p: graph(
            [
                helper.make_node(
                    "LSTM", ["x", "W", "R"], ["y"], hidden_size=2, direction="bidirectional"
                ),
                helper.make_node("Gather", ["y", "last"], ["z"], axis=0),
            ],
            FLOAT_INPUT,
            ["z"],
            {**lstm_weights(2), "last": np.array(-1)},
            p,
        ),
        "output z (layer 0's seq, last-step) is not mapped",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_graphs_that_cannot_be_mapped_are_refused_by_name(tmp_path: Path, case: str) -> None:
    build, message = REFUSALS[case]
    path = build(tmp_path / "model.onnx")
    if not message:
        read_onnx(path)
        return
    with pytest.raises(AdoptionError) as refusal:
        read_onnx(path)
    assert message in str(refusal.value)


def test_a_wrong_reading_fails_verification_and_writes_nothing(tmp_path: Path) -> None:
    """A reshape of [time, batch, units] to [batch, time, units] keeps the rank, so the reader
    takes its axes as they were; ONNX Runtime on the user's file proves that wrong."""
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2),
        helper.make_node("Squeeze", ["y", "one"], ["tbh"]),
        helper.make_node("Shape", ["tbh"], ["shape"]),
        helper.make_node("Gather", ["shape", "order"], ["swapped"], axis=0),
        helper.make_node("Reshape", ["tbh", "swapped"], ["z"]),
    ]
    weights = {**lstm_weights(), "one": np.array([1]), "order": np.array([1, 0, 2])}
    path = graph(nodes, FLOAT_INPUT, ["z"], weights, tmp_path / "scrambled.onnx")
    run = export("--onnx", str(path), "--name", "s", "--repository", str(tmp_path / "models"))
    assert run.returncode == 1 and "Verification FAILED" in run.stdout, run.stdout + run.stderr
    assert "verification failed: no model written" in run.stderr
    assert not (tmp_path / "models").exists()


def test_files_of_other_kinds_are_routed(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("hello")
    run = export("--onnx", str(path), "--name", "m", "--repository", str(tmp_path))
    assert run.returncode == 1 and "not a model file this tool knows" in run.stderr
    seed = graph(
        [helper.make_node("Relu", ["x"], ["y"])], FLOAT_INPUT, ["y"], {}, tmp_path / "relu.onnx"
    )
    weights = export("--weights", str(seed), "--name", "m", "--repository", str(tmp_path))
    assert weights.returncode == 1 and "an ONNX model; adopt it with --onnx" in weights.stderr


def test_arrange_lays_our_outputs_out_as_the_users() -> None:
    ours = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)  # [B, T, D*H], D = 2
    raw = arrange(ours, ("B", "T", "DH"), ("T", "D", "B", "H"), 2)  # an LSTM node's Y
    assert raw.shape == (3, 2, 2, 4)
    assert np.array_equal(raw[1, 1, 0], ours[0, 1, 4:])  # step 1, backward half, row 0
    state = np.arange(2 * 2 * 4).reshape(2, 2, 4)  # [D, B, H]
    merged = arrange(state, ("D", "B", "H"), ("B", "1", "DH"), 2)
    assert merged.shape == (2, 1, 8) and np.array_equal(merged[1, 0], [*state[0, 1], *state[1, 1]])
