"""A local development environment: a real control plane on loopback, for tests and `make demo`."""
