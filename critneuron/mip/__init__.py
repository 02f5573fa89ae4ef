"""The MIP: network specs, interval bounds, formulation, HiGHS solve, scores."""
