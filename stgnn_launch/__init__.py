"""stgnn-launch: train spatiotemporal GNNs with index batching, from a laptop to a Slurm cluster."""

__version__ = "0.1.0"
