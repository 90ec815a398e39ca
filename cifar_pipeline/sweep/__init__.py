"""Sweep: search spaces (TOML -> suggestions), the study over train/evaluate, local trials and the leaderboard."""
