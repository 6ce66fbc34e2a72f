"""The client side: the library (`client`, `sequences`, `messages`, `blocking`), the CLI
(`cli`, lstm-client) and the load generator (`load/`). No torch, and no ONNX Runtime but
`load.verify`, imported for `load --verify` only."""
