"""Profiling on Ray: trace shards profiled in Ray tasks, partial statistics merged in
a tree. The result is the same bytes as one ``moeplace profile`` over every file.

Each task reads its shard itself, by path: on a cluster the paths must be readable
from every node (a shared file system, or object storage mounted on each node).
What moves between tasks is partial statistics only: each shard's task returns its
statistics file's bytes (their size is what ``Statistics.save`` writes for that
shard; it grows with layers x experts^2 for the pair tables and with the number of
requests for their vectors, not with the tokens), and each merge task receives
``fan_in`` of them and returns one.

Run it on a laptop's local Ray (``ray.init()`` starts one) or a cluster
(``ray.init(address="auto")`` on a node of a running cluster, or submit the script
with ``ray job submit -- python script.py``) unchanged::

    import ray, moeplace.ray
    ray.init(address="auto")
    stats = moeplace.ray.profile(sorted(glob.glob("/shared/traces/*.parquet")))
    stats.save("stats.json")
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import moeplace

__all__ = ["profile"]


def _shard(path: str, options: Dict[str, Any]) -> bytes:
    return moeplace.profile(path, **options).to_bytes()


def _merge(*parts: bytes) -> bytes:
    acc = moeplace.Statistics.from_bytes(parts[0])
    for p in parts[1:]:
        acc.merge(moeplace.Statistics.from_bytes(p))
    return acc.to_bytes()


def _input_paths(paths_or_dataset: Any) -> List[str]:
    if isinstance(paths_or_dataset, (str, os.PathLike)):
        return [os.fspath(paths_or_dataset)]
    files = getattr(paths_or_dataset, "input_files", None)
    if callable(files):  # a ray.data Dataset read from files
        out = list(files())
        if not out:
            raise ValueError("the dataset was not read from files; pass the trace paths")
        return out
    return [os.fspath(p) for p in paths_or_dataset]


def profile(
    paths_or_dataset: Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], Any],
    *,
    format: Optional[str] = None,
    experts: Optional[int] = None,
    top_k: Optional[int] = None,
    request_vectors: bool = True,
    token_sample: int = moeplace.DEFAULT_TOKEN_SAMPLE,
    fan_in: int = 4,
    num_cpus: float = 1,
    output: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> "moeplace.Statistics":
    """Profiles trace shards in Ray tasks and merges their statistics in a tree.

    Args:
        paths_or_dataset: trace paths (one task per path; any format ``moeplace.profile``
            reads, statistics files included), or a ``ray.data`` Dataset read from
            files (its ``input_files()`` are the shards).
        format, experts, top_k, request_vectors, token_sample: as
            ``moeplace.profile``.
        fan_in: partial statistics per merge task (at least 2).
        num_cpus: CPUs Ray reserves for each task.
        output: also save the merged statistics there.

    Returns:
        The merged ``Statistics``: the same bytes, once saved, as ``moeplace profile``
        over every path (statistics are sums, and merges are exact).

    Raises:
        ValueError: no path, a bad ``fan_in``, or a shard that cannot be read (the
            task's error names the file).
    """
    import ray

    paths = _input_paths(paths_or_dataset)
    if not paths:
        raise ValueError("no trace path given")
    if int(fan_in) < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in!r}")
    if not ray.is_initialized():
        ray.init()
    options = dict(
        format=format, experts=experts, top_k=top_k, request_vectors=request_vectors, token_sample=token_sample
    )
    shard = ray.remote(num_cpus=num_cpus)(_shard)
    merge = ray.remote(num_cpus=num_cpus)(_merge)
    level = [shard.remote(p, options) for p in paths]
    while len(level) > 1:
        level = [merge.remote(*level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    try:
        data = ray.get(level[0])
    except ray.exceptions.RayTaskError as e:
        cause = e.as_instanceof_cause()
        if isinstance(cause, ValueError):
            raise ValueError(str(cause).strip().splitlines()[-1]) from None
        raise
    stats = moeplace.Statistics.from_bytes(data)
    if output is not None:
        stats.save(output)
    return stats
