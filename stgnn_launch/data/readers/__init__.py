"""One entry point from any supported series file to a `Series`.

HDF5 files (our native layout or a pandas HDFStore frame) are read directly. CSV, NPY and NPZ files are
converted once into the native layout in a cache folder and read from there afterwards: parsing text
is slow, and the native file lets every later run (and every rank) read any time range cheaply.
A cache entry is named after the source's absolute path and keyed by a hash of its content (BLAKE2b of
every byte: an edit that keeps the size and modification time still counts) and the options that shape
the result; one entry is kept per source file. `CACHE_USED` says which entry a read used and whether it
was converted then or reused (the run's start-up block prints it).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import h5py

from stgnn_launch.data.readers.hdf5_native import Allocator, NativeWriter, is_native, native_shape, read_native, write_series
from stgnn_launch.data.readers.hdf5_pandas import is_pandas_hdf, open_hdf5, pandas_hdf_shape, read_pandas_hdf
from stgnn_launch.data.series import Series
from stgnn_launch.data.readers.tabular import DEFAULT_FREQ, DEFAULT_START, TableSource, array_source, collect, csv_source
from stgnn_launch.errors import UserError

HDF5_SUFFIXES = (".h5", ".hdf5")
CONVERTED_SUFFIXES = (".csv", ".npy", ".npz")
SERIES_SUFFIXES = HDF5_SUFFIXES + CONVERTED_SUFFIXES
_CACHE_VERSION = 1  # bump when a converter's output changes, so old cache entries are not reused


CACHE_USED: dict[str, tuple[str, str]] = {}  # source file -> (cache entry, "reused" | "converted now")


def content_hash(path: Path, block: int = 2**22) -> str:
    """BLAKE2b of the file's bytes (about 1 GB/s: a fraction of parsing the text it saves)."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """$STGNN_CACHE/converted, else ~/.cache/stgnn-launch/converted (the dataset config's convention)."""
    return Path(os.environ.get("STGNN_CACHE", Path.home() / ".cache" / "stgnn-launch")) / "converted"


def load_series(path: str | os.PathLike, *, key: str | None = None, start: str = DEFAULT_START,
                freq: str = DEFAULT_FREQ, axis_order: str = "TN", cache_dir: str | os.PathLike | None = None,
                time_range: tuple[int, int] | None = None, alloc: Allocator | None = None) -> Series:
    """Read a series file; CSV/NPY/NPZ go through the native-layout cache (converted on first use).

    `time_range` = (first, stop) reads only those steps (HDF5 reads just the chunks they touch); `alloc`
    gives the float32 array to read into (a shared-memory segment: no private copy first)."""
    path, native = _readable_file(path, key, start, freq, axis_order, cache_dir)
    first, stop = time_range if time_range is not None else (0, None)
    if native:
        return read_native(path, first, stop, alloc)
    return read_pandas_hdf(path, key, first, stop, alloc)


def series_shape(path: str | os.PathLike, *, key: str | None = None, start: str = DEFAULT_START,
                 freq: str = DEFAULT_FREQ, axis_order: str = "TN",
                 cache_dir: str | os.PathLike | None = None) -> tuple[int, int, int]:
    """T, N, F of a series file without reading its values."""
    path, native = _readable_file(path, key, start, freq, axis_order, cache_dir)
    return native_shape(path) if native else pandas_hdf_shape(path, key)


def series_num_steps(path: str | os.PathLike, **options) -> int:
    """T of a series file without reading its values."""
    return series_shape(path, **options)[0]


def _readable_file(path: str | os.PathLike, key: str | None, start: str, freq: str, axis_order: str,
                   cache_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """The HDF5 file to read (the source itself, or its native-layout cache entry) and whether it is native."""
    path = _series_file(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        native = _hdf5_kind(path) == "native"
        if native:
            _no_key(path, key)
        return path, native
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    options = _options(path, key, start, freq, axis_order)
    source_id = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    state = json.dumps([_CACHE_VERSION, content_hash(path), options], sort_keys=True)
    cached = root / f"{path.stem}-{source_id}-{hashlib.sha256(state.encode()).hexdigest()[:12]}.h5"
    if CACHE_USED.get(str(path.resolve())) != (str(cached), "converted now"):  # converted by this process stays so
        CACHE_USED[str(path.resolve())] = (str(cached), "reused" if cached.is_file() else "converted now")
    if not cached.is_file():
        convert_to_native(path, cached, key=key, start=start, freq=freq, axis_order=axis_order)
        for stale in root.glob(f"{glob.escape(path.stem)}-{source_id}-*.h5"):
            if stale != cached:
                stale.unlink(missing_ok=True)
    return cached, True


def read_series(path: str | os.PathLike, *, key: str | None = None, start: str = DEFAULT_START,
                freq: str = DEFAULT_FREQ, axis_order: str = "TN") -> Series:
    """Read any supported series file straight into memory, without the cache."""
    path = _series_file(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _read_hdf5(path, key)
    return collect(_source(path, key, start, freq, axis_order))


def convert_to_native(input: str | os.PathLike, out: str | os.PathLike, *, key: str | None = None,
                      start: str = DEFAULT_START, freq: str = DEFAULT_FREQ, axis_order: str = "TN") -> Path:
    """Write any supported series file in the native layout; atomic, so a failure leaves no `out`."""
    path, out = _series_file(input), Path(out)
    if out.suffix.lower() not in HDF5_SUFFIXES:
        raise UserError(f"output {out}: expected a name ending in {' or '.join(HDF5_SUFFIXES)}, "
                        f"found suffix {out.suffix!r}")
    if out.resolve() == path.resolve():
        raise UserError(f"output {out}: expected a file other than the input, found the input itself")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return write_series(out, _read_hdf5(path, key))
    source = _source(path, key, start, freq, axis_order)
    with NativeWriter(out, source.num_steps, source.sensor_ids, source.feature_names) as writer:
        for values, timestamps in source.blocks():
            writer.write(values, timestamps)
    return out


def _series_file(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    accepted = ", ".join(SERIES_SUFFIXES)
    if path.suffix.lower() not in SERIES_SUFFIXES:
        raise UserError(f"series file {path}: expected a name ending in one of {accepted}, "
                        f"found suffix {path.suffix!r}")
    if not path.is_file():
        raise UserError(f"series file {path}: expected an existing file ({accepted}), found nothing there")
    return path


def _read_hdf5(path: Path, key: str | None) -> Series:
    if _hdf5_kind(path) == "native":
        _no_key(path, key)
        return read_native(path)
    return read_pandas_hdf(path, key)


def _no_key(path: Path, key: str | None) -> None:
    """A native file holds one series: a key given for it is a mistake (another file meant), not a choice."""
    if key is not None:
        raise UserError(f"dataset.key (--key): expected null for {path}, a file in the stgnn-launch layout "
                        f"(one series, no keys), found {key!r}")


def _hdf5_kind(path: Path) -> str:
    """'native' or 'pandas'; anything else is refused with what the file holds."""
    with open_hdf5(path) as file:
        if is_native(file):
            return "native"
        if is_pandas_hdf(file):
            return "pandas"
        found = _top_level(file)
    raise UserError(f"{path}: expected an HDF5 series in the stgnn-launch layout or a pandas HDFStore "
                    f"frame, found top level {found}")


def _top_level(file: h5py.File) -> str:
    items = [f"{name} (group)" if isinstance(obj, h5py.Group) else f"{name} (dataset {obj.shape} {obj.dtype})"
             for name, obj in file.items()]
    return ", ".join(items) or "nothing"


def _source(path: Path, key: str | None, start: str, freq: str, axis_order: str) -> TableSource:
    if path.suffix.lower() == ".csv":
        return csv_source(path, start, freq)
    return array_source(path, key, axis_order, start, freq)


def _options(path: Path, key: str | None, start: str, freq: str, axis_order: str) -> dict[str, str | None]:
    """The options that change what a conversion of this kind of file produces."""
    options: dict[str, str | None] = {"start": start, "freq": freq}
    if path.suffix.lower() != ".csv":
        options["axis_order"] = str(axis_order).upper()
    if path.suffix.lower() == ".npz":
        options["key"] = key
    return options
