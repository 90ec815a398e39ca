"""The Prefect flow and its command line."""
