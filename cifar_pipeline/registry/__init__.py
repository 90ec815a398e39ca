"""Registry: what leaves the pipeline; the champion, predictions, export and the model card."""
