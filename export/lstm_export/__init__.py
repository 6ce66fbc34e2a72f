"""Export stage: a stacked LSTM from PyTorch or Keras -> a verified ONNX model in a model
repository. The only package that imports torch; the server never does.

The names load on first use (PEP 562): `lstm_export.spec` and the graph writer stay free of
torch, which only the PyTorch source, the model and the verifier load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lstm_serving.lazy import lazy_names

if TYPE_CHECKING:
    from lstm_export.model import HeadConfig, StackedLSTM
    from lstm_export.torch_source import build_model
    from lstm_export.verify import VerificationReport

# public name -> the module that defines it
_LAZY = {
    "HeadConfig": "lstm_export.model",
    "StackedLSTM": "lstm_export.model",
    "build_model": "lstm_export.torch_source",
    "VerificationReport": "lstm_export.verify",
}

# `verify` (the function) is imported from lstm_export.verify: at the root its name would be
# shadowed by the submodule of the same name once anything imported it.
__all__ = ["HeadConfig", "StackedLSTM", "VerificationReport", "build_model"]

__getattr__ = lazy_names(__name__, _LAZY)
