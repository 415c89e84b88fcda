"""One materialisation in a process of its own, so that a test can kill it at a fault point.

    python -m twotower_pipeline_tests.fault_runner '<json spec>'

The spec names the server (`uri`, `prefix`), the `selection`, and optionally `run_config`, `tags`
and `instance` (use $DAGSTER_HOME's instance instead of an ephemeral one); or, instead of a
selection, `publish`: a run id whose stored vectors to publish. The last line printed is
JSON: {success, run_id, materializations: {asset key: metadata}}.
"""

import json
import sys

import dagster as dg

from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.defs.run_health import in_process_tags
from twotower_pipeline.store import embeddings
from twotower_pipeline.store.client import MongoStore


def main(spec: dict) -> dict:
    if "publish" in spec:  # a publish of stored vectors, without Dagster
        store = MongoStore(spec["uri"], spec["prefix"])
        outcome = embeddings.Publisher(store).publish(spec["publish"])
        return {"success": True, "run_id": outcome["run_id"], "materializations": {}}
    mongo = MongoResource(uri=spec["uri"], database_prefix=spec["prefix"])
    instance = dg.DagsterInstance.get() if spec.get("instance") else None
    result = dg.materialize(
        list(defs.assets), resources=build_resources(mongo), selection=spec["selection"],
        run_config=spec.get("run_config"), tags={**in_process_tags(), **spec.get("tags", {})}, instance=instance,
        raise_on_error=False,
    )
    materializations = {
        event.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()
                                           if isinstance(getattr(v, "value", v), (str, int, float, bool, type(None)))}
        for event in result.get_asset_materialization_events()
    }
    return {"success": result.success, "run_id": result.run_id, "materializations": materializations}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
