"""Past one machine: a container build context, Kubernetes and KServe manifests (issue 12)."""
