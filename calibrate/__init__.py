"""Fit kvsim's efficiency parameters to measurements, and report held-out prediction error per device."""
