"""Profiles from public per-kernel measurements.

A reader per source turns its tables into tidy rows (one op, its shape, dtype and measured seconds); `ops`
predicts the same rows from a kvsim Profile with the cost model's own efficiency formulas; `fit` fits each op
family's parameters and reports held-out error; `compose` checks whole decode steps and prefills built from
the measured ops against `kvsim predict`. Today's one source is NVIDIA's aiconfigurator-core tables.
"""
