"""The service's routes, one module per concern: the runtime (SPEC §7), the PyTorch sidecar (§8)
and the workbench API (§9)."""
