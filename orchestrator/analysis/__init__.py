"""Ablation, the fidelity study and the report page (imports the rooms below; never the CLI)."""
