"""HTTP transports: V2 REST, TF Serving REST and embeddings, dispatched by the route table."""
