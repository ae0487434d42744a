"""Pure renderers: a validated spec in, Kubernetes manifests out. No I/O, no clock, no randomness."""
