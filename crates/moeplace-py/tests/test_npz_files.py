"""NumPy archives moeplace writes load in numpy as docs/FORMATS.md describes."""

import json

import numpy as np


def test_numpy_reads_the_archive_moeplace_writes(cli, tmp_path):
    path = tmp_path / "t.npz"
    cli("synth", "--layers", "3", "--experts", "8", "--top-k", "2", "--requests", "4", "-o", path)
    z = np.load(path)
    ids = z["topk_ids"]
    assert ids.dtype == np.uint16 and ids.shape[1:] == (3, 2) and ids.max() < 8
    assert int(z["num_experts"]) == 8
    names = json.loads(z["request_names"].tobytes())
    assert len(names) == 4 and z["request_ids"].shape == (ids.shape[0],)
    # And back: the JSONL of the archive is the JSONL of the same synthetic trace.
    assert cli("convert", path, "-o", "-") == cli(
        "synth", "--layers", "3", "--experts", "8", "--top-k", "2", "--requests", "4", "-o", "-")
