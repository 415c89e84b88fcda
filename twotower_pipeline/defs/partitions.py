"""Partitions: runtime logs are cut by UTC day of `date_log`."""

import os

import dagster as dg

#: First day of the partition set; MovieLens 100K starts 1997-09-20. Set TWOTOWER_PARTITIONS_START
#: to your logs' first day.
PARTITIONS_START = os.environ.get("TWOTOWER_PARTITIONS_START", "1997-09-01")

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
