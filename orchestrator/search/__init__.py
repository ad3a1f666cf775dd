"""One search or sweep on Ray Tune and Optuna, resumable, with its width line (imports runtime/, tracking/ and
retrain/)."""
