"""The client side: the client library, `lstm-client` and its load generator. No ONNX Runtime
(but `verify`, imported for `load --verify` only) and no torch."""
