"""OCI images without a daemon: deterministic layers, an OCI layout and a docker-load archive."""
