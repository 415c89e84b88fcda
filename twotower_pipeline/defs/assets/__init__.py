"""Software-defined assets, one module per stage of the lifecycle (SPEC §2)."""

#: Who answers for every asset of the pipeline (the UI shows it on each asset and lets you filter by it).
OWNERS = ["team:recommendations"]
