"""The gRPC transport: V2 `inference.GRPCInferenceService`, its auth gate and its listener."""
