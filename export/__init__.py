"""Export stage: a stacked LSTM in PyTorch -> a verified ONNX model in a model repository.

The only package that imports torch; the server never does.
"""

from lstm_serving.export.model import StackedLSTM
from lstm_serving.export.onnx_graph import build_model
from lstm_serving.export.verify import VerificationReport, verify

__all__ = ["StackedLSTM", "VerificationReport", "build_model", "verify"]
