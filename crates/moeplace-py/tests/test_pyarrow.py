"""Parquet traces and pyarrow: the docs/FORMATS.md example works, a table pyarrow
rewrites stays a moeplace trace, and a table with the documented columns alone
reads with the shape given on the command line."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def test_the_formats_example_reads_the_shape(cli, tmp_path):
    path = tmp_path / "trace.parquet"
    cli("synth", "--layers", "3", "--experts", "8", "--top-k", "2", "--requests", "4", "-o", path)
    # As in docs/FORMATS.md.
    t = pq.read_table(path)
    m = t.schema.metadata
    L, k = int(m[b"moeplace.layers"]), int(m[b"moeplace.top_k"])
    ids = np.frombuffer(t["experts"].combine_chunks().buffers()[1], np.uint8).reshape(-1, L, k)
    assert (L, k) == (3, 2) and ids.shape[0] == t.num_rows and ids.max() < 8
    # Rewritten by pyarrow, the file is still a moeplace trace of the same tokens.
    again = tmp_path / "again.parquet"
    pq.write_table(t, again)
    assert cli("convert", again, "-o", "-") == cli("convert", path, "-o", "-")


def test_documented_columns_alone_need_the_shape(cli, tmp_path):
    n = 6
    picks = np.array([[0, 1, 2, 3], [4, 5, 6, 7]] * (n // 2), dtype=np.uint16)
    table = pa.table({
        "request": ["a"] * 3 + ["b"] * 3,
        "family": ["law"] * 3 + ["code"] * 3,
        "position": pa.array([0, 1, 2] * 2, pa.uint32()),
        "experts": pa.FixedSizeListArray.from_arrays(pa.array(picks.ravel(), pa.uint16()), 4),
    })
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path)
    report = json.loads(cli("profile", path, "--experts", "8", "--top-k", "2", "--json"))
    assert (report["tokens"], report["layers"], report["experts"], report["top_k"]) == (6, 2, 8, 2)
    assert report["families"] == {"law": 3, "code": 3}
