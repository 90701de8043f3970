"""rebalance_experts: DeepSeek EPLB's drop-in."""

import json

import numpy as np
import pytest

import moeplace


def readme_example(shared_data):
    return json.loads((shared_data / "eplb-readme-example.json").read_text())


def args(ex):
    return ex["num_replicas"], ex["num_groups"], ex["num_nodes"], ex["num_gpus"]


def check_consistent(phy2log, log2phy, logcnt, experts, replicas):
    layers = phy2log.shape[0]
    assert phy2log.shape == (layers, replicas)
    assert log2phy.shape == (layers, experts, replicas - experts + 1)
    assert logcnt.shape == (layers, experts)
    assert phy2log.dtype == log2phy.dtype == logcnt.dtype == np.int64
    for l in range(layers):
        assert np.array_equal(np.bincount(phy2log[l], minlength=experts), logcnt[l])
        for e in range(experts):
            slots = log2phy[l, e]
            assert (slots[logcnt[l, e]:] == -1).all()
            assert sorted(slots[: logcnt[l, e]]) == sorted(np.flatnonzero(phy2log[l] == e))


def test_eplb_method_gives_deepseeks_readme_output(shared_data):
    ex = readme_example(shared_data)
    w = np.array(ex["weight"])
    phy2log, log2phy, logcnt = moeplace.rebalance_experts(w, *args(ex), method="eplb")
    assert phy2log.tolist() == ex["phy2log"]
    assert logcnt.tolist() == ex["logcnt"]
    check_consistent(phy2log, log2phy, logcnt, w.shape[1], ex["num_replicas"])
    # EPLB's function takes float loads too, with the same answer.
    again = moeplace.rebalance_experts(w.astype(np.float32), *args(ex), method="eplb")
    assert all(np.array_equal(a, b) for a, b in zip(again, (phy2log, log2phy, logcnt)))


def test_balance_is_valid_and_no_worse_than_eplb(shared_data):
    ex = readme_example(shared_data)
    w = np.array(ex["weight"], dtype=np.float64)
    replicas, _, _, gpus = args(ex)
    p, l2p, cnt = moeplace.rebalance_experts(w, *args(ex))
    check_consistent(p, l2p, cnt, w.shape[1], replicas)
    per = replicas // gpus

    def max_gpu_load(phy2log, logcnt):
        loads = w[np.arange(w.shape[0])[:, None], phy2log] / logcnt[np.arange(w.shape[0])[:, None], phy2log]
        return loads.reshape(w.shape[0], gpus, per).sum(axis=2).max(axis=1)

    for l in range(w.shape[0]):
        gpu_rows = p[l].reshape(gpus, per)
        assert all(len(set(r)) == per for r in gpu_rows), "no two copies of an expert on one GPU"
    e = moeplace.rebalance_experts(w, *args(ex), method="eplb")
    assert (max_gpu_load(p, cnt) <= max_gpu_load(e[0], e[2]) + 1e-9).all()


def test_torch_in_torch_out(shared_data, torch):
    ex = readme_example(shared_data)
    out = moeplace.rebalance_experts(torch.tensor(ex["weight"], dtype=torch.float32), *args(ex), method="eplb")
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in out)
    assert out[0].tolist() == ex["phy2log"]


def test_matches_the_project_placers_on_real_loads(shared_data):
    stats = moeplace.profile(shared_data / "esft-deepseek-v2-lite" / "law", token_sample=0)
    w = stats.loads().astype(np.float64)
    for method, placer in (("eplb", "eplb"), ("balance", "balance")):
        phy2log, _, _ = moeplace.rebalance_experts(w, 80, 8, 2, 16, method=method)
        plan = moeplace.plan(stats, placer, gpus=16, nodes=2, slots_per_gpu=5, params={"groups": 8})
        if method == "eplb" and plan.notes["duplicate_repairs"] > 0:
            continue  # the placer repairs what EPLB puts twice on a GPU
        assert np.array_equal(plan.physical_to_logical_map, phy2log), method


@pytest.mark.parametrize(
    "weight, message",
    [
        (np.array([[1.0, np.nan, 2.0, 3.0]]), "not a finite"),
        (np.array([[1.0, -1.0, 2.0, 3.0]]), "not a finite non-negative"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.array([["a", "b"]]), "dtype"),
        (np.ones((1, 4)), "divide"),
    ],
)
def test_bad_input_raises_value_error(weight, message):
    groups = 3 if message == "divide" else 1
    with pytest.raises(ValueError, match=message):
        moeplace.rebalance_experts(weight, 6, groups, 1, 2, method="eplb")
    with pytest.raises(ValueError):
        moeplace.rebalance_experts(np.ones((1, 4)), 6, 1, 1, 2, method="best")
