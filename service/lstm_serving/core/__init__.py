"""Protocol-neutral serving: settings, runtime (ONNX Runtime), batching, data plane, registry
and repository, metrics, validation. No grpc, no protobuf."""
