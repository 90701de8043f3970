//! Defect 4 at its real size: an NPZ trace whose `topk_ids` entry passes 4 GiB
//! (zip64) is written and read back. It needs several GB of memory and 4.3 GB of
//! disk, so it runs only when `MOEPLACE_LARGE_TESTS=1` (docs/RELIABILITY.md gives
//! the command and a measured run).

use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
use moeplace_formats::npz::write_npz;

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

    // Read back through the zip crate, streaming: moeplace's NPZ reader holds the
    // ids as 8-byte integers, which would need 17 GB here.
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    for name in ["topk_ids.npy", "num_experts.npy", "request_ids.npy", "positions.npy", "request_names.npy"] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    let entry = zip.by_name("topk_ids.npy").unwrap();
    assert!(entry.size() > 4_300_800_000, "{}", entry.size());
    let mut r = std::io::BufReader::with_capacity(1 << 20, entry);
    let mut head = [0u8; 10];
    r.read_exact(&mut head).unwrap();
    assert_eq!(&head[..6], b"\x93NUMPY");
    let header_len = match head[6] {
        1 => u16::from_le_bytes([head[8], head[9]]) as usize,
        _ => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more).unwrap();
            u32::from_le_bytes([head[8], head[9], more[0], more[1]]) as usize
        }
    };
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).unwrap();
    let header = String::from_utf8(header).unwrap();
    assert!(header.contains("'<u2'") && header.contains(&format!("({tokens}, 64, 8)")), "{header}");
    let mut row = vec![0u8; n * 2];
    let mut t = 0usize;
    while t < tokens {
        r.read_exact(&mut row).unwrap();
        for l in 0..shape.layers {
            let first = u16::from_le_bytes([row[l * 16], row[l * 16 + 1]]);
            let last = u16::from_le_bytes([row[l * 16 + 14], row[l * 16 + 15]]);
            assert_eq!((first, last), (id(t, l), ((id(t, l) as usize + 7) % 256) as u16), "token {t} layer {l}");
        }
        t += 1;
    }
    assert_eq!(r.read(&mut row).unwrap(), 0, "bytes after the last token");
}
