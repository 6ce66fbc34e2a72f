"""Where a stream message's time goes: PredictStream built up from a bare grpc.aio stream to
lstm-serve, one part at a time, each measured as event-loop CPU per message under h2load.

The event loop's thread is what saturates when a stream is driven hard (its CPU reaches a core
while gRPC's poller and the ONNX Runtime thread stay well under one), so its CPU per message
(utime + stime of that thread, from /proc) is the cost to cut. Each level is its own server
process, driven by h2load with the same body as `h2load_bench`'s PredictStream row (16
streams of 100 B=1 messages):
  0  a bare grpc.aio stream that reads ahead: a reader task queues, the handler writes a canned
     answer for each message in order (the shape of lstm-serve's pipeline, nothing of its work)
  1  + the request decoded (`decode_predict`) and an answer encoded (`encode_prediction`)
  2  + the data plane: checked, queued, batched and run (ONNX Runtime on its thread), the rows
     split out: the real answer
  3  lstm-serve's own PredictStream handler (`LstmServicer`: read-ahead bounds, the stream's
     idle limit, metrics) on a bare grpc.aio server
  4  lstm-serve itself (adds its registration: request decoding that cannot raise)
Prints a table and writes JSON.
Usage: python -m benchmarks.probes.stream_parts [--duration 5] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.h2load_bench import CASES, SHAPES, grpc_body, h2load, require_h2load
from benchmarks.servers import ROOT, Server, StartFn, lstm_serve, running
from lstm_serving.client.messages import predict_request
from lstm_serving.core.dataplane import DataPlane
from lstm_serving.core.metrics import Metrics
from lstm_serving.core.registry import Registry
from lstm_serving.core.repository import load_models, serve_models
from lstm_serving.core.requests import InferResult
from lstm_serving.core.settings import Settings
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.protocols import lstm_v1
from lstm_serving.server.budget import AnswerBudget
from lstm_serving.server.lstm_v1 import LstmServicer
from lstm_serving.server.servicer import OpenStreams

STREAM = next(case for case in CASES if case.label == "PredictStream")
SEED_SHAPE = SHAPES["seed"]
LEVELS = {
    0: "bare grpc.aio stream, read ahead, canned answers",
    1: "+ decode and encode",
    2: "+ data plane: check, queue, batch, run, split",
    3: "lstm-serve's PredictStream handler on a bare server",
    4: "lstm-serve",
}


class Level:
    """PredictStream with the parts up to `level` (0-3)."""

    def __init__(self, level: int, dataplane: DataPlane, servicer: LstmServicer) -> None:
        self.level, self.dataplane, self.servicer = level, dataplane, servicer
        self.fixed: InferResult | None = None  # one real answer, for levels 0 and 1

    async def _fixed(self) -> InferResult:
        if self.fixed is None:
            x = np.zeros((1, *SEED_SHAPE), np.float32)
            self.fixed = await self.dataplane.infer(
                lstm_v1.decode_predict(predict_request("seed", x), None)
            )
        return self.fixed

    async def predict_stream(
        self, request_iterator: AsyncIterator[pb.PredictRequest], context: Any
    ) -> None:
        if self.level == 3:
            await self.servicer.PredictStream(request_iterator, context)
            return
        fixed = await self._fixed()
        canned = lstm_v1.encode_prediction(fixed)
        queue: asyncio.Queue[Any] = asyncio.Queue(256)

        async def read() -> None:
            async for message in request_iterator:
                if self.level == 0:
                    await queue.put(None)
                    continue
                call = lstm_v1.decode_predict(message, None)
                await queue.put(self.dataplane.submit(call) if self.level >= 2 else call)
            await queue.put(StopAsyncIteration)

        reader = asyncio.ensure_future(read())
        while (item := await queue.get()) is not StopAsyncIteration:
            if self.level == 0:
                await context.write(canned)
            elif self.level == 1:
                await context.write(lstm_v1.encode_prediction(fixed))
            else:
                await context.write(lstm_v1.encode_prediction(await item.result()))
        await reader


async def serve(port: int, level: int) -> None:
    settings, metrics, registry = Settings(repository=ROOT / "models"), Metrics(), Registry()
    serve_models(registry, load_models(settings), settings, metrics)  # as lstm-serve does
    dataplane = DataPlane(registry, settings)
    streams = OpenStreams(settings.max_streams, 256, settings.stream_idle_timeout)
    budget = AnswerBudget(*settings.answer_budgets())
    servicer = LstmServicer(dataplane, settings, metrics, streams, budget)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            Level(level, dataplane, servicer).predict_stream,
            request_deserializer=pb.PredictRequest.FromString,
            response_serializer=pb.PredictResponse.SerializeToString,
        ),
        # what `servers.wait_ready` asks before the level is measured
        "DescribeModel": grpc.unary_unary_rpc_method_handler(
            servicer.DescribeModel,
            request_deserializer=pb.DescribeModelRequest.FromString,
            response_serializer=pb.ModelDescription.SerializeToString,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("lstm.v1.LstmService", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def loop_cpu_seconds(pid: int) -> float:
    """utime + stime of the process's main thread: its event loop."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def level_server(level: int) -> StartFn:
    """Level 4 is lstm-serve itself; the others run `serve` in a process of their own."""
    if level == 4:
        return lstm_serve(ROOT / "models")

    def start(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "benchmarks.probes.stream_parts", "serve",
                   str(port), str(level)]  # fmt: skip
        return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)

    return start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/stream_parts.json")
    args = parser.parse_args()
    require_h2load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        body = grpc_body(STREAM, Path(tmp))
        for level, what in LEVELS.items():
            server = Server(f"level {level}", level_server(level), metrics=False)
            with running(server) as (target, _, _):
                pid = server.pids[-1]
                h2load(target, STREAM, body, 2)  # warm-up
                runs = []
                for _round in range(args.rounds):
                    before = loop_cpu_seconds(pid)
                    result = h2load(target, STREAM, body, args.duration)
                    spent = loop_cpu_seconds(pid) - before  # with h2load's warm-up
                    messages = result["requests_per_second"] * (args.duration + 1)
                    runs.append((result["requests_per_second"], spent / messages * 1e6))
                    print(f"level {level}: {runs[-1][0]:,.0f} msg/s", file=sys.stderr)
            rows.append({"level": level, "what": what,
                         "messages_per_second": statistics.median(r[0] for r in runs),
                         "loop_cpu_us_per_message": statistics.median(r[1] for r in runs),
                         "rounds": runs})  # fmt: skip
    print("| level | server | messages/s | event-loop CPU per message (us) | added (us) |")
    print("|---|---|---|---|---|")
    previous = None
    for row in rows:
        cost = row["loop_cpu_us_per_message"]
        added = f"{cost - previous:+.0f}" if previous is not None else ""
        print(f"| {row['level']} | {row['what']} | {row['messages_per_second']:,.0f} | "
              f"{cost:.0f} | {added} |")  # fmt: skip
        previous = cost
    args.json.write_text(json.dumps({"case": STREAM.name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
