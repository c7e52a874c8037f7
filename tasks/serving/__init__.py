"""The code the registered model runs: inputs, the calibrated classifier, answers, files, pyfunc."""
