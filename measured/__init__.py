"""The measurement harness: runs kvsim's policy objects on real transformers models, and measures what the
analytic model predicts (physical cache bytes, latency, throughput, peak memory) plus quality.

Importing this package imports nothing heavy; torch and transformers load with the modules that need them.
"""
