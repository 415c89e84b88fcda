"""Software-defined assets, one module per stage of the lifecycle (SPEC §2)."""
