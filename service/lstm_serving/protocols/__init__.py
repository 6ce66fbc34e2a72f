"""Protocol adapters: lstm.v1 and KServe v2 protobuf <-> numpy. No grpc."""
