"""Serving-time calls: the dispatcher makes the replay's choices; routers; bad arrays."""

import numpy as np
import pytest

import moeplace
from test_stats import arrays


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    topk, req, fam, ph = arrays(tokens=3000, layers=3, experts=16, k=4, seed=5)
    stats = moeplace.Statistics.from_topk(topk, num_experts=16, request_ids=req, families=fam, phases=ph)
    plan = moeplace.plan(stats, "balance", gpus=4, nodes=2, slots_per_gpu=6)
    # A fixed batch: one request of 2000 tokens (one replay chunk), homed on GPU 3.
    batch, _, _, _ = arrays(tokens=2000, layers=3, experts=16, k=4, seed=6)
    np.savez(tmp / "batch.npz", topk_ids=batch, num_experts=np.int64(16))
    return plan, batch, tmp / "batch.npz"


@pytest.mark.parametrize("name", moeplace.DISPATCHERS)
def test_dispatch_makes_the_replays_choices(setup, name):
    plan, batch, path = setup
    home = 3
    replay = moeplace.evaluate(path, plan, dispatcher=name, homes={"r0": home}, seed=7)
    d = moeplace.Dispatcher(plan, name, seed=7)
    gpus = plan.slot_gpus
    m = plan.physical_to_logical_map
    hops = 0
    for layer in range(3):
        ids = batch[:, layer, :]
        slots = d.dispatch(layer, ids, np.full(len(ids), home, dtype=np.int32))
        assert slots.shape == ids.shape and slots.dtype == np.int64
        assert np.array_equal(m[layer][slots], ids), "every slot holds its pick's expert"
        load = np.bincount(gpus[slots].ravel(), minlength=plan.num_gpus)
        assert load.tolist() == replay["layers"][layer]["load"], (name, layer)
        hops += int((gpus[slots] != home).sum())
    assert hops == replay["counts"]["remote_hops"]
    # The same batch as int32, and one home for all, give the same slots.
    assert np.array_equal(d.dispatch(0, batch[:, 0, :].astype(np.int32), home), d.dispatch(0, batch[:, 0, :], home))


def test_dispatch_spreads_over_replicas_with_nearest(setup):
    plan, batch, _ = setup
    homes = np.arange(len(batch)) % plan.num_gpus
    slots = moeplace.Dispatcher(plan, "nearest").dispatch(1, batch[:, 1, :], homes)
    used = set(np.unique(slots).tolist())
    assert len(used) > 16, "copies beyond the first are used"


def test_dispatch_torch(setup, torch):
    plan, batch, _ = setup
    d = moeplace.Dispatcher(plan, "nearest")
    out = d.dispatch(0, torch.from_numpy(batch[:, 0, :].copy()), torch.zeros(len(batch), dtype=torch.int64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert np.array_equal(out.numpy(), d.dispatch(0, batch[:, 0, :], 0))


@pytest.mark.parametrize(
    "ids, homes, layer, message",
    [
        (np.zeros((4, 2), dtype=np.float32), 0, 0, "integers"),
        (np.zeros((4, 2, 1), dtype=np.int64), 0, 0, "2-D"),
        (np.array([[0, 16]]), 0, 0, "token 0: expert id 16 is out of range"),
        (np.array([[0, -1]]), 0, 0, "out of range"),
        (np.array([[0, 1]]), 4, 0, "home rank 4 is out of range"),
        (np.array([[0, 1]]), np.array([0, 1]), 0, "homes has 2 entries"),
        (np.array([[0, 1]]), 0, 3, "layer 3 is out of range"),
        (np.array([[0, 1]]), np.array([0.5]), 0, "integers"),
    ],
)
def test_bad_batches_raise_value_error(setup, ids, homes, layer, message):
    plan, _, _ = setup
    with pytest.raises(ValueError, match=message):
        moeplace.Dispatcher(plan, "nearest").dispatch(layer, ids, homes)


def test_unknown_dispatcher_raises_value_error(setup):
    with pytest.raises(ValueError, match="unknown dispatcher"):
        moeplace.Dispatcher(setup[0], "closest")


def test_routers():
    none = np.zeros((5, 0), dtype=np.float32)
    rr = moeplace.Router("round-robin", 3)
    assert rr.route(none, np.zeros(3, dtype=np.int64)).tolist() == [0, 1, 2, 0, 1]
    jsq = moeplace.Router("jsq", 3)
    assert jsq.route(none[:3], np.array([2, 0, 1])).tolist() == [1, 1, 2]
    rnd = moeplace.Router("random", 4, seed=3)
    again = moeplace.Router("random", 4, seed=3)
    assert rnd.route(none, np.zeros(4, dtype=np.int64)).tolist() == again.route(none, np.zeros(4, dtype=np.int64)).tolist()
    # ELDR: worker 0 ~ dimension 0, worker 1 ~ dimension 1, worker 2 ~ both.
    eldr = moeplace.Router.eldr(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32), tau=0.0)
    sigs = np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32)
    assert eldr.route(sigs, np.array([9, 9, 9])).tolist() == [0, 1, 2]
    band = moeplace.Router.eldr(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32), tau=0.4)
    assert band.route(sigs[:1], np.array([9, 0, 1])).tolist() == [2]
    fitted = moeplace.Router.fit_eldr(np.array([[1, 0.1, 0], [0, 0.1, 1]] * 10, dtype=np.float32), 2, 0.0)
    a, b = fitted.route(np.array([[1, 0.1, 0], [0, 0.1, 1]], dtype=np.float32), np.zeros(2, dtype=np.int64))
    assert a != b
    with pytest.raises(ValueError, match="loads has 2 entries"):
        eldr.route(sigs, np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="not a finite"):
        eldr.route(np.array([[np.nan, 1]], dtype=np.float32), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="router"):
        moeplace.Router("eldr", 3)
