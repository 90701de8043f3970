"""moeplace.ray.profile on a local Ray instance equals `moeplace profile`."""

import os

import pytest


@pytest.fixture(scope="module")
def ray():
    if os.environ.get("CI"):
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_profile_of_8_parquet_shards_equals_the_cli(tmp_path, cli, ray):
    import moeplace.ray

    shards = []
    for i in range(8):
        path = tmp_path / f"shard-{i}.parquet"
        cli("synth", "--layers", "4", "--experts", "16", "--top-k", "2", "--requests", "12",
            "--prefill-len", "8..40", "--decode-len", "4..20", "--seed", str(i + 1),
            "--request-prefix", f"s{i}-", path)
        shards.append(path)
    cli("profile", *shards, "-o", tmp_path / "cli.json")
    stats = moeplace.ray.profile(shards, fan_in=3, output=tmp_path / "ray.json")
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert stats.tokens > 0


def test_ray_profile_names_a_bad_shard(tmp_path, ray):
    import moeplace.ray

    bad = tmp_path / "bad.jsonl"
    bad.write_text("not a trace\n")
    with pytest.raises(ValueError, match="bad.jsonl"):
        moeplace.ray.profile([bad, bad])
