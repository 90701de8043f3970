//! The binary statistics file: same statistics as JSON, damaged files refused with
//! the file named, later additions to the header read or refused as they ask.

use std::path::Path;

use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::{ModelShape, Phase, TokenBatch, TokenRef};
use moeplace_formats::stats_binary::MAGIC;
use moeplace_formats::stats_file::{self, Encoding};

fn stats() -> Statistics {
    let shape = ModelShape::new(3, 8, 2).unwrap();
    let mut b = TokenBatch::new(shape);
    for i in 0..40u16 {
        let ids: Vec<u16> = (0..3).flat_map(|l| [(i + l) % 8, (i * 3 + l + 1) % 8]).collect();
        let ids: Vec<u16> =
            ids.chunks(2).flat_map(|c| if c[0] == c[1] { [c[0], (c[1] + 1) % 8] } else { [c[0], c[1]] }).collect();
        b.push(TokenRef {
            request: &format!("r{}", i % 5),
            family: Some(if i % 5 < 2 { "code" } else { "math" }),
            phase: Some(if i % 3 == 0 { Phase::Decode } else { Phase::Prefill }),
            position: u32::from(i),
            experts: &ids,
            gate_weights: None,
        })
        .unwrap();
    }
    let mut s = Statistics::new(shape, ProfileOptions::default());
    s.add_batch(&b).unwrap();
    s
}

/// The bytes with the header JSON replaced by `edit(header)`.
fn with_header(bytes: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let n = MAGIC.len();
    let len = u32::from_le_bytes(bytes[n..n + 4].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[n + 4..n + 4 + len]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = bytes[..n].to_vec();
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[n + 4 + len..]);
    out
}

fn read(bytes: &[u8]) -> Result<Statistics, String> {
    stats_file::from_bytes(Path::new("s.bin"), bytes).map_err(|e| e.to_string())
}

#[test]
fn binary_and_json_hold_the_same_statistics() {
    let s = stats();
    let bin = stats_file::to_bytes(&s, Encoding::Binary);
    let json = stats_file::to_bytes(&s, Encoding::Json);
    assert!(bin.starts_with(MAGIC) && stats_file::is_statistics_head(&bin[..64]));
    assert!(stats_file::is_statistics_head(&json[..64]));
    assert_eq!(read(&bin).unwrap(), s);
    assert_eq!(read(&json).unwrap(), s);
    assert_eq!(Encoding::for_path(Path::new("a/s.json")), Encoding::Json);
    assert_eq!(Encoding::for_path(Path::new("s.JSON")), Encoding::Json);
    assert_eq!(Encoding::for_path(Path::new("s.bin")), Encoding::Binary);
    assert_eq!(Encoding::for_path(Path::new("stats")), Encoding::Binary);
}

#[test]
fn reading_with_progress_reports_every_byte_in_order_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let s = stats();
    let p = dir.path().join("s.bin");
    stats_file::write(&p, &s).unwrap();
    let size = std::fs::metadata(&p).unwrap().len();
    let mut calls: Vec<(u64, u64)> = Vec::new();
    let (back, digest) =
        stats_file::read_parts_with_digest_progress(&p, moeplace_core::stats::Parts::ALL, &mut |done, total| {
            calls.push((done, total))
        })
        .unwrap();
    assert_eq!(back, s);
    assert_eq!(digest, moeplace_formats::plan_file::digest_file(&p).unwrap());
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert!(calls.iter().all(|&(done, total)| total == size && done <= size), "{calls:?}");
    assert_eq!(calls.last().unwrap().0, size);
    // A missing file is an error naming it, not an empty read.
    let e = stats_file::read_bytes_progress(&dir.path().join("absent.bin"), &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("absent.bin"), "{e}");
}

#[test]
fn files_are_written_as_their_name_asks_and_read_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let s = stats();
    for (name, binary) in [("s.json", false), ("s.stats", true)] {
        let p = dir.path().join(name);
        stats_file::write(&p, &s).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.starts_with(MAGIC), binary, "{name}");
        let (back, digest) = stats_file::read_with_digest(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(digest, moeplace_formats::plan_file::digest(&bytes));
        assert_eq!(moeplace_formats::plan_file::digest_file(&p).unwrap(), digest);
        assert!(stats_file::is_statistics_file(&p));
    }
    let p = dir.path().join("forced.json");
    stats_file::write_as(&p, &s, Encoding::Binary).unwrap();
    assert!(std::fs::read(&p).unwrap().starts_with(MAGIC));
}

#[test]
fn truncated_or_damaged_files_are_refused() {
    let bin = stats_file::to_bytes(&stats(), Encoding::Binary);
    for cut in [3, MAGIC.len() + 2, MAGIC.len() + 40, bin.len() - 1] {
        let e = read(&bin[..cut]).unwrap_err();
        assert!(e.starts_with("s.bin: ") && (e.contains("truncated") || e.contains("ends inside")), "{cut}: {e}");
    }
    let mut longer = bin.clone();
    longer.push(0);
    assert!(read(&longer).unwrap_err().contains("1 bytes after the last section"));
    let mut damaged = bin.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x40;
    let e = read(&damaged).unwrap_err();
    assert!(e.starts_with("s.bin: ") && e.contains("checksum mismatch"), "{e}");
}

#[test]
fn unknown_header_fields_are_read_unless_required() {
    let s = stats();
    let bin = stats_file::to_bytes(&s, Encoding::Binary);
    let extra = with_header(&bin, |h| {
        h["layer_map"] = serde_json::json!([3, 5, 7]);
    });
    assert_eq!(read(&extra).unwrap(), s);
    let required = with_header(&bin, |h| {
        h["requires"] = serde_json::json!(["layer_map"]);
    });
    let e = read(&required).unwrap_err();
    assert!(e.contains("needs \"layer_map\""), "{e}");
    let newer = with_header(&bin, |h| {
        h["version"] = serde_json::json!(99);
    });
    assert!(read(&newer).unwrap_err().contains("version 99 is not supported"));
    // A header whose counts disagree with its groups is caught by the sums.
    let wrong = with_header(&bin, |h| {
        h["groups"][0]["tokens"] = serde_json::json!(1000);
    });
    assert!(read(&wrong).unwrap_err().contains("sum to"));
}
