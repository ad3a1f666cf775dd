"""MLflow: runs, the front, the registry and model references (imports runtime/ only)."""
