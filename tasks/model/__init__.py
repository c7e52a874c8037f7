"""The classifier: frozen InceptionV3 base, head, writer-dependent verifier, folded graph, file."""
