"""What a team applies to its Prefect server: prefect.yaml, and `serve` for a single machine."""
