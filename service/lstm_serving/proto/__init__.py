"""Generated protobuf and gRPC code (scripts/gen_proto.py), installed as lstm_serving.proto."""
