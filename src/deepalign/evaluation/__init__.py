"""Evaluation: run targets x attacks x datasets, judge, compute metrics, write reports."""
