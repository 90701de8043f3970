"""plan() with every placer, byte-identical to `moeplace plan`; exports; evaluate."""

import numpy as np
import pytest

import moeplace
from test_stats import arrays


@pytest.fixture(scope="module")
def stats():
    topk, req, fam, ph = arrays(tokens=3000, layers=4, experts=16, k=2, seed=3)
    return moeplace.Statistics.from_topk(topk, num_experts=16, request_ids=req, families=fam, phases=ph)


def test_every_placer_plans_a_valid_placement(stats):
    names = [p["name"] for p in moeplace.placers()]
    assert {"linear", "eplb", "balance", "tacg+gesr", "grace"} <= set(names)
    for name in names:
        p = moeplace.plan(stats, name, gpus=4, nodes=2, slots_per_gpu=5)
        m = p.physical_to_logical_map
        assert m.shape == (4, 20) and p.placer == name
        for layer in m:
            assert set(layer) == set(range(16))
            assert all(len(set(g)) == 5 for g in layer.reshape(4, 5)), name


def test_plan_equals_the_cli_plan(tmp_path, stats, cli):
    # Binary, as save writes by default: the plan names it by the digest of its bytes,
    # which a plan from the statistics in memory computes the same way.
    stats.save(tmp_path / "s.bin")
    cli("plan", "--placer", "tacg", "--stats", tmp_path / "s.bin", "--gpus", "4", "--nodes", "2",
        "--slots-per-gpu", "5", "--param", "alpha=0.5", "--seed", "3", "-o", tmp_path / "cli.json")
    p = moeplace.plan(stats, "tacg", gpus=4, nodes=2, slots_per_gpu=5, params={"alpha": 0.5}, seed=3)
    p.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert moeplace.Plan.load(tmp_path / "cli.json") == p
    assert p.to_dict()["provenance"]["parameters"] == {"alpha": "0.5"}


def test_exports_match_the_cli(tmp_path, stats, cli):
    p = moeplace.plan(stats, "balance", gpus=4, nodes=2, slots_per_gpu=5, params={"groups": 4})
    p.save(tmp_path / "p.json")
    for engine in ("sglang", "vllm", "vllm-map", "trtllm", "eplb"):
        cli("export", tmp_path / "p.json", "--to", engine, "-o", tmp_path / f"cli.{engine}")
        text = p.export(engine, tmp_path / f"py.{engine}")
        assert text == (tmp_path / f"cli.{engine}").read_text() == (tmp_path / f"py.{engine}").read_text()


def test_plan_names_its_serving_and_layers(tmp_path, stats):
    p = moeplace.plan(stats, "tacg+gesr", gpus=4, nodes=2, slots_per_gpu=5)
    s = p.serving
    assert set(s) == {"dispatcher", "parameters", "homes"}
    assert s["dispatcher"] in moeplace.DISPATCHERS
    # The plan file's own record of it (tacg+gesr is served by gesr with family homes).
    assert s == p.to_dict()["serving"]
    assert s["dispatcher"] == "gesr" and s["homes"] == "family"
    assert moeplace.Dispatcher(p).name == "gesr"
    # Statistics without a model: every row a MoE layer, numbered from 0.
    assert p.moe_layers == [0, 1, 2, 3] and p.hidden_layers == 4
    assert p.layer_source == "default"
    p.save(tmp_path / "p.json")
    q = moeplace.Plan.load(tmp_path / "p.json")
    assert q.serving == s and q.moe_layers == p.moe_layers


def test_evaluate_returns_metrics(tmp_path, stats):
    topk, req, fam, ph = arrays(tokens=900, layers=4, experts=16, k=2, seed=4)
    np.savez(tmp_path / "test.npz", topk_ids=topk, num_experts=np.int64(16), request_ids=req, families=fam)
    linear = moeplace.plan(stats, "linear", gpus=4, nodes=2)
    plan = moeplace.plan(stats, "tacg+gesr", gpus=4, nodes=2, slots_per_gpu=5)
    base = moeplace.evaluate(tmp_path / "test.npz", linear)
    m = moeplace.evaluate(tmp_path / "test.npz", plan, dispatcher="gesr", homes="family")
    assert base["counts"]["tokens"] == m["counts"]["tokens"] == 900
    assert 0 < m["jain"] <= 1 and len(m["layers"]) == 4
    assert m["remote_gpus"] >= 0


def test_bad_plan_arguments_raise_value_error(stats):
    with pytest.raises(ValueError, match="unknown placer"):
        moeplace.plan(stats, "best", gpus=4)
    with pytest.raises(ValueError, match="no parameter"):
        moeplace.plan(stats, "linear", gpus=4, params={"alpha": 1})
    with pytest.raises(ValueError, match="cannot hold"):
        moeplace.plan(stats, "linear", gpus=2, slots_per_gpu=4)
    with pytest.raises(ValueError, match="unknown engine"):
        moeplace.plan(stats, "linear", gpus=4).export("triton")


def test_presets_set_placer_and_serving_parameters_like_the_cli(tmp_path, stats, cli):
    info = {p["name"]: p for p in moeplace.placers()}
    presets = {pr["name"]: pr for pr in info["tacg+gesr"]["presets"]}
    assert {"min-remote-nodes", "shift-robust"} <= set(presets)
    assert all(q["level"] in ("stable", "experimental") for q in info["tacg+gesr"]["params"])
    p = moeplace.plan(stats, "tacg+gesr", gpus=4, nodes=2, slots_per_gpu=5, preset="min-remote-nodes")
    assert p.to_dict()["provenance"]["parameters"] == {"alpha": "0", "locality": "0.25"}
    assert p.serving["parameters"] == {"theta": "1.5", "free_first": "true"}
    stats.save(tmp_path / "s.bin")
    cli("plan", "--placer", "tacg+gesr", "--stats", tmp_path / "s.bin", "--gpus", "4", "--nodes", "2",
        "--slots-per-gpu", "5", "--preset", "min-remote-nodes", "-o", tmp_path / "cli.json")
    p.save(tmp_path / "py.json")
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    # Given parameters win over the preset's.
    q = moeplace.plan(stats, "tacg+gesr", gpus=4, nodes=2, slots_per_gpu=5, preset="shift-robust",
                      params={"robust": 0.5})
    assert q.to_dict()["provenance"]["parameters"] == {"robust": "0.5"}
    with pytest.raises(ValueError, match='no preset "h100".*machine='):
        moeplace.plan(stats, "tacg", gpus=4, nodes=2, slots_per_gpu=5, preset="h100")


def test_plan_help_lists_every_declared_parameter():
    doc = moeplace.plan.__doc__
    for p in moeplace.placers():
        for q in p["params"]:
            assert f"{q['name']}={q['default']}" in doc, (p["name"], q["name"])
        for pr in p["presets"]:
            assert f"preset {pr['name']}:" in doc
