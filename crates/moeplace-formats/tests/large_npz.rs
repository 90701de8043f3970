//! Defect 4 at its real size: an NPZ trace whose `topk_ids` entry passes 4 GiB
//! (zip64) is written and read back. It needs about 9 GB of memory and 4.3 GB of
//! disk, so it runs only when `MOEPLACE_LARGE_TESTS=1` (docs/RELIABILITY.md gives
//! the command and a measured run).

use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
use moeplace_formats::npz::{write_npz, NumpyReader};

/// Id `i` of token `t`: varies with both, below 256.
fn id(t: usize, i: usize) -> u16 {
    ((t * 7 + i * 13) % 256) as u16
}

#[test]
fn an_npz_trace_over_4_gib_is_written_and_reads_back() {
    if std::env::var("MOEPLACE_LARGE_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set MOEPLACE_LARGE_TESTS=1 to write and read a 4.3 GB NPZ trace");
        return;
    }
    // 64 layers x top-8 = 512 ids of 2 bytes per token: 4,200,000 tokens give a
    // topk_ids entry of 4,300,800,000 bytes, past the 4 GiB of a plain zip entry.
    let shape = ModelShape::new(64, 256, 8).unwrap();
    let tokens = 4_200_000usize;
    let n = shape.layers * shape.top_k;
    assert!((tokens * n * 2) as u64 > u32::MAX as u64);
    let per_batch = 100_000;
    let mut batches = Vec::new();
    let mut experts = vec![0u16; n];
    for start in (0..tokens).step_by(per_batch) {
        let mut b = TokenBatch::with_capacity(shape, per_batch);
        for t in start..(start + per_batch).min(tokens) {
            for (l, layer) in experts.chunks_mut(shape.top_k).enumerate() {
                // Distinct ids within a layer: a base that moves, plus 0..k.
                let base = id(t, l) as usize;
                for (j, e) in layer.iter_mut().enumerate() {
                    *e = ((base + j) % 256) as u16;
                }
            }
            let request = format!("r{}", t / 1000);
            let token = TokenRef {
                request: &request,
                family: None,
                phase: None,
                position: (t % 1000) as u32,
                experts: &experts,
                gate_weights: None,
            };
            b.push(token).unwrap();
        }
        batches.push(b);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.npz");
    write_npz(&path, shape, &batches).unwrap();
    drop(batches);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 4_300_800_000, "{len} bytes");

    let reader = NumpyReader::open(&path, None, 65_536).unwrap();
    let mut t = 0usize;
    for batch in reader {
        let batch = batch.unwrap();
        assert_eq!(batch.shape(), shape);
        for (i, chunk) in batch.expert_ids().chunks_exact(n).enumerate() {
            let tt = t + i;
            for l in 0..shape.layers {
                assert_eq!(chunk[l * shape.top_k] as usize, id(tt, l) as usize, "token {tt} layer {l}");
                assert_eq!(chunk[l * shape.top_k + 7] as usize, (id(tt, l) as usize + 7) % 256, "token {tt}");
            }
        }
        t += batch.len();
    }
    assert_eq!(t, tokens);
}
