"""moeplace: expert placement for Mixture-of-Experts serving, from routing traces.

The same engine as the ``moeplace`` command line, callable from a serving engine,
a notebook or a cluster job:

- ``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)``:
  a drop-in for DeepSeek EPLB's function (``method="eplb"`` is EPLB's own plan,
  ``method="balance"`` moeplace's better balanced one).
- ``Statistics``: mergeable statistics of routing traces, from top-k arrays
  (``Statistics.from_topk``) or trace files (``profile``); ``merge``, ``save``,
  ``load``, ``report()``.
- ``read_trace``: any supported trace file as NumPy arrays.
- ``plan(stats, placer, gpus=..., ...)``: a placement by any placer (``placers()``
  lists them with their parameters); ``Plan.export(engine)`` for SGLang, vLLM,
  TensorRT-LLM or DeepSeek EPLB; ``evaluate(trace, plan)`` replays held-out traffic.
- ``Dispatcher(plan, "nearest").dispatch(layer, topk_ids, homes)``: physical slot
  ids for a batch, vectorised; ``Router``: decode-worker choice (ELDR and baselines).
- ``moeplace.ray.profile(paths)``: profile trace shards in Ray tasks.

Arrays are NumPy arrays; torch CPU tensors are accepted where noted and answered
with torch tensors. Bad input (wrong dtype or rank, ids out of range, NaN loads)
raises ``ValueError`` with a message that says what and where.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _moeplace as _native

__all__ = [
    "DEFAULT_TOKEN_SAMPLE",
    "DISPATCHERS",
    "TRACE_FORMATS",
    "Dispatcher",
    "Plan",
    "Router",
    "Statistics",
    "evaluate",
    "merge",
    "placers",
    "plan",
    "profile",
    "read_trace",
    "rebalance_experts",
]

DEFAULT_TOKEN_SAMPLE: int = _native.DEFAULT_TOKEN_SAMPLE
TRACE_FORMATS: List[str] = list(_native.TRACE_FORMATS)
DISPATCHERS: List[str] = list(_native.DISPATCHERS)

PathLike = Union[str, "os.PathLike[str]"]
ArrayLike = Any


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _numpy(x: Any, name: str) -> np.ndarray:
    """A NumPy view of an array or torch CPU tensor (no copy when possible)."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; pass a CPU tensor")
        return x.detach().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and other non-arrays
        raise ValueError(f"{name} is not an array: {e}") from None


def _checked(x: Any, name: str, kinds: str, ndim: int, dims: str) -> np.ndarray:
    """A NumPy view of ``x`` after checking its dtype kind and rank."""
    a = _numpy(x, name)
    if a.dtype.kind not in kinds:
        what = "integers" if kinds == "iu" else "real or integer numbers"
        raise ValueError(f"{name} must hold {what}, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {dims}, got shape {tuple(a.shape)}")
    return a


def _ints(x: Any, name: str, ndim: int, dims: str, dtype: Any = np.int64) -> np.ndarray:
    a = _checked(x, name, "iu", ndim, dims)
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values beyond int64")
    return np.ascontiguousarray(a, dtype=dtype)


def _paths(paths: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def rebalance_experts(
    weight: ArrayLike,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    method: str = "balance",
) -> Tuple[Any, Any, Any]:
    """Expert replicas and their placement, as DeepSeek EPLB's ``rebalance_experts``.

    A drop-in for ``eplb.rebalance_experts`` (and the copies of it in vLLM and
    SGLang): same arguments, same return values.

    Args:
        weight: expert loads ``[layers, experts]``, any real or integer dtype;
            a NumPy array or a torch CPU tensor.
        num_replicas: physical expert slots per layer (experts + redundant ones),
            a multiple of ``num_gpus``.
        num_groups: expert groups (contiguous ids); when it divides by
            ``num_nodes`` the hierarchical policy packs groups onto nodes.
        num_nodes: server nodes.
        num_gpus: GPUs over all nodes.
        method: ``"eplb"`` gives EPLB's own plan exactly (the same tie-breaks;
            like EPLB, it may put two copies of an expert on one GPU);
            ``"balance"`` (default) moeplace's ``balance`` placer: starts from
            EPLB's plan and lowers the hottest GPU's load, never two copies of an
            expert on one GPU.

    Returns:
        ``(phy2log, log2phy, logcnt)``, int64: ``phy2log[layers, num_replicas]``
        the expert in each slot; ``log2phy[layers, experts, num_replicas -
        experts + 1]`` each expert's slots, padded with -1; ``logcnt[layers,
        experts]`` each expert's copy count. Torch tensors when ``weight`` was a
        torch tensor, NumPy arrays otherwise.

    Raises:
        ValueError: a weight that is not 2-D, not numeric, negative, NaN or
            infinite, or sizes that do not fit (the message says which).

    Example:
        >>> import numpy as np, moeplace
        >>> w = np.array([[90, 132, 40, 61], [20, 107, 104, 64]])
        >>> phy2log, log2phy, logcnt = moeplace.rebalance_experts(w, 6, 1, 1, 2)
    """
    torch_in = _is_torch(weight)
    w = np.ascontiguousarray(_checked(weight, "weight", "iuf", 2, "[layers, experts]"), dtype=np.float64)
    for name, v in (("num_replicas", num_replicas), ("num_groups", num_groups), ("num_nodes", num_nodes),
                    ("num_gpus", num_gpus)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    phy2log, log2phy, logcnt = _native.rebalance_experts(
        w, int(num_replicas), int(num_groups), int(num_nodes), int(num_gpus), method
    )
    width = int(num_replicas) - w.shape[1] + 1
    if log2phy.shape[2] < width:
        pad = np.full(log2phy.shape[:2] + (width - log2phy.shape[2],), -1, dtype=np.int64)
        log2phy = np.concatenate([log2phy, pad], axis=2)
    if torch_in:
        import torch

        return torch.from_numpy(phy2log), torch.from_numpy(log2phy), torch.from_numpy(logcnt)
    return phy2log, log2phy, logcnt


def _codes(values: Any, name: str, allow_none: bool) -> Tuple[Optional[np.ndarray], Optional[List[str]]]:
    """Integer codes as they are, or names turned into codes and a name list."""
    if values is None:
        return None, None
    a = _numpy(values, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [tokens], got shape {tuple(a.shape)}")
    if a.dtype.kind in "iu":
        return _ints(a, name, 1, "[tokens]"), None
    if a.dtype.kind not in "UO":
        raise ValueError(f"{name} must hold integer codes or strings, got dtype {a.dtype}")
    index: Dict[str, int] = {}
    codes = np.empty(len(a), dtype=np.int64)
    for i, v in enumerate(a.tolist()):
        if v is None:
            if not allow_none:
                raise ValueError(f"{name}[{i}] is None; every token needs one")
            codes[i] = -1
        elif isinstance(v, str):
            codes[i] = index.setdefault(v, len(index))
        else:
            raise ValueError(f"{name}[{i}] = {v!r} is not a string")
    return codes, list(index)


def _phase_codes(phases: Any) -> Optional[np.ndarray]:
    if phases is None:
        return None
    a = _numpy(phases, "phases")
    if a.dtype.kind in "iu":
        return _ints(a, "phases", 1, "[tokens]")
    codes, names = _codes(a, "phases", allow_none=True)
    lookup = {"prefill": 0, "decode": 1}
    table = []
    for n in names or []:
        if n.lower() not in lookup:
            raise ValueError(f"phases: {n!r} is not 'prefill', 'decode' or None")
        table.append(lookup[n.lower()])
    table_arr = np.array(table + [-1], dtype=np.int64)
    return table_arr[codes]


class Statistics:
    """Mergeable statistics of routing traces, per (family, phase) group and layer:
    tokens, expert loads, co-activation pairs, layer-to-layer transitions, per-request
    activation vectors and a sample of whole token paths.

    Statistics are sums: statistics of shards merged equal the statistics of
    everything at once, to the byte in the saved file.

    Make them with ``Statistics.from_topk`` (arrays), ``moeplace.profile`` (trace
    files) or ``Statistics.load`` (a file from ``moeplace profile -o`` or ``save``).
    """

    def __init__(self, native: Any) -> None:
        self._s = native

    @classmethod
    def from_topk(
        cls,
        topk_ids: ArrayLike,
        *,
        num_experts: Optional[int] = None,
        model: Any = None,
        request_ids: Optional[ArrayLike] = None,
        families: Optional[ArrayLike] = None,
        phases: Optional[ArrayLike] = None,
        positions: Optional[ArrayLike] = None,
        request_vectors: bool = True,
        token_sample: int = DEFAULT_TOKEN_SAMPLE,
    ) -> "Statistics":
        """Statistics of top-k expert ids you already hold.

        Args:
            topk_ids: ``[tokens, layers, k]`` integer expert ids (NumPy or torch CPU),
                each below ``num_experts``, distinct within a token's layer.
            num_experts: routed experts per layer (default: the model's).
            model: the model the ids come from: a built-in name (``"deepseek-v3"``,
                ``"deepseek-v2-lite"``, ...) or its Hugging Face ``config.json`` (a path or
                the loaded dict), as ``moeplace profile --model`` / ``--model-config``.
                The arrays must have its MoE layer count, experts and top-k; the
                statistics (and plans and exports made from them) carry its layer
                map (the decoder layer of each MoE layer).
            request_ids: ``[tokens]`` request of each token: integer codes (request
                ``r<code>``) or strings. Default: one request.
            families: ``[tokens]`` task family: integer codes (family ``f<code>``,
                negative for none) or strings (None for none).
            phases: ``[tokens]`` 0 / "prefill", 1 / "decode", negative / None.
            positions: ``[tokens]`` position in the request (default: the index of
                the token among its request's tokens).
            request_vectors: keep per-request activation vectors (memory grows with
                the number of requests).
            token_sample: tokens of the sample of whole token paths (0: none).

        The result equals ``moeplace profile`` of a NumPy trace (``np.savez``) of the
        same arrays: integer codes name requests and families as that format does.

        Raises:
            ValueError: wrong dtype or rank, ids out of range or repeated in a
                token's layer, columns of another length (the message names the
                token), arrays whose shape is not the model's.
        """
        ids = _ints(topk_ids, "topk_ids", 3, "[tokens, layers, k]")
        if num_experts is None and model is None:
            raise ValueError("give num_experts=E, or model= (a built-in model name or a config.json)")
        name, config = _model_args(model)
        req, req_names = _codes(request_ids, "request_ids", allow_none=False)
        fam, fam_names = _codes(families, "families", allow_none=True)
        pos = None if positions is None else _ints(positions, "positions", 1, "[tokens]")
        native = _native.Statistics.from_topk(
            ids,
            None if num_experts is None else int(num_experts),
            request_ids=req,
            request_names=req_names,
            families=fam,
            family_names=fam_names,
            phases=_phase_codes(phases),
            positions=pos,
            request_vectors=bool(request_vectors),
            token_sample=int(token_sample),
            model=name,
            model_config=config,
        )
        return cls(native)

    @classmethod
    def load(cls, path: PathLike) -> "Statistics":
        """Reads a statistics file (``moeplace profile -o``, ``save``), binary or JSON."""
        return cls(_native.Statistics.load(os.fspath(path)))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Statistics":
        """Statistics from a statistics file's bytes (``to_bytes``), binary or JSON."""
        return cls(_native.Statistics.from_bytes(bytes(data)))

    def save(self, path: PathLike, format: Optional[str] = None) -> None:
        """Writes the statistics file; it appears only when complete.

        Compact binary by default; JSON (to look inside) for a ``.json`` name or
        ``format="json"``; ``format="binary"`` forces binary whatever the name.
        """
        self._s.save(os.fspath(path), format)

    def to_bytes(self, format: str = "binary") -> bytes:
        """The statistics file's bytes: ``"binary"`` (default) or ``"json"``."""
        return bytes(self._s.to_bytes(format))

    def merge(self, other: "Statistics") -> "Statistics":
        """Adds ``other`` into these statistics (in place; returns self)."""
        self._s.merge(other._s)
        return self

    def copy(self) -> "Statistics":
        return Statistics(self._s.copy())

    def report(self) -> Dict[str, Any]:
        """The profile report as a dict (``moeplace profile --json``): load skew,
        entropy, family divergence, co-activation, generic experts, prefill/decode
        correlation, per layer and summarised."""
        return json.loads(self._s.report_json())

    def loads(self) -> np.ndarray:
        """Picks per (layer, expert) over all tokens, uint64 ``[layers, experts]``."""
        return self._s.loads()

    @property
    def shape(self) -> Tuple[int, int, int]:
        """``(layers, experts, top_k)``."""
        return tuple(self._s.shape)  # type: ignore[return-value]

    @property
    def tokens(self) -> int:
        return int(self._s.tokens)

    @property
    def families(self) -> List[str]:
        return list(self._s.families)

    @property
    def requests(self) -> List[str]:
        return list(self._s.requests)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Statistics) and self._s == other._s

    def __repr__(self) -> str:
        return repr(self._s)


def _model_args(model: Any) -> Tuple[Optional[str], Optional[str]]:
    """(built-in name, config.json text) of a ``model=`` argument."""
    if model is None:
        return None, None
    if isinstance(model, Mapping):
        return None, json.dumps(model)
    if isinstance(model, os.PathLike) or (isinstance(model, str) and os.path.exists(model)):
        try:
            with open(model) as f:
                return None, f.read()
        except OSError as e:
            raise ValueError(f"model: {os.fspath(model)}: {e}") from None
    if isinstance(model, str):
        return model, None
    raise ValueError("model must be a built-in model name or a Hugging Face config.json (path or dict)")


def profile(
    paths: Union[PathLike, Sequence[PathLike]],
    *,
    format: Optional[str] = None,
    experts: Optional[int] = None,
    top_k: Optional[int] = None,
    request_vectors: bool = True,
    token_sample: int = DEFAULT_TOKEN_SAMPLE,
    model: Any = None,
) -> Statistics:
    """Statistics of trace files, statistics files and engine counts, added up
    (``moeplace profile``).

    Args:
        paths: one path or several. Traces (JSONL, Parquet, NPZ, an ESFT log folder,
            an SGLang trace), statistics files, or engine counts (an SGLang
            ``logical_count`` JSON file, a TensorRT-LLM statistics folder; loads only,
            give ``top_k``).
        format: force a trace format (one of ``TRACE_FORMATS``) instead of
            detecting it from the path.
        experts: experts per layer, for formats that do not record it.
        top_k: experts per token, for formats that do not record it.
        request_vectors: keep per-request activation vectors.
        token_sample: tokens of the sample of whole token paths (0: none).
        model: the model the inputs belong to: a built-in name (``"deepseek-v3"``)
            or its Hugging Face ``config.json`` (a path or a dict). Inputs of another
            shape are refused; the statistics (and plans made from them) carry its
            layer map (the decoder layer of each MoE layer); it gives ``top_k``.

    Raises:
        ValueError: an unreadable or malformed input (the message names the file
            and the line, row or part), an input that is not the model's.
    """
    name, config = _model_args(model)
    return Statistics(
        _native.profile(
            _paths(paths),
            model=name,
            model_config=config,
            format=format,
            experts=experts,
            top_k=top_k,
            request_vectors=bool(request_vectors),
            token_sample=int(token_sample),
        )
    )


def merge(stats: Sequence[Statistics]) -> Statistics:
    """The sum of several statistics (a new object; the inputs are unchanged)."""
    if not stats:
        raise ValueError("merge needs at least one Statistics")
    out = stats[0].copy()
    for s in stats[1:]:
        out.merge(s)
    return out


def read_trace(
    path: PathLike, *, format: Optional[str] = None, experts: Optional[int] = None, top_k: Optional[int] = None
) -> Dict[str, Any]:
    """A whole trace file (any format ``profile`` reads) as NumPy arrays.

    Returns a dict: ``topk_ids`` (uint16 ``[tokens, layers, k]``), ``num_experts``,
    ``request_ids`` (int64 codes into ``request_names``), ``families`` (int64 codes
    into ``family_names``, -1 for none), ``phases`` (int8: 0 prefill, 1 decode, -1
    none), ``positions`` (uint32), ``gate_weights`` (float32, or None). The arrays
    fit ``Statistics.from_topk`` (pass the names as strings:
    ``np.array(d["request_names"])[d["request_ids"]]``).
    """
    return _native.read_trace(os.fspath(path), format=format, experts=experts, top_k=top_k)


class Plan:
    """A plan: per MoE layer the expert in each physical slot, the GPUs and nodes,
    optionally where each task family is served, and provenance (placer,
    parameters, seed, a digest of the statistics). The plan file of ``moeplace
    plan``; ``to_dict()`` gives every field of the file."""

    def __init__(self, native: Any) -> None:
        self._p = native

    @classmethod
    def load(cls, path: PathLike) -> "Plan":
        """Reads and validates a plan file."""
        return cls(_native.Plan.load(os.fspath(path)))

    def save(self, path: PathLike) -> None:
        """Writes the plan file (byte-identical for the same inputs and seed)."""
        self._p.save(os.fspath(path))

    def to_json(self) -> str:
        return self._p.to_json()

    def to_dict(self) -> Dict[str, Any]:
        """Every field of the plan file."""
        return json.loads(self._p.to_json())

    def export(self, engine: str, path: Optional[PathLike] = None) -> str:
        """The plan in a serving engine's format: ``"sglang"`` (``--init-expert-
        location`` JSON), ``"vllm"`` (static EPLB mapping JSONL), ``"trtllm"`` (MoE
        load-balancer YAML), ``"vllm-map"`` (vLLM's physical-to-logical map JSON) or
        ``"eplb"`` (DeepSeek's phy2log/log2phy/logcnt JSON), each at the engine's own
        layer numbering from the plan's layer map (``moe_layers``). Returns the text
        and, with ``path``, writes it there."""
        return self._p.export(engine, None if path is None else os.fspath(path))

    @property
    def physical_to_logical_map(self) -> np.ndarray:
        """int64 ``[layers, slots]``: the expert in each slot."""
        return self._p.physical_to_logical_map

    @property
    def slot_gpus(self) -> np.ndarray:
        """int64 ``[slots]``: the GPU owning each slot (GPU g owns [g*S/G, (g+1)*S/G))."""
        return self._p.slot_gpus

    num_gpus = property(lambda self: self._p.num_gpus)
    num_nodes = property(lambda self: self._p.num_nodes)
    num_slots = property(lambda self: self._p.num_slots)
    num_experts = property(lambda self: self._p.num_experts)
    num_layers = property(lambda self: self._p.num_layers)
    family_gpus = property(lambda self: self._p.family_gpus)
    notes = property(lambda self: self._p.notes)
    placer = property(lambda self: self._p.placer)
    serving = property(
        lambda self: self._p.serving,
        doc="How the plan is served: ``{'dispatcher', 'parameters', 'homes'}``; "
        "``Dispatcher(plan)`` and ``evaluate`` serve so unless told otherwise.",
    )
    hidden_layers = property(
        lambda self: self._p.hidden_layers, doc="The model's hidden-layer (decoder-layer) count."
    )
    moe_layers = property(
        lambda self: self._p.moe_layers, doc="The decoder-layer index of each row of the placement."
    )
    layer_source = property(
        lambda self: self._p.layer_source,
        doc='Where the layer map came from: "input", "model" or "default".',
    )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._p == other._p

    def __repr__(self) -> str:
        return repr(self._p)


def placers() -> List[Dict[str, Any]]:
    """Every placer: ``name``, ``about``, ``serving`` (how its plans are served),
    ``presets`` (``name``, ``about``, ``settings``; ``plan(..., preset=name)``) and
    ``params`` (``name``, ``default``, ``about``, ``level``: stable or
    experimental; ``plan(..., params={name: value})`` sets them), from the placers'
    own declarations."""
    return [
        {
            "name": p["name"],
            "about": p["about"],
            "serving": p["serving"],
            "presets": [{"name": n, "about": a, "settings": s} for (n, a, s) in p["presets"]],
            "params": [{"name": n, "default": d, "about": a, "level": lv} for (n, d, a, lv) in p["params"]],
        }
        for p in _native.placers()
    ]


def plan(
    stats: Statistics,
    placer: str,
    *,
    gpus: int,
    nodes: int = 1,
    slots_per_gpu: Optional[int] = None,
    slots: Optional[int] = None,
    params: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    previous: Optional[Plan] = None,
    family_shares: Optional[Mapping[str, float]] = None,
    preset: Optional[str] = None,
    machine: Optional[str] = None,
    cluster: Optional[PathLike] = None,
) -> Plan:
    """Places experts (and replicas) with a placer, as ``moeplace plan`` does.

    Args:
        stats: calibration statistics (``profile``, ``Statistics.from_topk``, ``load``).
        placer: a placer name; ``[p["name"] for p in moeplace.placers()]`` lists
            them: ``linear``, ``round-robin``, ``eplb``, ``balance``, ``coact``,
            ``tacg``, ``tacg+gesr``, ``cluster-homes``, ``grace``.
        gpus: GPUs (expert-parallel size).
        nodes: nodes the GPUs are spread over.
        slots_per_gpu: expert slots per GPU per layer; redundant slots =
            ``gpus * slots_per_gpu - experts``. Default: no redundant slots.
        slots: slots per layer over all GPUs, when they do not divide evenly.
        params: placer parameters, e.g. ``{"groups": 8}`` for ``eplb``/``balance``,
            ``{"robust": 0.75}`` for ``tacg+gesr``; ``placers()`` documents each
            with its default. Unknown names are refused.
        seed: seed of placers that draw random numbers.
        previous: the deployed plan, for placers that limit expert moves
            (``balance`` with ``move_slack``; ``coact``/``tacg``/``tacg+gesr`` with
            ``stay``).
        family_shares: plan for another family mix, ``{family: share of tokens}``.
        preset: a named operating point of the placer (``placers()`` lists each
            placer's ``presets``, e.g. ``"min-remote-nodes"`` or ``"shift-robust"``
            for ``tacg+gesr``): placer and serving parameters set together;
            ``params`` given as well win over it.
        machine: link figures of a named machine (``h100``, ``a100-eth``).
        cluster: a cluster TOML file instead of the layout arguments' defaults
            (its layout must match them).

    Returns:
        A ``Plan`` (byte-identical to ``moeplace plan``'s for the same inputs).

    Raises:
        ValueError: an unknown placer or parameter, a cluster that cannot hold the
            model, or a placer's own refusal (the message says why).

    Example:
        >>> stats = moeplace.profile("calib.parquet")
        >>> p = moeplace.plan(stats, "tacg+gesr", gpus=16, nodes=4, slots_per_gpu=5)
        >>> p.export("sglang", "expert-location.json")
    """
    return Plan(
        _native.plan(
            stats._s,
            placer,
            int(gpus),
            nodes=int(nodes),
            slots_per_gpu=slots_per_gpu,
            slots=slots,
            params={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items()},
            seed=int(seed),
            previous=None if previous is None else previous._p,
            family_shares=None if family_shares is None else {str(k): float(v) for k, v in family_shares.items()},
            preset=preset,
            machine=machine,
            cluster=None if cluster is None else os.fspath(cluster),
        )
    )


def _placer_reference() -> str:
    """Every placer's presets and parameters, printed from their declarations (the
    same tables as docs/PARAMETERS.md), for ``help(moeplace.plan)``."""
    out = ["", "Placers, their presets and parameters:", ""]
    for p in placers():
        out.append(f"{p['name']}: {p['about']} (served with {p['serving']})")
        for pr in p["presets"]:
            out.append(f"    preset {pr['name']}: {pr['about']} ({pr['settings']})")
        for q in p["params"]:
            mark = " [experimental]" if q["level"] == "experimental" else ""
            out.append(f"    {q['name']}={q['default']}{mark}: {q['about']}")
    return "\n".join(out) + "\n"


if plan.__doc__ is not None:
    plan.__doc__ += _placer_reference()


def evaluate(
    trace: Union[PathLike, Sequence[PathLike]],
    plan: Plan,
    *,
    dispatcher: Optional[str] = None,
    dispatcher_params: Optional[Mapping[str, Any]] = None,
    homes: Optional[Union[str, Mapping[str, int]]] = None,
    seed: int = 0,
    format: Optional[str] = None,
    experts: Optional[int] = None,
    top_k: Optional[int] = None,
    machine: Optional[str] = None,
    cluster: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Replays held-out trace files against a plan (``moeplace eval``).

    Args:
        trace: trace file(s), read as ``profile`` reads them.
        plan: the plan.
        dispatcher: the replica choice per pick, one of ``DISPATCHERS``
            (``primary``, ``random``, ``nearest``, ``grace``, ``gesr``); by default
            the one the plan names (its ``serving``, the dispatcher its placer was
            made for; ``nearest`` for plans that name none).
        dispatcher_params: the dispatcher's parameters on top of the plan's (e.g.
            ``{"theta": 1.5, "free_first": True}`` for ``gesr``).
        homes: ``"round-robin"`` (requests dealt over all GPUs), ``"family"`` (the
            plan's ``family_gpus``) or ``{request: gpu}``; by default what the
            plan's serving says.
        seed: seed of the ``random`` dispatcher.
        machine, cluster: link figures for the time estimates.

    Returns:
        The metrics as a dict: ``remote_gpus``, ``remote_nodes``,
        ``cross_node_gpus``, ``remote_hops`` (per token-layer), ``bytes``,
        ``jain``, ``balancedness`` (SGLang's), ``balancedness_vllm``, ``maxvio``,
        ``home_max_over_mean``, the time estimates, ``counts``, per-layer
        ``layers`` (loads per GPU and more) and ``serving`` (how the plan was served).
    """
    h = homes if homes is None or isinstance(homes, str) else None
    rh = None if homes is None or isinstance(homes, str) else {str(k): int(v) for k, v in homes.items()}
    dp = None
    if dispatcher_params is not None:
        dp = {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in dispatcher_params.items()}
    text = _native.evaluate(
        _paths(trace),
        plan._p,
        dispatcher=dispatcher,
        dispatcher_params=dp,
        homes=h,
        request_homes=rh,
        seed=int(seed),
        format=format,
        experts=experts,
        top_k=top_k,
        machine=machine,
        cluster=None if cluster is None else os.fspath(cluster),
    )
    return json.loads(text)


class Dispatcher:
    """The serving-time replica choice of a plan, for a batch at a time.

    ``dispatch(layer, topk_ids, homes)`` maps the top-k expert ids of one MoE layer
    (``[tokens, k]``) and each token's home rank (``[tokens]``, the GPU running its
    attention) to physical slot ids (``[tokens, k]``) in one call, without Python
    loops. It makes the choices ``evaluate`` replays with the same dispatcher: tokens
    in order, the load signal counting this batch's picks from zero.

    Args:
        plan: the plan being served.
        dispatcher: ``primary`` (first copy), ``random`` (seeded by ``seed`` and
            the token's index in the batch), ``nearest`` (home GPU, a GPU the token
            already sends to, the home node, ..., least loaded), ``grace``, ``gesr``
            (the ``tacg+gesr`` plans' own rule); by default the one the plan names
            (its ``serving``, with its parameters).
        seed: seed of ``random``.

    Slot s is on GPU ``plan.slot_gpus[s]``; engines that index experts by physical
    id (SGLang, vLLM) take the slot ids as they are.
    """

    def __init__(self, plan: Plan, dispatcher: Optional[str] = None, seed: int = 0) -> None:
        self._d = _native.Dispatcher(plan._p, dispatcher, int(seed))

    @property
    def name(self) -> str:
        return self._d.name

    def dispatch(self, layer: int, topk_ids: ArrayLike, homes: Union[int, ArrayLike]) -> Any:
        """Slot ids (int64 ``[tokens, k]``; a torch tensor for torch input) for
        ``topk_ids`` (int32 or int64 ``[tokens, k]``) of MoE layer ``layer``; ``homes``
        is an int (every token) or ``[tokens]`` ranks.

        Raises:
            ValueError: wrong dtype or rank, an id or home out of range (the message
                names the token), a layer the plan does not have.
        """
        torch_in = _is_torch(topk_ids)
        ids = _checked(topk_ids, "topk_ids", "iu", 2, "[tokens, k]")
        if ids.dtype not in (np.int32, np.int64):
            ids = ids.astype(np.int64)
        if isinstance(homes, (int, np.integer)):
            h = np.full(ids.shape[0], int(homes), dtype=np.int64)
        else:
            h = _checked(homes, "homes", "iu", 1, "[tokens]")
            if h.dtype not in (np.int32, np.int64):
                h = h.astype(np.int64)
        if int(layer) != layer or layer < 0:
            raise ValueError(f"layer must be a non-negative integer, got {layer!r}")
        out = self._d.dispatch(int(layer), ids, h)
        if torch_in:
            import torch

            return torch.from_numpy(out)
        return out


class Router:
    """A decode router: after prefill, each request goes to one decode worker.

    ``Router("round-robin" | "jsq" | "random", workers, seed=0)`` are the baselines;
    ``Router.eldr(centroids, tau)`` and ``Router.fit_eldr(signatures, workers, tau)``
    are ELDR: cosine similarity of the request's signature to each worker's centroid,
    the band within ``tau`` of the best, its least-loaded worker.
    """

    def __init__(self, kind: str, workers: int, seed: int = 0, *, _native_router: Any = None) -> None:
        self._r = _native_router if _native_router is not None else _native.Router(kind, int(workers), int(seed))

    @classmethod
    def eldr(cls, centroids: ArrayLike, tau: float) -> "Router":
        """ELDR from ``[workers, dims]`` centroids (L2-normalised here)."""
        c = np.ascontiguousarray(_numpy(centroids, "centroids"), dtype=np.float32)
        return cls("eldr", c.shape[0] if c.ndim else 0, _native_router=_native.Router.eldr(c, float(tau)))

    @classmethod
    def fit_eldr(
        cls, signatures: ArrayLike, workers: int, tau: float, *, balanced: bool = True, seed: int = 0
    ) -> "Router":
        """ELDR with centroids from (size-balanced) K-means over calibration
        signatures ``[requests, dims]`` (e.g. IDF-weighted prefill expert counts)."""
        s = np.ascontiguousarray(_numpy(signatures, "signatures"), dtype=np.float32)
        r = _native.Router.fit_eldr(s, int(workers), float(tau), bool(balanced), int(seed))
        return cls("eldr", int(workers), _native_router=r)

    @property
    def name(self) -> str:
        return self._r.name

    @property
    def workers(self) -> int:
        return self._r.workers

    def route(self, signatures: ArrayLike, loads: ArrayLike) -> np.ndarray:
        """Workers (int64 ``[requests]``) for requests in order: ``signatures``
        ``[requests, dims]`` (float; baselines ignore them, pass ``[requests, 0]``),
        ``loads`` ``[workers]`` the workers' loads before the first; each choice adds
        one to its worker's load."""
        s = np.ascontiguousarray(_checked(signatures, "signatures", "iuf", 2, "[requests, dims]"), dtype=np.float32)
        return self._r.route(s, _ints(loads, "loads", 1, "[workers]"))
