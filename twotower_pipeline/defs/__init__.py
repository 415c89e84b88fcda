"""The Dagster layer: resources, IO managers, assets, checks, jobs and schedules. Kept thin."""
