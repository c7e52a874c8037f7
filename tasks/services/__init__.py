"""Long-running services: the one process supervisor, make up's servers, make team-up's servers."""
