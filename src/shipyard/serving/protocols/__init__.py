"""Thin transports over the DataPlane: V2 REST now; TF Serving REST and V2 gRPC next."""
