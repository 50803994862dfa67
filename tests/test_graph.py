"""Graph files: DCRNN pickles (safely), dense matrices, the Gaussian-kernel rule, sensor id lists."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stgnn_launch.data.graph import (
    SparseGraph,
    gaussian_kernel_adjacency,
    load_graph,
    read_sensor_ids,
    safe_load_pickle,
    save_graph,
)
from stgnn_launch.errors import UserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared traffic data not found at {DATA}")
    return DATA


# -- the published DCRNN graphs --------------------------------------------------------------------------

def test_kernel_rule_reproduces_pems_bay_pickle(data: Path) -> None:
    published, ids = load_graph(data / "pems-bay" / "adj_mx_bay.pkl")
    rebuilt = gaussian_kernel_adjacency(data / "pems-bay" / "distances_bay_2017.csv", ids)
    assert rebuilt.dtype == np.float32 and rebuilt.shape == (325, 325)
    np.testing.assert_allclose(rebuilt, published, rtol=0, atol=1e-6)
    assert np.count_nonzero(rebuilt) == 2694


def test_metr_la_pickle(data: Path) -> None:
    adjacency, ids = load_graph(data / "metr-la" / "adj_mx.pkl")
    assert len(ids) == 207 and all(isinstance(s, str) for s in ids)
    assert adjacency.dtype == np.float32 and adjacency.shape == (207, 207)
    assert np.count_nonzero(adjacency) == 1722
    assert np.all(np.diag(adjacency) == 1)
    assert not np.array_equal(adjacency, adjacency.T)


def test_kernel_with_header_and_unknown_ids(tmp_path: Path) -> None:
    path = tmp_path / "distances.csv"
    path.write_text("from,to,cost\na,a,0\na,b,100\nb,a,300\nb,b,0\na,zz,5\n")
    weights = gaussian_kernel_adjacency(path, ["b", "a"])
    sigma = np.std(np.array([0, 100, 300, 0], dtype=np.float32))
    expected = np.exp(-np.square(np.array([[0, 300], [100, 0]], dtype=np.float32) / sigma))
    expected[expected < 0.1] = 0
    np.testing.assert_allclose(weights, expected, atol=1e-7)
    with pytest.raises(UserError, match="threshold"):
        gaussian_kernel_adjacency(path, ["a", "b"], threshold=1.5)


# -- pickles that try to run code --------------------------------------------------------------------------

class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _refused(path: Path, global_name: str) -> None:
    with pytest.raises(UserError, match=f"refused to load pickle global {global_name}"):
        safe_load_pickle(path)
    with pytest.raises(UserError, match="refused"):
        load_graph(path)


def test_pickle_calling_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    _refused(path, "os.system")
    assert not marker.exists()


def test_pickle_calling_exec_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps([["a"], {"a": 0}, _Exec(marker)], protocol=4)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exec(control)))  # the payload is real: plain pickle runs it
    assert control.exists()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    _refused(path, "builtins.exec")
    assert not marker.exists()


@pytest.mark.parametrize("module", ["builtins", "__builtin__"])  # Python 3 and Python 2 spellings
def test_pickle_naming_eval_is_refused(tmp_path: Path, module: str) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(f"c{module}\neval\n(S'1+1'\ntR.".encode())
    _refused(path, f"{module}.eval")


def test_broken_pickle_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pkl"
    path.write_bytes(b"(lp0\nS'abc")
    with pytest.raises(UserError, match="broken"):
        safe_load_pickle(path)


def test_protocol2_pickle_written_by_python3(tmp_path: Path) -> None:
    # Bytes inside protocol 2 come back through _codecs.encode(..., "latin1"), which must stay allowed.
    path = tmp_path / "adj.pkl"
    matrix = np.arange(9, dtype=np.float32).reshape(3, 3)
    path.write_bytes(pickle.dumps([["x", "y", "z"], {"x": 0, "y": 1, "z": 2}, matrix], protocol=2))
    adjacency, ids = load_graph(path)
    assert ids == ["x", "y", "z"]
    np.testing.assert_array_equal(adjacency, matrix)


def test_pickle_of_wrong_layout(tmp_path: Path) -> None:
    path = tmp_path / "adj.pkl"
    path.write_bytes(pickle.dumps({"adj": np.eye(2)}))
    with pytest.raises(UserError, match="DCRNN graph pickle"):
        load_graph(path)


# -- dense matrices, reordering --------------------------------------------------------------------------

def test_dense_csv_and_npy(tmp_path: Path) -> None:
    matrix = np.array([[1, 0.5, 0], [0, 1, 0.25], [0.5, 0, 1]], dtype=np.float32)
    np.savetxt(tmp_path / "a.csv", matrix, delimiter=",")
    np.save(tmp_path / "a.npy", matrix.astype(np.float64))
    for name in ("a.csv", "a.npy"):
        adjacency, ids = load_graph(tmp_path / name)
        assert ids is None and adjacency.dtype == np.float32
        np.testing.assert_array_equal(adjacency, matrix)


@pytest.mark.parametrize("header", ["101,102,103", "s1,s2,s3"])
def test_dense_csv_with_id_header(tmp_path: Path, header: str) -> None:
    path = tmp_path / "a.csv"
    path.write_text(header + "\n1,2,3\n4,5,6\n7,8,9\n")
    adjacency, ids = load_graph(path)
    assert ids == header.split(",")
    assert adjacency[2, 0] == 7


def test_non_square_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 4)))
    (tmp_path / "a.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(UserError, match=r"\(3, 4\)"):
        load_graph(tmp_path / "a.npy")
    with pytest.raises(UserError, match=r"\(2, 3\)"):
        load_graph(tmp_path / "a.csv")


def test_reorder_to_sensor_ids(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n7,8,9\n")
    adjacency, ids = load_graph(path, ["c", "a", "b"])
    assert ids == ["c", "a", "b"]
    np.testing.assert_array_equal(adjacency, [[9, 7, 8], [3, 1, 2], [6, 4, 5]])


def test_sensor_id_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n7,8,9\n")
    with pytest.raises(UserError, match=r"2 of them missing .*'x'"):
        load_graph(path, ["a", "x", "y"])
    np.save(tmp_path / "a.npy", np.eye(3))
    with pytest.raises(UserError, match="expected 2 rows"):
        load_graph(tmp_path / "a.npy", ["a", "b"])


# -- writing, id lists -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["g.npy", "g.pkl"])
def test_save_graph_round_trip(tmp_path: Path, name: str) -> None:
    matrix = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    ids = ["400001", "400017", "400030", "400040"]
    save_graph(tmp_path / name, matrix, ids)
    adjacency, loaded = load_graph(tmp_path / name)
    np.testing.assert_array_equal(adjacency, matrix)
    assert loaded == (ids if name.endswith(".pkl") else None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left behind


def test_read_sensor_ids_from_published_files(data: Path) -> None:
    ids = read_sensor_ids(data / "metr-la" / "adj_mx.pkl")
    assert len(ids) == 207
    assert read_sensor_ids(data / "metr-la" / "graph_sensor_ids.txt") == ids
    assert read_sensor_ids(data / "metr-la" / "graph_sensor_locations.csv") == ids
    bay = read_sensor_ids(data / "pems-bay" / "graph_sensor_locations_bay.csv")  # no header
    assert len(bay) == 325 and bay[0] == "400001"
    assert set(bay) == set(read_sensor_ids(data / "pems-bay" / "adj_mx_bay.pkl"))


def test_read_sensor_ids_forms(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("7,8\n9\n")
    (tmp_path / "named.csv").write_text("id,lat\n7,1.5\n8,2.5\n")
    (tmp_path / "plain.csv").write_text("S7\nS8\n")
    (tmp_path / "twice.txt").write_text("7,8,7")
    assert read_sensor_ids(tmp_path / "ids.txt") == ["7", "8", "9"]
    assert read_sensor_ids(tmp_path / "named.csv") == ["7", "8"]
    assert read_sensor_ids(tmp_path / "plain.csv") == ["S7", "S8"]
    with pytest.raises(UserError, match="repeated"):
        read_sensor_ids(tmp_path / "twice.txt")


# -- the edge list a graph is kept as ----------------------------------------------------------------------

def test_sparse_graph_from_row_blocks_matches_dense(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((37, 37)) < 0.15, rng.random((37, 37)), 0).astype(np.float32)
    whole = SparseGraph.from_dense(dense)
    blocks = SparseGraph.from_row_blocks(37, lambda a, b: dense[a:b], block_bytes=5 * 37 * 4)  # 5 rows a block
    assert whole.equals(blocks) and whole.num_edges == np.count_nonzero(dense)
    assert np.all(np.diff(whole.rows) >= 0)  # row-major, as the models' operators expect
    np.testing.assert_array_equal(whole.dense(), dense)
    np.testing.assert_array_equal(whole.dense_rows(10, 20), dense[10:20])
    edge_index, weight = whole.edge_index()
    assert edge_index.shape == (2, whole.num_edges) and weight.dtype == torch.float32
    assert torch.equal(edge_index[0], torch.from_numpy(np.nonzero(dense)[0]))


def test_native_file_graph_is_read_as_an_edge_list(tmp_path: Path) -> None:
    from stgnn_launch.data.readers.hdf5_native import read_native, write_series
    from stgnn_launch.data.series import Series

    n = 300  # the stored N x N is chunked by rows; the reader converts it block by block
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((n, n)) < 0.02, rng.random((n, n)), 0).astype(np.float32)
    series = Series(torch.rand(10, n, 1), np.arange(10).astype("datetime64[m]"), [str(i) for i in range(n)], dense)
    back = read_native(write_series(tmp_path / "s.h5", series))
    assert isinstance(back.graph, SparseGraph) and back.graph.equals(SparseGraph.from_dense(dense))
    np.testing.assert_array_equal(back.adjacency, dense)


def test_sparse_graph_refuses_bad_edges() -> None:
    with pytest.raises(UserError, match=r"graph edge list: expected node indices in \[0, 3\), found 0..3"):
        SparseGraph(np.array([0, 3]), np.array([1, 2]), np.array([1.0, 1.0]), 3)
    with pytest.raises(UserError, match="expected rows, cols and weights of one length"):
        SparseGraph(np.array([0, 1]), np.array([1]), np.array([1.0, 1.0]), 3)
