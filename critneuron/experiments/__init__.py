"""Cached experiments: result store, train-and-score, whole-network and decoupled runs, transfer, budgets, table rows."""
