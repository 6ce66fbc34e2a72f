"""lstm-serving: a gRPC model server for stacked LSTM networks, and its Python client.

What a calling service imports is here: `from lstm_serving import LstmClient`. The names load
on first use (PEP 562), so importing one layer (say `lstm_serving.core.batching`) never loads
another's dependencies (grpc, the client). The layers are the subpackages: `core`
(protocol-neutral serving), `protocols` (protobuf <-> numpy), `server` (gRPC), `client`
(library, CLI, load generator) and `proto` (generated); docs/architecture.md has the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lstm_serving.lazy import lazy_names
from lstm_serving.version import __version__

if TYPE_CHECKING:
    from lstm_serving.client.client import AsyncLstmClient, LstmClient, Prediction, Security
    from lstm_serving.contract import Architecture

# public name -> the module that defines it
_LAZY = {
    "Architecture": "lstm_serving.contract",
    "AsyncLstmClient": "lstm_serving.client.client",
    "LstmClient": "lstm_serving.client.client",
    "Prediction": "lstm_serving.client.client",
    "Security": "lstm_serving.client.client",
}

__all__ = [
    "Architecture",
    "AsyncLstmClient",
    "LstmClient",
    "Prediction",
    "Security",
    "__version__",
]

__getattr__ = lazy_names(__name__, _LAZY)
