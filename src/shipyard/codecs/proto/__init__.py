"""Generated protobuf messages of the V2 gRPC protocol (`grpc_service.proto`); do not edit.

`model_config.proto` holds the part of Triton's model configuration that the ModelConfig
RPC answers with; `grpc_service.proto` imports it. Only the messages are generated
(`grpc_service_pb2.py`, `model_config_pb2.py` and their `.pyi` stubs):
`grpc/v2.py` registers the service's method handlers itself, under the wire name
`inference.GRPCInferenceService`, so no `_pb2_grpc.py` pins a grpcio version.

To regenerate after changing the .proto, from the repository root, use grpcio-tools 1.74
in a scratch environment: its protoc writes gencode 6.31.1, which every protobuf runtime
from 6.31.1 on accepts (newer grpcio-tools write 7.x gencode, which protobuf 6 refuses)::

    python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \\
        src/shipyard/codecs/proto/model_config.proto \\
        src/shipyard/codecs/proto/grpc_service.proto

then put back the header lines each generated file starts with (`# ruff: noqa`, and
`# mypy: ignore-errors` in the .pyi) and run `ruff format` on the four files.
"""
