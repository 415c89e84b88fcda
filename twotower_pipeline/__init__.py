"""ecosystem.Ai Two-Tower module as a Dagster project."""
