"""Export stage: a stacked LSTM from PyTorch or Keras -> a verified ONNX model in a model
repository. The only package that imports torch; the server never does.
"""

from lstm_serving.export.model import HeadConfig, StackedLSTM
from lstm_serving.export.torch_source import build_model
from lstm_serving.export.verify import VerificationReport, verify

__all__ = ["HeadConfig", "StackedLSTM", "VerificationReport", "build_model", "verify"]
