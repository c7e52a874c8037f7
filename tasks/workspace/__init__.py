"""The workspace: validated parameters, file locations and helpers, locks, user-facing errors."""
