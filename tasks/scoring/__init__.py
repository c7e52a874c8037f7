"""Answering users with a registered version: the model server, its client, batch scoring on Spark."""
