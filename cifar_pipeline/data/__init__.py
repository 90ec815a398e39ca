"""Data: download the archive, decode it to arrays, build batches and augmentations, read images and extra data."""
