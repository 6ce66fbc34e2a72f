"""lstm-serving: a gRPC model server for stacked LSTM networks, and its Python client.

What a calling service imports is here: `from lstm_serving import LstmClient`. Importing it
loads neither ONNX Runtime nor torch. The layers (README: Layout) are the subpackages:
`core` (protocol-neutral serving), `protocols` (protobuf <-> numpy), `server` (gRPC),
`client` (library, CLI, load generator), `export` (PyTorch -> ONNX) and `proto` (generated).
"""

from lstm_serving.client.client import AsyncLstmClient, LstmClient, Prediction, Security
from lstm_serving.contract import Architecture
from lstm_serving.version import __version__

__all__ = [
    "Architecture",
    "AsyncLstmClient",
    "LstmClient",
    "Prediction",
    "Security",
    "__version__",
]
