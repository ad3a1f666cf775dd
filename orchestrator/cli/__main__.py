"""`python -m orchestrator.cli`: the same as `acla-orch`."""
from orchestrator.cli.main import main

raise SystemExit(main())
