"""The peer: an ONNX Runtime runtime for Seldon MLServer, the way its custom runtimes are
written (MLModel.load / predict), serving the same model file over KServe v2.

Inputs `input` FP32 [batch, time, features] and optional `lengths` INT32 [batch]; output
`last_hidden`. Runs in MLServer's own virtual environment (mlserver and tritonclient cannot
share a process), so it imports nothing from lstm-serving.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxLstm(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._states = [
            (i.name, i.shape[0], i.shape[2])
            for i in self._session.get_inputs()
            if i.name.startswith("initial_")
        ]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        x = tensors["input"].astype(np.float32)
        batch = x.shape[0]
        lengths = tensors.get("lengths")
        lengths = (
            np.full(batch, x.shape[1], np.int32)
            if lengths is None
            else lengths.astype(np.int32).reshape(batch)
        )
        feeds = {"input": x, "lengths": lengths}
        for name, directions, units in self._states:
            feeds[name] = np.zeros((directions, batch, units), np.float32)
        (last_hidden,) = self._session.run(["last_hidden"], feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("last_hidden", last_hidden)],
        )
