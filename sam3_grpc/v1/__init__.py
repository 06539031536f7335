"""Generated protobuf and gRPC stubs for the sam3_grpc.v1 API (see protos/)."""
