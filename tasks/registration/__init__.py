"""A trained model to a signed, registered version, and such a version read back as data."""
