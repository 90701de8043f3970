//! The serving engines' own recordings (../shared/data/engines, see its README): each
//! reads with its layers, experts, top-k, steps and counts; bad input gets one clear
//! error naming the file.
//!
//! The recorded model: 5 hidden layers, decoder layer 0 dense, MoE layers 1..4, 16
//! experts, top-4, 20 physical slots (slot s holds expert s mod 16). Pinned counts
//! were computed from the files' raw storages.

use std::io::Write;
use std::path::{Path, PathBuf};

use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_core::trace::{Phase, TokenBatch};
use moeplace_formats::engine_counts::{read_engine_recording, EngineCounts};
use moeplace_formats::{open_trace, ReadOptions, TraceFormat};

/// The engines' recordings, or `None` (with a message) when the shared data is absent
/// outside CI; under CI (`CI` set) its absence fails the test.
fn engines() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/engines"));
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the shared data folder {} is missing", p.display());
    }
    eprintln!("skipping: shared data folder {} not found (set CI to make this an error)", p.display());
    None
}

fn model() -> LayerMap {
    LayerMap::new(5, vec![1, 2, 3, 4], LayerSource::Model).unwrap()
}

fn counts(path: &Path, opts: &ReadOptions) -> EngineCounts {
    read_engine_recording(path, opts).expect("recognised as counts").unwrap_or_else(|e| panic!("{e}"))
}

fn layer_totals(c: &EngineCounts, layer: usize) -> Vec<u64> {
    c.loads.layer_total(layer).iter().map(|&x| x as u64).collect()
}

fn read_all(path: &Path, opts: &ReadOptions) -> (Option<LayerMap>, Vec<TokenBatch>) {
    let r = open_trace(path, opts).unwrap_or_else(|e| panic!("{e}"));
    let map = r.layer_map();
    let batches: Vec<TokenBatch> = r.map(|b| b.unwrap_or_else(|e| panic!("{e}"))).collect();
    (map, batches)
}

const STAT_LAYER1: [u64; 16] = [66, 44, 44, 54, 57, 39, 52, 55, 68, 31, 30, 23, 51, 43, 71, 40];

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn sglang_stat_dump_reads_as_counts_on_the_moe_layers() {
    let Some(d) = engines() else { return };
    let c = counts(&d.join("sglang/stat_mode.pt"), &ReadOptions::default());
    assert_eq!((c.loads.layers, c.loads.experts, c.loads.steps.len()), (4, 16, 3));
    let map = c.layer_map.as_ref().unwrap();
    assert_eq!((map.hidden_layers(), map.moe_layers()), (5, &[1, 2, 3, 4][..]));
    assert_eq!(map.source(), LayerSource::Recorded, "dense row found as the all-zero row");
    assert_eq!(layer_totals(&c, 0), STAT_LAYER1);
    // Every step: 64 tokens x top-4 per layer.
    assert!(c.loads.steps.iter().all(|s| s.chunks(16).all(|l| l.iter().sum::<f64>() == 256.0)));
    // With the model: the same rows, said to come from the model.
    let opts = ReadOptions { layer_map: Some(model()), ..Default::default() };
    let m = counts(&d.join("sglang/stat_mode.pt"), &opts);
    assert_eq!(m.layer_map.unwrap().source(), LayerSource::Model);
    assert_eq!(m.loads.steps, c.loads.steps);
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn sglang_per_pass_dump_maps_slots_to_logical_experts() {
    let Some(d) = engines() else { return };
    let c = counts(&d.join("sglang/per_pass_mode_rank0.pt"), &ReadOptions::default());
    assert_eq!((c.loads.layers, c.loads.experts, c.loads.steps.len()), (4, 16, 3));
    assert_eq!(c.layer_map.as_ref().unwrap().moe_layers(), &[1, 2, 3, 4]);
    // The same routing as the stat dump: slots 16..19 add onto experts 0..3.
    assert_eq!(layer_totals(&c, 0), STAT_LAYER1);
    assert_eq!(layer_totals(&c, 3), [76, 31, 68, 38, 27, 68, 82, 47, 40, 33, 45, 51, 36, 45, 57, 24]);
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn sglang_per_token_dump_reads_as_a_trace() {
    let Some(d) = engines() else { return };
    let p = d.join("sglang/per_token_mode_rank0.pt");
    assert_eq!(TraceFormat::detect(&p).unwrap(), TraceFormat::SglangDump);
    assert!(read_engine_recording(&p, &ReadOptions::default()).is_none(), "tokens, not counts");
    let (map, b) = read_all(&p, &ReadOptions::default());
    assert_eq!(map.unwrap().moe_layers(), &[1, 2, 3, 4]);
    let shape = b[0].shape();
    assert_eq!((shape.layers, shape.experts, shape.top_k), (4, 16, 4));
    let tokens: Vec<_> =
        b.iter().flat_map(|b| b.tokens().map(|t| (t.request.to_string(), t.phase, t.position))).collect();
    assert_eq!(tokens.len(), 12, "two extend passes of 6 tokens");
    assert_eq!(tokens[0], ("r0-p0-s0".to_string(), Some(Phase::Prefill), 0));
    assert_eq!(tokens[11], ("r0-p1-s0".to_string(), Some(Phase::Prefill), 5));
    // Token 0 of pass 0, decoder layers 1..4 (-1 padding dropped, slots < 16 are experts).
    assert_eq!(b[0].picks(0, 0), &[9, 12, 13, 7]);
    assert_eq!(b[0].picks(0, 3), &[1, 6, 9, 7]);
    // Token 0 of pass 1.
    assert_eq!(b[0].picks(6, 1), &[9, 0, 1, 11]);
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn sglang_routed_experts_responses_read_with_requests_and_phases() {
    let Some(d) = engines() else { return };
    let p = d.join("sglang/responses_routed_experts.jsonl");
    assert_eq!(TraceFormat::detect(&p).unwrap(), TraceFormat::SglangRouted);
    let e = open_trace(&p, &ReadOptions { experts: Some(16), ..Default::default() }).err().unwrap().to_string();
    assert!(e.contains("responses_routed_experts.jsonl") && e.contains("--top-k"), "{e}");
    for opts in [
        ReadOptions { experts: Some(16), top_k: Some(4), ..Default::default() },
        ReadOptions { experts: Some(16), layer_map: Some(model()), ..Default::default() },
    ] {
        let (map, b) = read_all(&p, &opts);
        let map = map.unwrap();
        assert_eq!(map.moe_layers(), &[1, 2, 3, 4]);
        let toks: Vec<_> = b.iter().flat_map(|b| b.tokens().map(|t| (t.request.to_string(), t.phase))).collect();
        assert_eq!(toks.len(), 16 + 24, "prompt + completion - 1 tokens per request");
        let count = |r: &str, ph: Phase| toks.iter().filter(|t| t.0 == r && t.1 == Some(ph)).count();
        assert_eq!((count("req-0", Phase::Prefill), count("req-0", Phase::Decode)), (8, 8));
        assert_eq!((count("req-1", Phase::Prefill), count("req-1", Phase::Decode)), (8, 16));
        assert_eq!(b[0].picks(0, 0), &[4, 7, 11, 8]);
        assert_eq!(b[0].picks(16, 0), &[10, 2, 12, 15], "req-1's first token");
    }
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn vllm_routed_experts_npy_drops_the_dense_layer() {
    let Some(d) = engines() else { return };
    let p = d.join("vllm/routed_experts.npy");
    assert_eq!(TraceFormat::detect(&p).unwrap(), TraceFormat::VllmRouted);
    let (map, b) = read_all(&p, &ReadOptions { experts: Some(16), ..Default::default() });
    assert_eq!(map.as_ref().unwrap().moe_layers(), &[1, 2, 3, 4]);
    assert_eq!(map.unwrap().source(), LayerSource::Recorded);
    let shape = b[0].shape();
    assert_eq!((shape.layers, shape.experts, shape.top_k), (4, 16, 4));
    assert_eq!(b.iter().map(TokenBatch::len).sum::<usize>(), 40);
    assert_eq!(b[0].picks(0, 1), &[0, 12, 2, 10]);
    assert_eq!(b[0].token(0).request, "routed_experts");
    let (map, _) = read_all(&p, &ReadOptions { experts: Some(16), layer_map: Some(model()), ..Default::default() });
    assert_eq!(map.unwrap().source(), LayerSource::Model);
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn vllm_eplb_load_stats_map_physical_loads_back() {
    let Some(d) = engines() else { return };
    let c = counts(&d.join("vllm/eplb_load_stats.jsonl"), &ReadOptions::default());
    assert_eq!((c.loads.layers, c.loads.experts, c.loads.steps.len()), (4, 16, 3));
    assert!(c.layer_map.is_none(), "MoE ordinals only");
    assert_eq!(layer_totals(&c, 0), [182, 132, 168, 73, 39, 102, 84, 97, 123, 99, 52, 51, 49, 91, 68, 66]);
    assert_eq!(c.loads.steps[0][..16].iter().sum::<f64>(), 495.0);
    let opts = ReadOptions { layer_map: Some(model()), ..Default::default() };
    assert_eq!(
        counts(&d.join("vllm/eplb_load_stats.jsonl"), &opts).layer_map.as_ref().unwrap().moe_layers(),
        &[1, 2, 3, 4]
    );
}

const TRT_ITER100_LAYER1: [f64; 16] = [24., 33., 18., 26., 23., 26., 25., 15., 13., 14., 9., 8., 8., 6., 5., 3.];

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn trtllm_statistics_keep_top_k_and_decoder_layers() {
    let Some(d) = engines() else { return };
    let dir = d.join("trtllm/stats_no_load_balancer");
    let c = counts(&dir, &ReadOptions::default());
    assert_eq!((c.loads.layers, c.loads.experts, c.loads.steps.len(), c.top_k), (4, 16, 3, Some(4)));
    assert_eq!(c.layer_map.as_ref().unwrap().moe_layers(), &[1, 2, 3, 4]);
    assert_eq!(c.loads.steps[0][..16], TRT_ITER100_LAYER1, "iteration 100, layer 1, summed over both ranks");
    // The raw files read as a trace whose counts are the statistics'.
    assert_eq!(TraceFormat::detect(&dir).unwrap(), TraceFormat::TrtllmRaw);
    let (map, b) = read_all(&dir, &ReadOptions::default());
    assert_eq!(map.unwrap().moe_layers(), &[1, 2, 3, 4]);
    assert_eq!(b.iter().map(TokenBatch::len).sum::<usize>(), 2 * 3 * 32, "2 ranks x 3 iterations x 32 tokens");
    let first = &b[0];
    assert_eq!(first.token(0).request, "rank0-iter100");
    assert_eq!(first.picks(0, 0), &[3, 1, 6, 13]);
    let mut counts100 = [0.0; 16];
    for b in &b {
        for t in 0..b.len() {
            if b.token(t).request.ends_with("iter100") {
                b.picks(t, 0).iter().for_each(|&e| counts100[e as usize] += 1.0);
            }
        }
    }
    assert_eq!(counts100, TRT_ITER100_LAYER1);
}

fn assignments(dir: &Path) -> PathBuf {
    let p = dir.join("lb.yaml");
    let row: Vec<String> = (0..20).map(|s| (s % 16).to_string()).collect();
    let mut text = String::from("num_slots: 20\ninitial_global_assignments:\n");
    for l in 1..=4 {
        text.push_str(&format!("  {l}: [{}]\n", row.join(", ")));
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn trtllm_load_balancer_statistics_need_the_slot_assignments() {
    let Some(d) = engines() else { return };
    let dir = d.join("trtllm/stats_with_load_balancer");
    let e = read_engine_recording(&dir, &ReadOptions { experts: Some(16), ..Default::default() })
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stats_with_load_balancer") && e.contains("load balancer") && e.contains("--slot-assignments"),
        "{e}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let opts = ReadOptions { slot_assignments: Some(assignments(tmp.path())), ..Default::default() };
    let c = counts(&dir, &opts);
    assert_eq!((c.loads.layers, c.loads.experts, c.top_k), (4, 16, Some(4)));
    // Slots 16..19 hold experts 0..3.
    let want = [28., 22., 19., 13., 15., 20., 20., 19., 17., 18., 15., 17., 8., 13., 8., 4.];
    assert_eq!(c.loads.steps[0][..16], want);
    // The raw files' slot picks are random: under this made-up map some token picks
    // two copies of one expert, which no router does; the trace reader names it.
    let e = trace_error(&dir, &ReadOptions { format: Some(TraceFormat::TrtllmRaw), ..opts });
    assert!(e.contains("rank0_raw.safetensors") && e.contains("appears twice"), "{e}");
}

// ---- bad input ----

/// Copies a torch.save archive, letting `edit` change each entry's bytes.
fn rewrite_pt(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    use std::io::Read;
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut e = zin.by_index(i).unwrap();
        let name = e.name().to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        zout.start_file(name.clone(), o).unwrap();
        zout.write_all(&edit(&name, bytes)).unwrap();
    }
    zout.finish().unwrap();
}

fn trace_error(path: &Path, opts: &ReadOptions) -> String {
    match open_trace(path, opts) {
        Err(e) => e.to_string(),
        Ok(r) => r.filter_map(Result::err).next().expect("an error").to_string(),
    }
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn bad_torch_files_get_one_clear_error() {
    let Some(d) = engines() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let stat = std::fs::read(d.join("sglang/stat_mode.pt")).unwrap();
    for cut in [10, stat.len() / 2, stat.len() - 30] {
        let p = tmp.path().join(format!("cut{cut}.pt"));
        std::fs::write(&p, &stat[..cut]).unwrap();
        let e = trace_error(&p, &ReadOptions::default());
        assert!(e.contains(&format!("cut{cut}.pt")), "{e}");
    }
    // A pickle calling something else than tensors and dicts.
    let p = tmp.path().join("evil.pt");
    rewrite_pt(&d.join("sglang/stat_mode.pt"), &p, |name, b| {
        if name.ends_with("data.pkl") {
            let s = b.windows(24).position(|w| w == b"collections\nOrderedDict\n").unwrap();
            [&b[..s], b"os\nsystem\n".as_slice(), &b[s + 24..]].concat()
        } else {
            b
        }
    });
    let e = read_engine_recording(&p, &ReadOptions::default()).map(|r| r.err()).unwrap_or(None);
    let e = e.map(|e| e.to_string()).unwrap_or_else(|| trace_error(&p, &ReadOptions::default()));
    assert!(e.contains("evil.pt") && e.contains("unexpected object os.system"), "{e}");
    // A storage shorter than its tensors.
    let p = tmp.path().join("short.pt");
    rewrite_pt(
        &d.join("sglang/stat_mode.pt"),
        &p,
        |name, b| if name.ends_with("data/0") { b[..100].to_vec() } else { b },
    );
    let e = trace_error(&p, &ReadOptions::default());
    assert!(e.contains("short.pt") && e.contains("truncated"), "{e}");
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn a_slot_id_beyond_the_slot_count_is_refused() {
    let Some(d) = engines() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("slot.pt");
    // topk_ids_of_layer of the first record is storage 0: layer 1, token 0, pick 0.
    rewrite_pt(&d.join("sglang/per_token_mode_rank0.pt"), &p, |name, mut b| {
        if name.ends_with("data/0") {
            b[48 * 4..49 * 4].copy_from_slice(&25i32.to_le_bytes());
        }
        b
    });
    let e = trace_error(&p, &ReadOptions::default());
    assert!(e.contains("slot.pt") && e.contains("slot id 25 is beyond the slot count 20"), "{e}");
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn bad_routed_experts_get_one_clear_error() {
    let Some(d) = engines() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(d.join("sglang/responses_routed_experts.jsonl")).unwrap();
    let opts = ReadOptions { experts: Some(16), top_k: Some(4), ..Default::default() };
    // Base64 that does not decode, on the second response.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = lines[1].find("\"routed_experts\": \"").unwrap() + 19;
    lines[1].replace_range(at..at + 4, "*!?*");
    let p = tmp.path().join("b64.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let e = trace_error(&p, &opts);
    assert!(e.contains("b64.jsonl:2") && e.contains("not base64"), "{e}");
    // A model whose layer count contradicts the data.
    let six = LayerMap::new(6, vec![1, 2, 3, 4, 5], LayerSource::Model).unwrap();
    let e = trace_error(
        &d.join("sglang/responses_routed_experts.jsonl"),
        &ReadOptions { experts: Some(16), layer_map: Some(six.clone()), ..Default::default() },
    );
    assert!(e.contains("responses_routed_experts.jsonl") && e.contains("contradicts the model"), "{e}");
    let e = trace_error(
        &d.join("vllm/routed_experts.npy"),
        &ReadOptions { experts: Some(16), layer_map: Some(six), ..Default::default() },
    );
    assert!(e.contains("routed_experts.npy") && e.contains("the model has 6 hidden layers"), "{e}");
    // A model that says layer 1 is dense while the file routes there.
    let wrong = LayerMap::new(5, vec![2, 3, 4], LayerSource::Model).unwrap();
    let e = trace_error(
        &d.join("vllm/routed_experts.npy"),
        &ReadOptions { experts: Some(16), layer_map: Some(wrong.clone()), ..Default::default() },
    );
    assert!(e.contains("decoder layer 1 is dense"), "{e}");
    let e = read_engine_recording(
        &d.join("sglang/stat_mode.pt"),
        &ReadOptions { layer_map: Some(wrong), ..Default::default() },
    )
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(e.contains("stat_mode.pt") && e.contains("decoder layer 1 is dense"), "{e}");
    // A truncated .npy.
    let npy = std::fs::read(d.join("vllm/routed_experts.npy")).unwrap();
    let p = tmp.path().join("cut.npy");
    std::fs::write(&p, &npy[..npy.len() - 7]).unwrap();
    let e = trace_error(&p, &ReadOptions { experts: Some(16), ..Default::default() });
    assert!(e.contains("cut.npy") && e.contains("truncated"), "{e}");
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn bad_load_stats_get_one_clear_error() {
    let Some(d) = engines() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(d.join("vllm/eplb_load_stats.jsonl")).unwrap();
    // A map naming an expert no slot-count of logical experts has.
    let bad = text.replacen("\"p2l_map\": [[0, 1,", "\"p2l_map\": [[0, 99,", 1);
    let p = tmp.path().join("map.jsonl");
    std::fs::write(&p, bad).unwrap();
    let e = read_engine_recording(&p, &ReadOptions { experts: Some(16), ..Default::default() })
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("map.jsonl:1") && e.contains("expert 99"), "{e}");
    // Loads over fewer slots than the map.
    let bad = text.replacen("\"expert_load\": [[24, ", "\"expert_load\": [[", 1);
    let p = tmp.path().join("short.jsonl");
    std::fs::write(&p, bad).unwrap();
    let e = read_engine_recording(&p, &ReadOptions::default()).unwrap().unwrap_err().to_string();
    assert!(e.contains("short.jsonl:1") && e.contains("19 slots"), "{e}");
}
