"""Enrolling and removing a writer without retraining: the record on disk, reference checks, the re-solve."""
