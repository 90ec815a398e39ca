"""Doctor: pre-flight checks of data, model and optimiser, with their report."""
