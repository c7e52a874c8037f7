"""MLflow tracking: each stage's runs and their store, and the tracking server as a stage sees it."""
