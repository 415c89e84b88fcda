"""The serving side: the similarity scorer, the runtime and sidecar endpoints, the workbench API."""
