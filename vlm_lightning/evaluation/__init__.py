"""Evaluation reports: predictions, metrics, breakdowns."""
