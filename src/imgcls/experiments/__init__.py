"""Experiments across runs: the table of a folder's runs and the page comparing several (compare), and Optuna
studies whose trials are runs (tune)."""
