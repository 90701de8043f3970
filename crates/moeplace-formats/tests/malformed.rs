//! Malformed inputs that once panicked or read wrongly: each now gives one error
//! naming the file, the line (or row, or JSON key) and what is wrong.

use std::path::{Path, PathBuf};

use moeplace_core::trace::TokenBatch;
use moeplace_formats::detect::{ReadOptions, TraceReader};
use moeplace_formats::esft::EsftReader;
use moeplace_formats::jsonl::JsonlReader;
use moeplace_formats::sglang::SglangReader;
use moeplace_formats::{cluster_file, npz, plan_file, stats_file};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Reads every batch, returning the first error's text.
fn read_all(reader: impl TraceReader) -> Result<Vec<TokenBatch>, String> {
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// A JSONL trace header (2 layers, 4 experts, top-2) and one token of it.
const HEADER: &str = r#"{"format":"moeplace-trace","version":1,"layers":2,"experts":4,"top_k":2}"#;
const TOKEN: &str = r#"{"request":"r0","position":0,"experts":[[0,1],[2,3]]}"#;

#[test]
fn jsonl_header_with_absurd_layer_count_is_refused_at_line_1() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"format":"moeplace-trace","version":1,"layers":1000000000000000000,"experts":8,"top_k":2}"#;
    let p = write(dir.path(), "huge.jsonl", &format!("{header}\n"));
    let e = JsonlReader::open(&p, 8192).err().expect("refused").to_string();
    assert!(e.contains("huge.jsonl:1:") && e.contains("MoE layers"), "{e}");
}

#[test]
fn jsonl_header_with_largest_allowed_shape_does_not_reserve_beyond_memory() {
    // 65536 layers x top-65536 is accepted as a shape; a batch must not reserve
    // tokens x layers x k ids up front (terabytes), only what lines bring.
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"format":"moeplace-trace","version":1,"layers":65536,"experts":65536,"top_k":65536}"#;
    let p = write(dir.path(), "wide.jsonl", &format!("{header}\n"));
    let r = JsonlReader::open(&p, 8192).unwrap();
    assert_eq!(read_all(r).unwrap().len(), 0);
}

#[test]
fn esft_short_layer_file_is_the_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let fam = dir.path().join("law");
    std::fs::create_dir(&fam).unwrap();
    let line = "1\t2\t3\t4\t5\t6\t\t0.1\t0.1\t0.1\t0.1\t0.1\t0.1\n";
    write(&fam, "expert_weights_1.txt", &line.repeat(2));
    write(&fam, "expert_weights_2.txt", &line.repeat(2));
    write(&fam, "expert_weights_3.txt", line);
    let r = EsftReader::open(dir.path(), &ReadOptions::default()).unwrap();
    let e = read_all(r).unwrap_err();
    assert!(e.contains("expert_weights_3.txt:2:"), "the short file and its missing line: {e}");
    assert!(e.contains("expert_weights_1.txt"), "a file that goes on: {e}");
}

fn plan_text(gpus: &str, slots: &str, map: &str) -> String {
    format!(
        r#"{{"format":"moeplace-plan","version":1,"num_gpus":{gpus},"num_nodes":1,{slots},"num_experts":4,
"physical_to_logical_map":{map},"provenance":{{"placer":"x","seed":0}}}}"#
    )
}

#[test]
fn plan_with_overflowing_slot_count_is_refused() {
    let text = plan_text("8589934592", r#""slots_per_gpu":8589934592"#, "[[0,1,2,3]]");
    let e = plan_file::from_json(Path::new("p.json"), &text).unwrap_err().to_string();
    assert!(e.contains("p.json") && e.contains("slots_per_gpu") && e.contains("too large"), "{e}");
    let text = plan_text("8589934592", r#""num_slots":1,"slots_per_gpu":8589934592"#, "[[0,1,2,3]]");
    let e = plan_file::from_json(Path::new("p.json"), &text).unwrap_err().to_string();
    assert!(e.contains("p.json") && e.contains("too large"), "{e}");
}

#[test]
fn plan_whose_rows_disagree_with_a_huge_num_slots_fails_fast() {
    // num_slots far beyond the map's rows: refused from the rows, without first
    // building per-slot tables of num_slots entries.
    let text = plan_text("1", r#""num_slots":1099511627776"#, "[[0,1,2,3]]");
    let e = plan_file::from_json(Path::new("p.json"), &text).unwrap_err().to_string();
    assert!(e.contains("p.json") && e.contains("layer 0") && e.contains("1099511627776"), "{e}");
}

#[test]
fn statistics_transition_with_huge_layer_is_refused() {
    let text = r#"{"format":"moeplace-stats","version":1,"layers":2,"experts":2,"top_k":1,"pairs":true,
"request_vectors":false,"groups":[{"family":null,"phase":null,"tokens":1,"load":[[1,0],[0,1]],"coact":[],
"transitions":[[18446744073709551615,0,1,1]]}],"requests":[]}"#;
    let e = stats_file::from_json(Path::new("s.json"), text).unwrap_err().to_string();
    assert!(e.contains("s.json") && e.contains("transition entry") && e.contains("out of range"), "{e}");
}

#[test]
fn cluster_file_with_overflowing_slot_count_is_refused() {
    let e = cluster_file::parse(Path::new("c.toml"), "nodes = 1\ngpus = 8589934592\nslots_per_gpu = 8589934592\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.toml") && e.contains("too large"), "{e}");
}

#[test]
fn cluster_file_whose_token_size_overflows_or_is_absurd_is_refused() {
    // hidden_size x bytes_per_element wrapped around (or gave days per step).
    let parse =
        |extra: &str| cluster_file::parse(Path::new("c.toml"), &format!("nodes = 1\ngpus = 8\nslots = 8\n{extra}"));
    for extra in ["hidden_size = 9000000000000000000\n", "hidden_size = 100000000\n", "bytes_per_element = 4096\n"] {
        let e = parse(extra).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("hidden_size") && e.contains("bytes_per_element"), "{extra}: {e}");
    }
    assert!(parse("hidden_size = 16384\nbytes_per_element = 4\n").is_ok());
}

const SGLANG_HEADER: &str = r#"{"row_type":"header","schema":"simllm-preplay-trace-v2","provenance":{"expert_count":4,"top_k":2,"moe_layer_indices":[0]}}"#;

fn sglang_row(phase: &str, token_index: u64) -> String {
    format!(
        r#"{{"row_type":"observed-dispatch","request_id":"p0","phase":"{phase}","token_index":{token_index},"routing":[{{"layer_index":0,"expert_ids":[0,1]}}]}}"#
    )
}

#[test]
fn sglang_token_index_beyond_a_position_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // 2^32 once wrapped silently to position 0.
    let text = format!("{SGLANG_HEADER}\n{}\n{}\n", sglang_row("prefill", 0), sglang_row("prefill", 1 << 32));
    let p = write(dir.path(), "t.jsonl", &text);
    let e = read_all(SglangReader::open(&p, 16).unwrap()).unwrap_err();
    assert!(e.contains("t.jsonl:3:") && e.contains("token_index"), "{e}");
    // A decode token's position (prompt length + token_index) past u32 once overflowed.
    let request = r#"{"row_type":"request","request_id":"p0","input_token_ids":[5,6,7]}"#;
    let text = format!("{SGLANG_HEADER}\n{request}\n{}\n", sglang_row("decode", u32::MAX as u64));
    let p = write(dir.path(), "u.jsonl", &text);
    let e = read_all(SglangReader::open(&p, 16).unwrap()).unwrap_err();
    assert!(e.contains("u.jsonl:3:") && e.contains("position"), "{e}");
}

#[test]
fn npz_array_the_format_does_not_know_is_refused() {
    // A misspelt `gate_weights` was skipped: the trace read as one without weights.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.npz");
    let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&p).unwrap());
    let ids = ndarray::Array3::<i64>::from_shape_vec((1, 2, 2), vec![0, 1, 2, 3]).unwrap();
    w.add_array("topk_ids", &ids).unwrap();
    w.add_array("gate_weight", &ndarray::Array3::<f32>::from_elem((1, 2, 2), 0.5)).unwrap();
    w.finish().unwrap();
    let e = npz::NumpyReader::open(&p, Some(4), 16).err().expect("refused").to_string();
    assert!(e.contains("t.npz") && e.contains("array gate_weight") && e.contains("gate_weights"), "{e}");
}

#[test]
fn npz_array_stored_twice_is_refused() {
    // The zip reader keeps the last entry of a name: the first was dropped silently.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.npz");
    let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&p).unwrap());
    let ids = ndarray::Array3::<i64>::from_shape_vec((1, 2, 2), vec![0, 1, 2, 3]).unwrap();
    w.add_array("topk_ids", &ids).unwrap();
    w.add_array("families", &ndarray::Array1::<i64>::from_elem(1, 0)).unwrap();
    w.finish().unwrap();
    // Both names are 12 bytes: renaming one entry in place makes two `topk_ids`.
    let mut bytes = std::fs::read(&p).unwrap();
    let (from, to) = (b"families.npy", b"topk_ids.npy");
    let at: Vec<usize> = (0..bytes.len() - from.len()).filter(|&i| &bytes[i..i + from.len()] == from).collect();
    assert_eq!(at.len(), 2, "local header and central directory");
    for i in at {
        bytes[i..i + to.len()].copy_from_slice(to);
    }
    std::fs::write(&p, bytes).unwrap();
    let e = npz::NumpyReader::open(&p, Some(4), 16).err().expect("refused").to_string();
    assert!(e.contains("t.npz") && e.contains("appears twice"), "{e}");
}

#[test]
fn npz_missing_file_is_reported_as_missing_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("absent.npz");
    let e = npz::NumpyReader::open(&p, Some(4), 16).err().expect("refused").to_string();
    assert!(e.contains("absent.npz") && !e.contains("empty file"), "{e}");
}

#[test]
fn statistics_sampled_token_with_an_expert_twice_is_refused() {
    let text = r#"{"format":"moeplace-stats","version":1,"layers":1,"experts":2,"top_k":2,"pairs":false,
"request_vectors":false,"groups":[{"family":null,"phase":null,"tokens":1,"load":[[1,1]],"coact":[],
"transitions":[]}],"requests":[],"token_sample":{"capacity":4,"tokens":[{"hash":1,"family":null,"phase":null,
"picks":[0,0]}]}}"#;
    let e = stats_file::from_json(Path::new("s.json"), text).unwrap_err().to_string();
    assert!(e.contains("s.json") && e.contains("token_sample") && e.contains("twice"), "{e}");
}

#[test]
fn esft_last_line_cut_inside_a_number_is_refused() {
    // A cut inside the last gate weight (0.125 -> 0.12) left a valid-looking line
    // that was read with a wrong weight.
    let dir = tempfile::tempdir().unwrap();
    let fam = dir.path().join("law");
    std::fs::create_dir(&fam).unwrap();
    let line = "1\t2\t3\t4\t5\t6\t\t0.1\t0.1\t0.1\t0.1\t0.1\t0.125\n";
    write(&fam, "expert_weights_1.txt", &line.repeat(2));
    write(&fam, "expert_weights_2.txt", &format!("{line}{}", &line[..line.len() - 2]));
    let e = read_all(EsftReader::open(dir.path(), &ReadOptions::default()).unwrap()).unwrap_err();
    assert!(e.contains("expert_weights_2.txt:2:") && e.contains("truncated"), "{e}");
}

#[test]
fn jsonl_with_a_huge_batch_size_reads_without_reserving_it() {
    // --batch-tokens 10^18 once made the first batch reserve 10^18 tokens and abort.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.jsonl", &format!("{HEADER}\n{TOKEN}\n"));
    let batches = read_all(JsonlReader::open(&p, 1_000_000_000_000_000_000).unwrap()).unwrap();
    assert_eq!(batches.iter().map(TokenBatch::len).sum::<usize>(), 1);
}

#[test]
fn statistics_entries_given_twice_are_refused_not_overwritten() {
    // The later entry used to replace the earlier one's count without a word.
    let file = |coact: &str, phases: &str| {
        format!(
            r#"{{"format":"moeplace-stats","version":1,"layers":1,"experts":3,"top_k":2,"pairs":true,
"request_vectors":true,"groups":[{{"family":null,"phase":null,"tokens":2,"load":[[2,1,1]],"coact":{coact},
"transitions":[]}}],"requests":[{{"id":"r0","family":null,"phases":{phases}}}]}}"#
        )
    };
    let one_phase = r#"[{"phase":null,"tokens":2,"counts":[[0,0,2],[0,1,1],[0,2,1]]}]"#;
    let text = file("[[0,0,1,1],[0,0,2,1],[0,0,1,1]]", one_phase);
    let e = stats_file::from_json(Path::new("s.json"), &text).unwrap_err().to_string();
    assert!(e.contains("s.json") && e.contains("[0,0,1]") && e.contains("twice"), "{e}");
    let twice = r#"[{"phase":null,"tokens":1,"counts":[[0,0,1],[0,1,1]]},{"phase":null,"tokens":1,"counts":[[0,0,1],[0,2,1]]}]"#;
    let text = file("[[0,0,1,1],[0,0,2,1]]", twice);
    let e = stats_file::from_json(Path::new("s.json"), &text).unwrap_err().to_string();
    assert!(e.contains("s.json") && e.contains("r0") && e.contains("twice"), "{e}");
}

#[test]
fn jsonl_token_without_position_is_refused() {
    // FORMATS.md makes `position` required; a missing one was read as 0.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "nopos.jsonl", &format!("{HEADER}\n{TOKEN}\n{}\n", TOKEN.replace("\"position\":0,", "")));
    let e = read_all(JsonlReader::open(&p, 16).unwrap()).unwrap_err();
    assert!(e.contains("nopos.jsonl:3:") && e.contains("position"), "{e}");
}

#[test]
fn experts_or_top_k_options_that_disagree_with_the_trace_are_refused() {
    // --experts/--top-k were ignored without a word by formats that record the shape.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.jsonl", &format!("{HEADER}\n{TOKEN}\n"));
    let opts = |experts, top_k| ReadOptions { experts, top_k, ..ReadOptions::default() };
    let e = moeplace_formats::open_trace(&p, &opts(Some(8), None)).err().expect("refused").to_string();
    assert!(e.contains("t.jsonl") && e.contains("--experts") && e.contains('8'), "{e}");
    let e = moeplace_formats::open_trace(&p, &opts(None, Some(3))).err().expect("refused").to_string();
    assert!(e.contains("t.jsonl") && e.contains("--top-k"), "{e}");
    assert!(moeplace_formats::open_trace(&p, &opts(Some(4), Some(2))).is_ok());
}

#[test]
fn sglang_trace_without_its_footer_is_refused_as_truncated() {
    // A trace cut at a row boundary read as a shorter, complete one.
    let dir = tempfile::tempdir().unwrap();
    let rows = format!("{SGLANG_HEADER}\n{}\n{}\n", sglang_row("prefill", 0), sglang_row("prefill", 1));
    let p = write(dir.path(), "cut.jsonl", &rows);
    let e = read_all(SglangReader::open(&p, 16).unwrap()).unwrap_err();
    assert!(e.contains("cut.jsonl:3:") && e.contains("truncated: no footer"), "{e}");
    let footer = r#"{"row_type":"footer","prefill_dispatch_count":2,"decode_dispatch_count":0}"#;
    let p = write(dir.path(), "whole.jsonl", &format!("{rows}{footer}\n"));
    assert_eq!(read_all(SglangReader::open(&p, 16).unwrap()).unwrap()[0].len(), 2);
}

#[test]
fn sglang_request_row_with_wrong_types_is_refused() {
    // A non-list prompt read as length 0 (moving every decode position), a non-text
    // family as no family.
    let dir = tempfile::tempdir().unwrap();
    let row = sglang_row("decode", 0);
    for (name, request) in [
        ("ids.jsonl", r#"{"row_type":"request","request_id":"p0","input_token_ids":5}"#),
        ("fam.jsonl", r#"{"row_type":"request","request_id":"p0","input_token_ids":[1],"family":7}"#),
    ] {
        let p = write(dir.path(), name, &format!("{SGLANG_HEADER}\n{request}\n{row}\n"));
        let e = read_all(SglangReader::open(&p, 16).unwrap()).unwrap_err();
        assert!(e.contains(&format!("{name}:2:")) && e.contains("must be"), "{e}");
    }
}

#[test]
fn esft_short_first_layer_file_is_named_even_when_later_lines_differ() {
    // Layer 1's file ends first; the line of layers 2 and 3 disagree in length. The
    // error blamed layer 3 "against layer 1's file", a line that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let fam = dir.path().join("law");
    std::fs::create_dir(&fam).unwrap();
    let line = "1\t2\t3\t4\t5\t6\n";
    write(&fam, "expert_weights_1.txt", line);
    write(&fam, "expert_weights_2.txt", &line.repeat(2));
    write(&fam, "expert_weights_3.txt", &format!("{line}1\t2\t3\t4\t5\t6\t1\t2\t3\t4\t5\t6\n"));
    let e = read_all(EsftReader::open(dir.path(), &ReadOptions::default()).unwrap()).unwrap_err();
    assert!(e.contains("expert_weights_1.txt:2:") && e.contains("different numbers of lines"), "{e}");
}

#[test]
fn statistics_whose_pair_tables_would_not_fit_are_refused() {
    // One layer of 65536 experts: a file of a few hundred KB whose dense pair tables
    // would take 2^32 cells each.
    let load = vec!["0"; 65536].join(",");
    let text = format!(
        r#"{{"format":"moeplace-stats","version":1,"layers":1,"experts":65536,"top_k":1,"pairs":true,
"request_vectors":false,"groups":[{{"family":null,"phase":null,"tokens":0,"load":[[{load}]],"coact":[],
"transitions":[]}}],"requests":[]}}"#
    );
    let e = stats_file::from_json(Path::new("s.json"), &text).unwrap_err().to_string();
    assert!(e.contains("s.json") && e.contains("pair counts") && e.contains("65536"), "{e}");
}

#[test]
fn plan_whose_input_digest_is_not_a_string_is_refused() {
    let good = plan_text("1", r#""num_slots":4"#, "[[0,1,2,3]]");
    assert!(plan_file::from_json(Path::new("p.json"), &good).is_ok());
    let text = good.replace(r#""seed":0"#, r#""seed":0,"input_digest":42"#);
    let e = plan_file::from_json(Path::new("p.json"), &text).unwrap_err().to_string();
    assert!(e.contains("p.json") && e.contains("input_digest"), "{e}");
}

#[test]
fn plan_with_a_key_given_twice_is_refused() {
    let good = plan_text("1", r#""num_slots":4"#, "[[0,1,2,3]]");
    // The second map is a valid plan too; with plain JSON parsing it silently won.
    let text = good.replace(r#""provenance""#, r#""physical_to_logical_map":[[3,2,1,0]],"provenance""#);
    let e = plan_file::from_json(Path::new("p.json"), &text).unwrap_err().to_string();
    assert!(e.contains("p.json:2") && e.contains("physical_to_logical_map") && e.contains("twice"), "{e}");
    // Keys repeated in different objects are fine.
    let nested = good.replace(r#""seed":0"#, r#""seed":0,"parameters":{"seed":"1"}"#);
    assert!(plan_file::from_json(Path::new("p.json"), &nested).is_ok());
}
