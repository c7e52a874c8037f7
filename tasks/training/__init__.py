"""Fitting the classifier: augmentation, embeddings, training, checkpoints, the device policy."""
