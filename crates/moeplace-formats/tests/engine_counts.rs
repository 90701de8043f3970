//! Engine count dumps read into expert loads: SGLang `logical_count` (with and
//! without steps) and TensorRT-LLM expert statistics (summed over ranks).

use std::collections::HashMap;

use moeplace_formats::engine_counts::{read_engine_counts, read_sglang_logical_count, read_trtllm};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

#[test]
fn sglang_logical_count_with_and_without_steps() {
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two.json");
    std::fs::write(&two, r#"{"logical_count": [[1, 2, 3], [4, 5, 6]]}"#).unwrap();
    let l = read_sglang_logical_count(&two).unwrap();
    assert_eq!((l.layers, l.experts, l.steps.len()), (2, 3, 1));
    assert_eq!(l.steps[0], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let three = dir.path().join("three.json");
    std::fs::write(&three, r#"{"logical_count": [[[1, 0], [0, 1]], [[2, 2], [3, 0]]]}"#).unwrap();
    let l = read_engine_counts(&three).unwrap().unwrap();
    assert_eq!((l.layers, l.experts, l.steps.len()), (2, 2, 2));
    assert_eq!(l.total(), vec![3.0, 2.0, 3.0, 1.0]);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"logical_count": [[1, 2, 3], [4, -5, 6]]}"#).unwrap();
    let e = read_sglang_logical_count(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("logical_count[1][1]"), "{e}");
    let ragged = dir.path().join("ragged.json");
    std::fs::write(&ragged, r#"{"logical_count": [[1, 2, 3], [4, 6]]}"#).unwrap();
    assert!(read_sglang_logical_count(&ragged).unwrap_err().to_string().contains("logical_count[1]"));
}

fn write_rank(path: &std::path::Path, tensors: &[(&str, Vec<i64>)]) {
    let bytes: Vec<(String, Vec<u8>, usize)> = tensors
        .iter()
        .map(|(n, v)| (n.to_string(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
        .collect();
    let views: HashMap<String, TensorView<'_>> =
        bytes.iter().map(|(n, b, len)| (n.clone(), TensorView::new(Dtype::I64, vec![*len], b).unwrap())).collect();
    safetensors::serialize_to_file(&views, &None, path).unwrap();
}

/// A TensorRT-LLM statistics folder of 3 experts with rank 0's dump: iteration 10 of
/// layers 3 and 5, iteration 11 of layer 3.
fn three_experts_rank0() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta_info.json"), r#"{"num_experts": 3}"#).unwrap();
    write_rank(
        &dir.path().join("rank0.safetensors"),
        &[("10_3", vec![1, 2, 3]), ("10_5", vec![0, 0, 1]), ("11_3", vec![5, 0, 0])],
    );
    dir
}

#[test]
fn trtllm_statistics_sum_over_ranks_and_keep_iterations() {
    let dir = three_experts_rank0();
    write_rank(&dir.path().join("rank1.safetensors"), &[("10_3", vec![1, 1, 1]), ("11_5", vec![0, 7, 0])]);
    let l = read_trtllm(dir.path()).unwrap();
    assert_eq!((l.layers, l.experts, l.steps.len()), (2, 3, 2));
    assert_eq!(l.steps[0], vec![2.0, 3.0, 4.0, 0.0, 0.0, 1.0]);
    assert_eq!(l.steps[1], vec![5.0, 0.0, 0.0, 0.0, 7.0, 0.0]);
    assert!(read_engine_counts(dir.path()).is_some());
    write_rank(&dir.path().join("rank2.safetensors"), &[("12_3", vec![1, 1])]);
    let e = read_trtllm(dir.path()).unwrap_err().to_string();
    assert!(e.contains("rank2.safetensors") && e.contains("12_3"), "{e}");
}

#[test]
fn trtllm_statistics_missing_an_iteration_of_a_layer_are_refused() {
    // The missing (iteration, layer) was filled with zeros: an idle layer that step.
    let dir = three_experts_rank0();
    write_rank(&dir.path().join("rank1.safetensors"), &[("10_3", vec![1, 1, 1])]);
    let e = read_trtllm(dir.path()).unwrap_err().to_string();
    let name = dir.path().file_name().unwrap().to_string_lossy().into_owned();
    assert!(e.contains(&name) && e.contains("11_5") && e.contains("iteration 11 of layer 5"), "{e}");
}
