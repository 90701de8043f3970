"""Statistics from arrays equal the command line's; merges are exact; bad arrays raise."""

import json

import numpy as np
import pytest

import moeplace


def arrays(tokens=3000, layers=4, experts=16, k=2, seed=0):
    rng = np.random.default_rng(seed)
    # k distinct experts per token-layer, skewed towards low ids.
    scores = rng.random((tokens, layers, experts)) * np.linspace(2.0, 1.0, experts)
    topk = np.argsort(-scores, axis=2)[:, :, :k].astype(np.int64)
    requests = np.repeat(np.arange(tokens // 30), 30)
    families = requests % 4
    phases = (np.arange(tokens) % 30 >= 20).astype(np.int64)
    return topk, requests, families, phases


def test_from_topk_equals_the_cli_on_the_same_trace(tmp_path, cli):
    topk, req, fam, ph = arrays()
    np.savez(tmp_path / "t.npz", topk_ids=topk, num_experts=np.int64(16), request_ids=req, families=fam, phases=ph)
    cli("profile", tmp_path / "t.npz", "-o", tmp_path / "cli.json")
    s = moeplace.Statistics.from_topk(topk, num_experts=16, request_ids=req, families=fam, phases=ph)
    s.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert s == moeplace.Statistics.load(tmp_path / "cli.json")


def test_names_as_strings_equal_named_codes(tmp_path, cli):
    topk, req, fam, ph = arrays(tokens=600, seed=1)
    req_names = [f"req-{i}" for i in range(req.max() + 1)]
    fam_names = ["code", "math", "chat", "law"]
    np.savez(
        tmp_path / "t.npz",
        topk_ids=topk.astype(np.int32),
        num_experts=np.int64(16),
        request_ids=req,
        families=fam,
        phases=ph,
        request_names=np.frombuffer(json.dumps(req_names).encode(), np.uint8),
        family_names=np.frombuffer(json.dumps(fam_names).encode(), np.uint8),
    )
    cli("profile", tmp_path / "t.npz", "-o", tmp_path / "cli.json")
    s = moeplace.Statistics.from_topk(
        topk.astype(np.int32),
        num_experts=16,
        request_ids=np.array(req_names)[req],
        families=[fam_names[f] for f in fam],
        phases=np.where(ph == 0, "prefill", "decode"),
    )
    s.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert sorted(s.families) == sorted(fam_names)


def test_shards_merge_to_the_whole_and_files_round_trip(tmp_path):
    topk, req, fam, ph = arrays(seed=2)
    whole = moeplace.Statistics.from_topk(topk, num_experts=16, request_ids=req, families=fam, phases=ph)
    half = 1500  # a request boundary (30 tokens each)
    parts = [
        moeplace.Statistics.from_topk(topk[a:b], num_experts=16, request_ids=req[a:b], families=fam[a:b],
                                      phases=ph[a:b])
        for a, b in ((0, half), (half, len(req)))
    ]
    merged = moeplace.merge(parts)
    assert merged.to_bytes() == whole.to_bytes()
    assert moeplace.Statistics.from_bytes(whole.to_bytes()) == whole
    whole.save(tmp_path / "s.json")
    assert moeplace.Statistics.load(tmp_path / "s.json") == whole
    # Binary by default (any name but .json), JSON on request; both read back.
    whole.save(tmp_path / "s.stats")
    assert (tmp_path / "s.stats").read_bytes() == whole.to_bytes()
    assert (tmp_path / "s.stats").read_bytes().startswith(b"\x89moeplace-stats")
    assert (tmp_path / "s.json").read_bytes() == whole.to_bytes("json")
    assert moeplace.Statistics.load(tmp_path / "s.stats") == whole
    assert moeplace.Statistics.from_bytes(whole.to_bytes("json")) == whole
    whole.save(tmp_path / "forced.json", format="binary")
    assert (tmp_path / "forced.json").read_bytes() == whole.to_bytes()
    with pytest.raises(ValueError, match="expected one of binary, json"):
        whole.to_bytes("yaml")
    assert whole.tokens == 3000 and whole.shape == (4, 16, 2)
    assert whole.loads().sum() == 3000 * 4 * 2
    report = whole.report()
    assert isinstance(report, dict) and report["tokens"] == 3000


def test_read_trace_round_trips_through_from_topk(shared_data):
    path = shared_data / "sglang-granite" / "routing-trace.jsonl"
    d = moeplace.read_trace(path)
    assert d["topk_ids"].dtype == np.uint16 and d["topk_ids"].ndim == 3
    names = np.array(d["request_names"], dtype=object)
    fams = np.array(d["family_names"] + [None], dtype=object)
    phases = np.array(["prefill", "decode", None], dtype=object)
    s = moeplace.Statistics.from_topk(
        d["topk_ids"],
        num_experts=d["num_experts"],
        request_ids=names[d["request_ids"]],
        families=fams[d["families"]],
        phases=phases[d["phases"]],
        positions=d["positions"],
    )
    assert s.to_bytes() == moeplace.profile(path).to_bytes()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.astype(np.float32), "integers"),
        (lambda t: t[:, 0, :], "3-D"),
        (lambda t: np.where(t == 3, 16, t), r"topk_ids\[\d+, \d+, \d+\] = 16 is out of range"),
        (lambda t: np.where(t == 3, -1, t), "out of range"),
        (lambda t: np.concatenate([t[:, :, :1], t[:, :, :1]], axis=2), "appears twice"),
    ],
)
def test_bad_arrays_raise_value_error(change, message):
    topk, req, _, _ = arrays(tokens=300)
    with pytest.raises(ValueError, match=message):
        moeplace.Statistics.from_topk(change(topk), num_experts=16, request_ids=req)


def test_expert_count_and_layers_from_a_model_description(tmp_path):
    topk, req, _, _ = arrays(tokens=300)
    # 5 decoder layers, the first dense: the 4 MoE layers of the arrays are 1..4.
    config = {"num_hidden_layers": 5, "first_k_dense_replace": 1, "n_routed_experts": 16,
              "num_experts_per_tok": 2, "model_type": "deepseek_v3"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    a = moeplace.Statistics.from_topk(topk, model=tmp_path / "config.json", request_ids=req)
    b = moeplace.Statistics.from_topk(topk, model=config, request_ids=req)
    assert a == b
    p = moeplace.plan(a, "balance", gpus=4, slots_per_gpu=5)
    assert p.moe_layers == [1, 2, 3, 4] and p.hidden_layers == 5
    # The layer map survives a binary file.
    a.save(tmp_path / "s.bin")
    again = moeplace.plan(moeplace.Statistics.load(tmp_path / "s.bin"), "balance", gpus=4, slots_per_gpu=5)
    assert again.moe_layers == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="num_hidden_layers"):
        moeplace.Statistics.from_topk(topk, model={"n_routed_experts": 16, "num_experts_per_tok": 2})
    with pytest.raises(ValueError, match="num_experts"):
        moeplace.Statistics.from_topk(topk)


def test_from_topk_with_a_builtin_model_exports_its_decoder_layers():
    # DeepSeek-V2-Lite: 27 decoder layers, the first dense; 64 experts, top-6.
    rng = np.random.default_rng(3)
    topk = np.argsort(rng.random((200, 26, 64)), axis=2)[:, :, :6].astype(np.int64)
    s = moeplace.Statistics.from_topk(topk, model="deepseek-v2-lite")
    p = moeplace.plan(s, "balance", gpus=8, slots_per_gpu=8)
    assert p.moe_layers == list(range(1, 27)) and p.hidden_layers == 27
    rows = json.loads(p.export("sglang"))["physical_to_logical_map"]
    assert len(rows) == 27 and all(len(r) == 64 for r in rows)
    # A layer count the model does not have is refused before counting.
    with pytest.raises(ValueError, match="26|layers"):
        moeplace.Statistics.from_topk(topk[:, :25, :], model="deepseek-v2-lite")
    with pytest.raises(ValueError, match="is not a built-in model"):
        moeplace.Statistics.from_topk(topk, model="no-such-model")


def test_bad_columns_raise_value_error():
    topk, req, fam, ph = arrays(tokens=300)
    with pytest.raises(ValueError, match="entries for 300 tokens"):
        moeplace.Statistics.from_topk(topk, num_experts=16, request_ids=req[:-1])
    with pytest.raises(ValueError, match="phases"):
        moeplace.Statistics.from_topk(topk, num_experts=16, phases=ph + 1)
    with pytest.raises(ValueError, match="None"):
        moeplace.Statistics.from_topk(topk, num_experts=16, request_ids=[None] * 300)
    with pytest.raises(ValueError, match="top-k"):
        moeplace.Statistics.from_topk(topk, num_experts=1)
    with pytest.raises(ValueError):
        moeplace.Statistics.load("/nonexistent/stats.json")
    with pytest.raises(ValueError, match="malformed|not a moeplace|expected"):
        moeplace.Statistics.from_bytes(b"{not json")


@pytest.mark.parametrize("recording", [
    "vllm/eplb_load_stats.jsonl", "sglang/stat_mode.pt", "trtllm/stats_no_load_balancer"])
def test_engine_recordings_profile_as_the_cli_does(tmp_path, shared_data, cli, recording):
    path = shared_data / "engines" / recording
    cli("profile", path, "--top-k", "4", "-o", tmp_path / "cli.bin")
    s = moeplace.profile([path], top_k=4)
    assert s.shape == (4, 16, 4)
    assert s == moeplace.Statistics.load(tmp_path / "cli.bin")


def test_profile_with_a_model_carries_its_layer_map(tmp_path, shared_data, cli):
    # The engine files' model: 5 hidden layers, decoder layer 0 dense, 16 experts, top-4.
    config = {"num_hidden_layers": 5, "first_k_dense_replace": 1, "moe_layer_freq": 1,
              "n_routed_experts": 16, "num_experts_per_tok": 4, "model_type": "deepseek_v3"}
    path = shared_data / "engines" / "vllm" / "eplb_load_stats.jsonl"
    s = moeplace.profile([path], model=config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert s == moeplace.profile([path], model=tmp_path / "config.json")
    p = moeplace.plan(s, "balance", gpus=4, slots_per_gpu=5)
    assert p.moe_layers == [1, 2, 3, 4] and p.hidden_layers == 5
    with pytest.raises(ValueError, match="is not a built-in model"):
        moeplace.profile([path], model="no-such-model")
    with pytest.raises(ValueError, match="deepseek-v3"):
        moeplace.profile([path], model="deepseek-v3")
