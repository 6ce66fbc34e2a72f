"""The Python gRPC ceiling: a bare grpc.aio server that answers lstm.v1 Predict with a canned
response of the right size, computing nothing. Whatever lstm-serve does on top costs time
above this line.
Usage: python benchmarks/echo_server.py PORT [OUTPUT_SIZE]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.proto.v1 import lstm_pb2_grpc as pb_grpc


class Echo(pb_grpc.LstmServiceServicer):
    def __init__(self, output_size: int) -> None:
        self.output_size = output_size
        self._cache: dict[int, pb.PredictResponse] = {}

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.PredictResponse:
        batch = request.input.shape[0]
        if batch not in self._cache:
            self._cache[batch] = pb.PredictResponse(
                model=request.model,
                version=1,
                last_hidden=pb.Tensor(
                    shape=[batch, self.output_size], data=bytes(4 * batch * self.output_size)
                ),
            )
        return self._cache[batch]

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[pb.PredictRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.PredictResponse]:
        async for request in request_iterator:
            yield await self.Predict(request, context)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelVersions(name="seed", versions=[1])])

    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelDescription:
        return pb.ModelDescription(
            name=request.model, version=1, input_size=2, output_size=self.output_size
        )


async def serve(port: int, output_size: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_LstmServiceServicer_to_server(Echo(output_size), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo server on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 32))
