"""Generated protobuf messages of the V2 gRPC protocol (`grpc_service.proto`); do not edit.

Regenerate after changing the .proto, from the repository root, with grpcio-tools whose
protoc matches the oldest protobuf runtime supported (gencode 6.31.1: grpcio-tools 1.74):

    python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \\
        src/shipyard/serving/protocols/proto/grpc_service.proto

Only the messages are generated: `protocols/v2_grpc.py` registers the service's method
handlers itself, under the wire name `inference.GRPCInferenceService`.
"""
