"""Sensor graphs, by concern: sparse.py (the SparseGraph edge list), pickle_safe.py (DCRNN pickles read
without running code), files.py (graph and sensor id files), kernel.py (the Gaussian kernel from distances).

Files hold a graph as an N x N float32 weighted adjacency plus, when the file carries them, the sensor
ids that name its rows and columns. Once read, a graph is kept as a `SparseGraph` (an edge list): road
graphs are sparse, and a dense 11,160 x 11,160 PeMS adjacency would be 498 MB beside the series in every
process that holds one. DCRNN's road graphs come as Python 2 pickles `[sensor_ids, sensor_id_to_ind,
adj_mx]`; pickles can run arbitrary code, so they are read through an unpickler that admits only the
few numpy globals an array needs.
"""

from __future__ import annotations

from stgnn_launch.data.graph.files import load_graph, read_sensor_ids, save_graph
from stgnn_launch.data.graph.kernel import gaussian_kernel, gaussian_kernel_adjacency
from stgnn_launch.data.graph.pickle_safe import safe_load_pickle
from stgnn_launch.data.graph.sparse import SparseGraph, as_sparse_graph

__all__ = ["SparseGraph", "as_sparse_graph", "gaussian_kernel", "gaussian_kernel_adjacency", "load_graph",
           "read_sensor_ids", "safe_load_pickle", "save_graph"]
