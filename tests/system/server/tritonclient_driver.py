"""Drives a running lstm-serve with the stock KServe v2 client, tritonclient[grpc].

Run by test_tritonclient.py in its own process: tritonclient's protobuf module and the
server's v2 module define the same `inference.*` symbols, which one process cannot hold.
Compares every v2 answer with the lstm.v1 answer for the same input (bit for bit), also under
a concurrent mix of v1 and v2 calls. Prints one JSON report on stdout.
Usage: python tritonclient_driver.py HOST:PORT
Over 250 lines: one process, one client, every v2 feature tritonclient reaches.
"""

from __future__ import annotations

import json
import queue
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from lstm_serving.client.client import LstmClient, Prediction

OUTPUT_SETS = [
    ("last_hidden",),
    ("sequence",),
    ("last_hidden", "sequence"),
    ("final_h_0", "final_c_1"),
]
V1_OUTPUT = {"last_hidden": "last_hidden", "sequence": "sequence"}


def v2_inputs(x: np.ndarray, lengths: list[int], typed: bool = False) -> list[triton.InferInput]:
    inp = triton.InferInput("input", list(x.shape), "FP32")
    lens = triton.InferInput("lengths", [len(lengths)], "INT32")
    if typed:  # tritonclient only sends raw bytes; typed contents go into the message itself
        inp._get_tensor().contents.fp32_contents.extend(x.ravel().tolist())
        lens._get_tensor().contents.int_contents.extend(lengths)
    else:
        inp.set_data_from_numpy(x)
        lens.set_data_from_numpy(np.array(lengths, np.int32))
    return [inp, lens]


def v1_arrays(p: Prediction) -> dict[str, bytes]:
    out = {}
    if p.last_hidden is not None:
        out["last_hidden"] = p.last_hidden.tobytes()
    if p.sequence is not None:
        out["sequence"] = p.sequence.tobytes()
    for k, (h, c) in enumerate(p.states):
        out[f"final_h_{k}"], out[f"final_c_{k}"] = h.tobytes(), c.tobytes()
    return out


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    batch, steps = int(rng.integers(1, 9)), int(rng.integers(1, 40))
    x = rng.standard_normal((batch, steps, 2)).astype(np.float32)
    return x, rng.integers(1, steps + 1, size=batch).tolist()


def error_of(call: Any) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    return "no error"


def main(target: str) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    report: dict[str, Any] = {}
    v2 = triton.InferenceServerClient(target)
    v1 = LstmClient(target)
    report["live"] = v2.is_server_live()
    report["ready"] = v2.is_server_ready()
    report["model_ready"] = [v2.is_model_ready("seed"), v2.is_model_ready("nope")]
    report["server_name"] = v2.get_server_metadata().name
    meta = v2.get_model_metadata("seed")
    report["metadata"] = {
        "platform": meta.platform,
        "versions": list(meta.versions),
        "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
        "outputs": [t.name for t in meta.outputs],
    }

    x, lengths = random_case(rng)
    reference = v1_arrays(v1.predict("seed", x, lengths=lengths, output="both", return_state=True))
    report["infer"] = {}
    for typed in (False, True):
        for names in OUTPUT_SETS:
            result = v2.infer(
                "seed",
                v2_inputs(x, lengths, typed),
                request_id="abc",
                outputs=[triton.InferRequestedOutput(n) for n in names],
            )
            got = {n: result.as_numpy(n).tobytes() for n in names}
            sent = [o.name for o in result.get_response().outputs]
            key = ("typed " if typed else "raw ") + "+".join(names)
            report["infer"][key] = {
                "equal_v1": all(got[n] == reference[n] for n in names),
                "outputs_sent": sent,
                "id": result.get_response().id,
            }

    report["errors"] = {
        "unknown model": error_of(lambda: v2.infer("nope", v2_inputs(x, lengths))),
        "unknown version": error_of(
            lambda: v2.infer("seed", v2_inputs(x, lengths), model_version="5")
        ),
        "wrong datatype": error_of(
            lambda: v2.infer(
                "seed",
                [
                    triton.InferInput("input", [1, 2, 2], "FP64").set_data_from_numpy(
                        np.zeros((1, 2, 2))
                    )
                ],
            )
        ),
        "unknown output": error_of(
            lambda: v2.infer(
                "seed", v2_inputs(x, lengths), outputs=[triton.InferRequestedOutput("logits")]
            )
        ),
        "model config (Triton only)": error_of(lambda: v2.get_model_config("seed")),
    }

    # 120 requests pipelined on one stream, one of them bad; answers checked against v1.
    cases = [random_case(rng) for _ in range(120)]
    expected = [v1_arrays(v1.predict("seed", cx, lengths=cl)) for cx, cl in cases]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    v2.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, (cx, cl) in enumerate(cases):
        inputs = v2_inputs(cx, cl)
        if i == 50:
            inputs = [
                triton.InferInput("input", [1, 1, 5], "FP32").set_data_from_numpy(
                    np.zeros((1, 1, 5), np.float32)
                )
            ]
        v2.async_stream_infer(
            "seed", inputs, request_id=str(i), outputs=[triton.InferRequestedOutput("last_hidden")]
        )
    received = [answers.get(timeout=60) for _ in cases]
    v2.stop_stream()
    errors, wrong, ids_in_order = [], 0, True
    for i, (result, error) in enumerate(received):
        if error is not None:
            errors.append([i, str(error)])
            continue
        ids_in_order &= result.get_response().id == str(i)
        wrong += result.as_numpy("last_hidden").tobytes() != expected[i]["last_hidden"]
    report["stream"] = {
        "received": len(received),
        "errors": errors,
        "wrong": wrong,
        "ids_in_order": ids_in_order,
    }

    # v1 and v2 mixed under concurrent load; each answer vs the same v1 request sent alone.
    mixed = [random_case(rng) for _ in range(200)]
    alone = [v1_arrays(v1.predict("seed", cx, lengths=cl)) for cx, cl in mixed]

    def call(i: int) -> bytes:
        cx, cl = mixed[i]
        if i % 2 == 0:
            return v1_arrays(v1.predict("seed", cx, lengths=cl))["last_hidden"]
        outputs = [triton.InferRequestedOutput("last_hidden")]
        result = v2.infer("seed", v2_inputs(cx, cl), outputs=outputs)
        return bytes(result.as_numpy("last_hidden").tobytes())

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(call, range(len(mixed))))
    report["mixed"] = {
        "requests": len(mixed),
        "wrong": sum(t != a["last_hidden"] for t, a in zip(together, alone, strict=True)),
    }
    report["sequences"] = sequences(v1, v2, rng)
    report["tokens"] = tokens(v1, v2, rng)
    v1.close()
    v2.close()
    return report


def tokens(v1: LstmClient, v2: triton.InferenceServerClient, rng: np.random.Generator) -> Any:
    """The text model ("text", token ids): INT64 and INT32 inputs, each equal to lstm.v1's
    answer for the same ids, bit for bit; and its metadata's input."""
    ids = rng.integers(0, 30, size=(3, 8))
    reference = v1.predict("text", ids).prediction
    assert reference is not None
    equal = {}
    for datatype, dtype in (("INT64", np.int64), ("INT32", np.int32)):
        inputs = [triton.InferInput("input", list(ids.shape), datatype)]
        inputs[0].set_data_from_numpy(ids.astype(dtype))
        result = v2.infer("text", inputs, outputs=[triton.InferRequestedOutput("prediction")])
        equal[datatype] = result.as_numpy("prediction").tobytes() == reference.tobytes()
    meta = v2.get_model_metadata("text").inputs[0]
    return {"equal_v1": equal, "input": [meta.name, meta.datatype, list(meta.shape)]}


def sequences(v1: LstmClient, v2: triton.InferenceServerClient, rng: np.random.Generator) -> Any:
    """64 server-held sequences the way Triton users send them: 32 by unary infer from 8
    threads, 32 interleaved on one stream (every chunk sent without waiting); each chunk's
    `sequence` output against the whole sequence run alone through lstm.v1."""
    xs = [
        rng.standard_normal((1, int(rng.integers(4, 30)), 2)).astype(np.float32) for _ in range(64)
    ]
    whole = [v1.predict("seed", x, output="sequence").sequence for x in xs]
    chunk = 3
    worst = [0.0]

    def check(i: int, n: int, result: Any) -> None:
        expected = whole[i][:, n * chunk : (n + 1) * chunk]  # type: ignore[index]
        worst[0] = max(worst[0], float(np.abs(result.as_numpy("sequence") - expected).max()))

    def flags(i: int, n: int) -> dict[str, Any]:
        last = (xs[i].shape[1] - 1) // chunk
        sequence_id = 5000 + i if i % 2 else f"triton-{i}"
        return {"sequence_id": sequence_id, "sequence_start": n == 0, "sequence_end": n == last}

    def chunk_inputs(i: int, n: int) -> list[triton.InferInput]:
        part = np.ascontiguousarray(xs[i][:, n * chunk : (n + 1) * chunk])
        return [triton.InferInput("input", list(part.shape), "FP32").set_data_from_numpy(part)]

    outputs = [triton.InferRequestedOutput("sequence")]

    def unary(i: int) -> int:
        steps = int((xs[i].shape[1] + chunk - 1) // chunk)
        for n in range(steps):
            check(i, n, v2.infer("seed", chunk_inputs(i, n), outputs=outputs, **flags(i, n)))
        return steps

    with ThreadPoolExecutor(8) as pool:
        unary_steps = sum(pool.map(unary, range(32)))
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    v2.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    for n in range(max(x.shape[1] for x in xs)):
        for i in range(32, 64):
            if n * chunk < xs[i].shape[1]:
                request_id = f"{i}:{n}"
                v2.async_stream_infer(
                    "seed",
                    chunk_inputs(i, n),
                    request_id=request_id,
                    outputs=outputs,
                    **flags(i, n),
                )
                sent.append(request_id)
    errors = []
    for _ in sent:
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(str(error))
            continue
        i, n = (int(v) for v in result.get_response().id.split(":"))
        check(i, n, result)
    v2.stop_stream()
    return {
        "unary_steps": unary_steps,
        "stream_steps": len(sent),
        "errors": errors,
        "max_abs_diff": worst[0],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
