"""MongoDB access (pymongo only, no Dagster): the embedded server, clients and DataFrame storage."""
