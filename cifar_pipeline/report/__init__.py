"""Report: the run report, its plots and its template."""
