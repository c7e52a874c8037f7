"""The `sigpipe` command line: one command per stage, and predict, verify, score and serve."""
