"""Partitions: runtime logs are cut by UTC day of `date_log`."""

import os

import dagster as dg

#: First day of the partition set; MovieLens 100K starts 1997-09-20. Set TWOTOWER_PARTITIONS_START
#: to your logs' first day.
PARTITIONS_START = os.environ.get("TWOTOWER_PARTITIONS_START", "1997-09-01")

#: Today is a partition too (end_offset=1): its logs so far can be flattened, and flattened again
#: once the day is over (the nightly schedule does, for the day that just ended).
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC", end_offset=1)
