"""The orchestration around the core (search_space/, workers/): the rooms, from the ground floor up, each
importing only those below it:

- runtime/: settings, the Ray session, cluster resources, errors, input checks, progress, shared records;
- tracking/: MLflow runs, the front, the registry, model references;
- retrain/: winners retrained on Ray Train and registered;
- search/: one search or sweep on Ray Tune and Optuna, resumable;
- analysis/: ablation, the fidelity study, the report page;
- cli/: the `acla-orch` verbs; the only room that parses the command line.
"""
