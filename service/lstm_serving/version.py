"""The one version string: the package's, the ONNX producer's and the v2 server metadata's."""

__version__ = "0.1.0"
