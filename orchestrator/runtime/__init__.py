"""Settings, the Ray session, cluster resources, errors, input checks, progress and the records every room
shares: the ground floor, importing no other room of orchestrator/."""
