//! Every writer -> reader gives the same trace; statistics files read back equal;
//! the merge law holds on random traces.

use std::path::Path;

use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::{ModelShape, Phase, TokenBatch, TokenRef, Trace};
use moeplace_formats::jsonl::JsonlWriter;
use moeplace_formats::parquet::ParquetWriter;
use moeplace_formats::{open_trace, stats_file, ReadOptions};
use proptest::prelude::*;

/// A random trace: token i draws its ids from `seeds`, families and phases optional.
fn trace_from(shape: ModelShape, tokens: &[(u8, u8, u8, Vec<u16>)], weights: bool) -> Trace {
    let mut b = TokenBatch::new(shape);
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    for (i, (req, _fam, ph, seeds)) in tokens.iter().enumerate() {
        // A request has one family (statistics refuse two).
        let fam = req.wrapping_mul(5);
        let mut ids = Vec::with_capacity(l * k);
        for layer in 0..l {
            // k distinct ids: start at a seed and step by a unit.
            let start = seeds[layer % seeds.len()] as usize % e;
            for j in 0..k {
                ids.push(((start + j * 7 % e.max(1) + j) % e) as u16);
            }
            let layer_ids = &mut ids[layer * k..];
            let mut seen = std::collections::HashSet::new();
            for x in layer_ids.iter_mut() {
                while !seen.insert(*x) {
                    *x = ((*x as usize + 1) % e) as u16;
                }
            }
        }
        let w: Vec<f32> = (0..l * k).map(|j| (j as f32 + 1.0) / 7.0).collect();
        b.push(TokenRef {
            request: &format!("r{req}"),
            family: (fam % 3 != 0).then(|| ["code", "math"][fam as usize % 2]),
            phase: match ph % 3 {
                0 => None,
                1 => Some(Phase::Prefill),
                _ => Some(Phase::Decode),
            },
            position: i as u32,
            experts: &ids,
            gate_weights: weights.then_some(&w[..]),
        })
        .unwrap();
    }
    Trace { shape, batches: vec![b] }
}

fn read_all(path: &Path, batch_tokens: usize) -> Trace {
    let opts = ReadOptions { batch_tokens, ..Default::default() };
    let mut r = open_trace(path, &opts).unwrap();
    let mut t = Trace::new(r.shape());
    for b in r.by_ref() {
        t.batches.push(b.unwrap());
    }
    t
}

fn same_tokens(a: &Trace, b: &Trace) {
    assert_eq!(a.shape, b.shape);
    assert_eq!(a.tokens(), b.tokens());
    for (x, y) in a.iter().zip(b.iter()) {
        assert_eq!(
            (x.request, x.family, x.phase, x.position, x.experts),
            (y.request, y.family, y.phase, y.position, y.experts)
        );
        assert_eq!(x.gate_weights, y.gate_weights);
    }
}

fn stats_of(t: &Trace) -> Statistics {
    let mut s = Statistics::new(t.shape, ProfileOptions::default());
    for b in &t.batches {
        s.add_batch(b).unwrap();
    }
    s
}

fn token_strategy() -> impl Strategy<Value = Vec<(u8, u8, u8, Vec<u16>)>> {
    prop::collection::vec((0u8..5, 0u8..6, 0u8..3, prop::collection::vec(0u16..64, 1..4)), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn jsonl_parquet_and_npz_round_trip(tokens in token_strategy(), weights in any::<bool>(), layers in 1usize..4, e in 3usize..12) {
        let k = 1 + e % 3;
        let shape = ModelShape::new(layers, e, k).unwrap();
        let t = trace_from(shape, &tokens, weights);
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("t.jsonl");
        let mut w = JsonlWriter::create(&j, shape).unwrap();
        w.write_batch(&t.batches[0]).unwrap();
        w.finish().unwrap();
        same_tokens(&t, &read_all(&j, 7));
        let p = dir.path().join("t.parquet");
        let mut w = ParquetWriter::create(&p, shape).unwrap();
        w.write_batch(&t.batches[0]).unwrap();
        w.finish().unwrap();
        same_tokens(&t, &read_all(&p, 5));
        let n = dir.path().join("t.npz");
        moeplace_formats::npz::write_npz(&n, shape, &t.batches).unwrap();
        same_tokens(&t, &read_all(&n, 6));
    }

    #[test]
    fn merge_law_and_stats_file_identity(tokens in token_strategy(), split in 0usize..40, layers in 1usize..4, e in 3usize..12) {
        let shape = ModelShape::new(layers, e, 2).unwrap();
        let t = trace_from(shape, &tokens, false);
        let split = split.min(t.tokens());
        let mut i = 0;
        let a = t.filter(|_| { i += 1; i <= split });
        let mut j = 0;
        let b = t.filter(|_| { j += 1; j > split });
        let whole = stats_of(&t);
        let mut merged = stats_of(&a);
        merged.merge(&stats_of(&b)).unwrap();
        prop_assert_eq!(&merged, &whole);
        let mut other_order = stats_of(&b);
        other_order.merge(&stats_of(&a)).unwrap();
        prop_assert_eq!(&other_order, &whole);
        let text = stats_file::to_json(&whole);
        let back = stats_file::from_json(Path::new("mem.json"), &text).unwrap();
        prop_assert_eq!(&back, &whole);
        prop_assert_eq!(stats_file::to_json(&back), text);
        let bytes = stats_file::to_bytes(&whole, stats_file::Encoding::Binary);
        let back = stats_file::from_bytes(Path::new("mem.bin"), &bytes).unwrap();
        prop_assert_eq!(&back, &whole);
        prop_assert_eq!(stats_file::to_bytes(&back, stats_file::Encoding::Binary), bytes.clone());
        // Merged shards write the same bytes as the whole.
        prop_assert_eq!(stats_file::to_bytes(&merged, stats_file::Encoding::Binary), bytes);
    }
}

#[test]
fn parquet_writer_refuses_mixed_weights_and_leaves_no_file() {
    let shape = ModelShape::new(1, 4, 2).unwrap();
    let with = trace_from(shape, &[(0, 1, 1, vec![1])], true);
    let without = trace_from(shape, &[(0, 1, 1, vec![1])], false);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    let mut w = ParquetWriter::create(&p, shape).unwrap();
    w.write_batch(&with.batches[0]).unwrap();
    assert!(w.write_batch(&without.batches[0]).is_err());
    drop(w);
    assert!(!p.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file left");
}

#[test]
fn npz_needs_the_expert_count_and_checks_ids() {
    use ndarray::{ArrayD, IxDyn};
    use ndarray_npy::WriteNpyExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ids.npy");
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![0i32, 1, 2, 5]).unwrap();
    a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    let e = open_trace(&p, &ReadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("ids.npy") && e.contains("--experts"), "{e}");
    let opts = ReadOptions { experts: Some(4), ..Default::default() };
    let mut r = open_trace(&p, &opts).unwrap();
    let e = r.next().unwrap().unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("out of range"), "{e}");
    let opts = ReadOptions { experts: Some(6), ..Default::default() };
    let t: Vec<_> = open_trace(&p, &opts).unwrap().map(Result::unwrap).collect();
    assert_eq!(t[0].len(), 2);
    assert_eq!(t[0].picks(1, 0), &[2, 5]);
}

#[test]
fn progress_counts_what_its_unit_says() {
    // Progress bars print bytes for readers that count bytes and tokens for those
    // that count tokens; a bar that took tokens for bytes showed "KiB" for tokens.
    use moeplace_formats::ProgressUnit;
    let shape = ModelShape::new(2, 8, 2).unwrap();
    let t = trace_from(shape, &(0..30u8).map(|i| (i % 4, 0, 1, vec![i as u16, 3])).collect::<Vec<_>>(), false);
    let dir = tempfile::tempdir().unwrap();
    let (j, p, n) = (dir.path().join("t.jsonl"), dir.path().join("t.parquet"), dir.path().join("t.npz"));
    let mut w = JsonlWriter::create(&j, shape).unwrap();
    w.write_batch(&t.batches[0]).unwrap();
    w.finish().unwrap();
    let mut w = ParquetWriter::create(&p, shape).unwrap();
    w.write_batch(&t.batches[0]).unwrap();
    w.finish().unwrap();
    moeplace_formats::npz::write_npz(&n, shape, &t.batches).unwrap();
    let bytes = std::fs::metadata(&j).unwrap().len();
    for (path, unit, total) in
        [(&j, ProgressUnit::Bytes, bytes), (&p, ProgressUnit::Tokens, 30), (&n, ProgressUnit::Tokens, 30)]
    {
        let mut r = open_trace(path, &ReadOptions::default()).unwrap();
        assert_eq!(r.progress_unit(), unit, "{}", path.display());
        for b in r.by_ref() {
            b.unwrap();
        }
        let (done, all) = r.progress();
        assert_eq!(all, total, "{}", path.display());
        // Bytes are approximate (read buffers); tokens are exact.
        assert!(done <= all && (unit == ProgressUnit::Bytes || done == all), "{}: {done}/{all}", path.display());
    }
}
