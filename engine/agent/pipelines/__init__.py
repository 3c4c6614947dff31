"""Package data: the agent's built-in workflow pipelines (one YAML file per image type)."""
