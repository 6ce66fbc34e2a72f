"""The gRPC server: servicers, status mapping, security, the app and its worker processes."""
