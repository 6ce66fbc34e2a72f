"""Proves an exported ONNX model computes what its source framework computes.

onnx's full checker, then ONNX Runtime against a reference of the source's own semantics
(PyTorch's forward, or the NumPy Keras forward pass of `keras_reference`) on random padded
batches of mixed lengths and random initial states (every output and final state), then,
where the model can carry state, two chunks with carried state against one whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from lstm_export.model import StackedLSTM
from lstm_export.onnx_graph import recorded_architecture
from lstm_export.onnx_source import Adopted, AdoptionError, arrange
from lstm_export.program_source import Program
from lstm_serving.contract import (
    INPUT,
    LAST_HIDDEN,
    LENGTHS,
    PREDICTION,
    SEQUENCE,
    Architecture,
    final_state,
    initial_state,
)

TOLERANCE = 1e-5  # absolute, float32; observed differences are ~1e-7
BATCH_SIZES = (1, 7, 32)
TIMES = (1, 10, 37)
States = list[tuple[np.ndarray, np.ndarray]]  # (h, c) per layer, [directions, batch, units]
# (inputs [B, T, F], lengths [B], initial states) -> every graph output, by name
Reference = Callable[[np.ndarray, np.ndarray, States], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    name: str
    max_abs_diff: float


@dataclass
class VerificationReport:
    tolerance: float
    cases: list[Case] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max(case.max_abs_diff for case in self.cases)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def worst(self) -> Case:
        return max(self.cases, key=lambda case: case.max_abs_diff)


def _feeds(x: np.ndarray, lengths: np.ndarray, states: States) -> dict[str, np.ndarray]:
    feeds = {INPUT: x, LENGTHS: lengths.astype(np.int32)}
    for k, (h, c) in enumerate(states):
        feeds[initial_state(k, "h")], feeds[initial_state(k, "c")] = h, c
    return feeds


def _inputs(arch: Architecture, batch: int, time: int, rng: np.random.Generator) -> np.ndarray:
    """Random features, or random token ids (never a masked id: masking is the server's,
    tested against the framework itself)."""
    if arch.embedding is None:
        return rng.standard_normal((batch, time, arch.input_size)).astype(np.float32)
    low = 1 if arch.embedding.mask_zero else 0
    return rng.integers(low, arch.embedding.vocabulary, size=(batch, time), dtype=np.int64)


def _random_states(arch: Architecture, batch: int, rng: np.random.Generator) -> States:
    shapes = [(layer.directions, batch, layer.units) for layer in arch.layers]
    return [
        (
            rng.standard_normal(s).astype(np.float32) * 0.5,
            rng.standard_normal(s).astype(np.float32) * 0.5,
        )
        for s in shapes
    ]


POOLED = ("mean", "max")  # head inputs over a call's steps: a chunk's answer is its own


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"outputs differ: {sorted(a)} vs {sorted(b)}")
    for name in a:
        if a[name].shape != b[name].shape:
            return float("inf")
    return max(float(np.max(np.abs(a[n] - b[n]), initial=0.0)) for n in a)


def verify_against(
    model: onnx.ModelProto,
    reference: Reference,
    arch: Architecture,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> VerificationReport:
    """Checks `model` against `reference`; raises onnx.checker.ValidationError if malformed."""
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray, lengths: np.ndarray, states: States) -> dict[str, np.ndarray]:
        answers = session.run(names, _feeds(x, lengths, states))
        return {name: np.asarray(answer) for name, answer in zip(names, answers, strict=True)}

    rng = np.random.default_rng(seed)
    report = VerificationReport(tolerance)
    for batch in BATCH_SIZES:
        for time in TIMES:
            x = _inputs(arch, batch, time, rng)
            lengths = rng.integers(1, time + 1, size=batch)
            lengths[0] = time
            lengths[-1] = 1 if batch > 1 else lengths[-1]
            states = _random_states(arch, batch, rng)
            diff = _max_diff(run(x, lengths, states), reference(x, lengths, states))
            report.cases.append(Case(f"batch {batch}, time {time}, mixed lengths", diff))

    if arch.carries_state:
        # Two chunks, chunk 1's final states fed as chunk 2's initial states, equal one run.
        batch, time, split = 5, 23, 9
        x = _inputs(arch, batch, time, rng)
        zeros = [(np.zeros_like(h), np.zeros_like(c)) for h, c in _random_states(arch, batch, rng)]
        whole = reference(x, np.full(batch, time), zeros)
        first = run(x[:, :split], np.full(batch, split), zeros)
        carried = [
            (first[final_state(k, "h")], first[final_state(k, "c")]) for k in range(len(zeros))
        ]
        second = run(x[:, split:], np.full(batch, time - split), carried)
        for name in (SEQUENCE, PREDICTION):
            if name in second and second[name].ndim == 3:
                second[name] = np.concatenate([first[name], second[name]], axis=1)
        if arch.head is not None and arch.head.reads in POOLED:  # over this call's steps only
            del second[PREDICTION], whole[PREDICTION]
        report.cases.append(
            Case("two chunks with carried state vs whole", _max_diff(second, whole))
        )
    return report


def torch_reference(module: StackedLSTM) -> Reference:
    """The module's own forward, outputs named as the graph's."""
    module = module.eval()

    def reference(x: np.ndarray, lengths: np.ndarray, states: States) -> dict[str, np.ndarray]:
        with torch.no_grad():
            lengths_t = torch.from_numpy(lengths.astype(np.int64))
            sequence, last_hidden, finals = module.forward_with_state(
                torch.from_numpy(x),
                lengths_t,
                [(torch.from_numpy(h), torch.from_numpy(c)) for h, c in states],
            )
            out = {SEQUENCE: sequence.numpy(), LAST_HIDDEN: last_hidden.numpy()}
            if module.head is not None:
                out[PREDICTION] = module.prediction(sequence, last_hidden, lengths_t).numpy()
        for k, (h, c) in enumerate(finals):
            out[final_state(k, "h")], out[final_state(k, "c")] = h.numpy(), c.numpy()
        return out

    return reference


def verify(
    module: StackedLSTM, model: onnx.ModelProto, tolerance: float = TOLERANCE, seed: int = 0
) -> VerificationReport:
    """Checks `model` against the PyTorch `module` it was made from."""
    arch = recorded_architecture(model)
    return verify_against(model, torch_reference(module), arch, tolerance, seed)


def verify_program(
    model: onnx.ModelProto, program: Program, tolerance: float = TOLERANCE, draws: int = 3
) -> VerificationReport:
    """Checks `model` against the user's program itself, full length, zero initial state: a
    torch.export program at the shape it was traced at (torch.export specializes it), a
    TorchScript module at a few shapes; `draws` random inputs each, the graph's `prediction`
    against the program's output."""
    onnx.checker.check_model(model, full_check=True)
    arch = recorded_architecture(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    report = VerificationReport(tolerance)
    if program.example_shape:  # [batch, time, ...], or [time, batch, ...] when time-major
        first, second = program.example_shape[:2]
        sizes = [(second, first) if program.time_major else (first, second)]
    else:
        sizes = [(3, 7), (1, 12), (5, 1)]
    for batch, time in sizes:
        for draw in range(draws):
            x = _inputs(arch, batch, time, rng)  # ours: batch-first
            given = np.ascontiguousarray(np.swapaxes(x, 0, 1)) if program.time_major else x
            zeros = [
                (np.zeros_like(h), np.zeros_like(c)) for h, c in _random_states(arch, batch, rng)
            ]
            feeds = _feeds(x, np.full(batch, time), zeros)
            got = np.asarray(session.run([PREDICTION], feeds)[0])
            with torch.no_grad():
                expected = program.module(torch.from_numpy(given)).numpy()
            if program.time_major and expected.ndim == 3:  # per step, [time, batch, units]
                expected = expected.transpose(1, 0, 2)
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else np.inf
            shape = list(given.shape)
            report.cases.append(Case(f"the program, shape {shape}, draw {draw}", diff))
    return report


ADOPTED_BATCHES = (1, 3, 8)
ADOPTED_TIMES = (1, 6, 19)


def verify_adopted(
    model: onnx.ModelProto, adopted: Adopted, tolerance: float = TOLERANCE, draws: int = 2
) -> VerificationReport:
    """Checks `model` against the user's own ONNX file, both run by ONNX Runtime on the same
    random full-length batches (every batch size and time length the file allows), each of
    its outputs against ours laid out as its."""
    onnx.checker.check_model(model, full_check=True)
    arch = recorded_architecture(model)
    ours = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        theirs = ort.InferenceSession(
            adopted.original.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own types for files it cannot load
        raise AdoptionError(f"ONNX Runtime cannot load it: {exc}") from exc
    fixed_batch, fixed_time = adopted.fixed
    batches = (fixed_batch,) if fixed_batch else ADOPTED_BATCHES
    times = (fixed_time,) if fixed_time else ADOPTED_TIMES
    rng = np.random.default_rng(0)
    report = VerificationReport(tolerance)
    names = [o.name for o in ours.get_outputs()]
    wanted = [o.theirs for o in adopted.outputs]
    for batch in batches:
        for time in times:
            for draw in range(draws):
                x = _inputs(arch, batch, time, rng)
                shapes = [(s.directions, batch, s.units) for s in arch.layers]
                zeros: States = [(np.zeros(s, np.float32), np.zeros(s, np.float32)) for s in shapes]
                got = ours.run(names, _feeds(x, np.full(batch, time), zeros))
                mine = dict(zip(names, got, strict=True))
                given = np.swapaxes(x, 0, 1) if adopted.time_major else x
                feeds = {adopted.input: np.ascontiguousarray(given).astype(adopted.input_type)}
                if adopted.lengths is not None:
                    feeds[adopted.lengths] = np.full(batch, time, adopted.lengths_type)
                try:
                    theirs_got = theirs.run(wanted, feeds)
                except Exception as exc:  # ORT's own error types
                    shape = list(given.shape)
                    raise AdoptionError(
                        f"ONNX Runtime fails on it at input shape {shape}: {exc}"
                    ) from exc
                for output, expected in zip(adopted.outputs, theirs_got, strict=True):
                    arranged = arrange(
                        np.asarray(mine[output.ours]),
                        output.our_axes,
                        output.their_axes,
                        output.directions,
                    )
                    expected = np.asarray(expected)
                    same = arranged.shape == expected.shape
                    diff = float(np.abs(arranged - expected).max()) if same else np.inf
                    name = f"{output.theirs} as {output.ours}, batch {batch}, time {time}"
                    report.cases.append(Case(f"{name}, draw {draw}", diff))
    return report
