"""Judging the classifier: scores, metrics, error bars over writer partitions, calibration."""
