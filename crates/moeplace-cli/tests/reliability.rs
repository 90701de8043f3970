//! Regression tests of docs/RELIABILITY.md: each defect found by the mutation
//! campaign, with a minimised input generated here. Every failure is exit status 1
//! and one message naming the file, never a panic or an abort, and nothing is lost.

mod common;

use std::path::{Path, PathBuf};

use common::moeplace;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs moeplace, expects exit 1 without a panic, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = moeplace(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "moeplace {args:?}: expected exit 1, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Defect 1: a trace of a few bytes declaring a huge expert count, or many families
/// of a large one, is refused before its tables are allocated.
#[test]
fn declared_shapes_beyond_the_memory_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one = write(
        dir.path(),
        "wide.jsonl",
        "{\"format\":\"moeplace-trace\",\"version\":1,\"layers\":1,\"experts\":32768,\"top_k\":1}\n\
         {\"request\":\"r\",\"position\":0,\"experts\":[[7]]}\n",
    );
    let err = fails(&["profile", s(&one)]);
    assert!(err.contains("wide.jsonl") && err.contains("limit of 8 GiB"), "{err}");
    let mut text =
        "{\"format\":\"moeplace-trace\",\"version\":1,\"layers\":1,\"experts\":16384,\"top_k\":1}\n".to_string();
    for f in 0..3 {
        text += &format!("{{\"request\":\"r{f}\",\"family\":\"f{f}\",\"position\":0,\"experts\":[[1]]}}\n");
    }
    let fams = write(dir.path(), "families.jsonl", &text);
    let err = fails(&["profile", s(&fams)]);
    assert!(err.contains("families.jsonl") && err.contains("limit of 8 GiB"), "{err}");
}

/// Defect 1: a small statistics file with many requests of a long model asks for
/// request vectors beyond the limit.
#[test]
fn statistics_files_beyond_the_memory_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (l, e) = (16384, 64);
    let requests: Vec<String> = (0..2100)
        .map(|i| {
            format!("{{\"id\":\"r{i}\",\"family\":null,\"phases\":[{{\"phase\":null,\"tokens\":0,\"counts\":[]}}]}}")
        })
        .collect();
    let text = format!(
        "{{\"format\":\"moeplace-stats\",\"version\":1,\"layers\":{l},\"experts\":{e},\"top_k\":1,\"pairs\":false,\
         \"request_vectors\":true,\"groups\":[],\"requests\":[{}]}}\n",
        requests.join(",")
    );
    let p = write(dir.path(), "stats.json", &text);
    let p2 = write(dir.path(), "stats2.json", &text);
    let out = dir.path().join("sum.json");
    let err = fails(&["merge", s(&p), s(&p2), "-o", s(&out)]);
    assert!(err.contains("stats.json") && err.contains("limit of 8 GiB"), "{err}");
}

/// A small trace (2 layers, 8 experts, top-2, two families) and its statistics,
/// plan, in `dir`.
fn small_inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut text = "{\"format\":\"moeplace-trace\",\"version\":1,\"layers\":2,\"experts\":8,\"top_k\":2}\n".to_string();
    for t in 0..40 {
        let (a, b) = (t % 8, (t * 3 + 1) % 8);
        let b = if a == b { (b + 1) % 8 } else { b };
        let fam = if t % 2 == 0 { "law" } else { "code" };
        text += &format!(
            "{{\"request\":\"r{}\",\"family\":\"{fam}\",\"position\":{},\"experts\":[[{a},{b}],[{b},{a}]]}}\n",
            t % 2,
            t / 2
        );
    }
    let trace = write(dir, "t.jsonl", &text);
    let stats = dir.join("stats.json");
    common::moeplace_ok(&["profile", s(&trace), "-o", s(&stats)]);
    let plan = dir.join("plan.json");
    common::moeplace_ok(&["plan", "--placer", "linear", "--stats", s(&stats), "--gpus", "4", "-o", s(&plan)]);
    (trace, stats, plan)
}

/// Defect 2: `-o` onto a symbolic link writes the file it points to (the link
/// stays); a FIFO or a device is refused and stays what it is.
#[cfg(unix)]
#[test]
fn outputs_go_through_links_and_never_replace_fifos_or_devices() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let (_, stats, _) = small_inputs(dir.path());
    let real = dir.path().join("real.json");
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink("real.json", &link).unwrap();
    common::moeplace_ok(&["plan", "--placer", "linear", "--stats", s(&stats), "--gpus", "4", "-o", s(&link)]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&real).unwrap().contains("moeplace-plan"));

    let fifo = dir.path().join("fifo.json");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = fails(&["plan", "--placer", "linear", "--stats", s(&stats), "--gpus", "4", "-o", s(&fifo)]);
    assert!(err.contains("fifo.json") && err.contains("FIFO"), "{err}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    let err = fails(&["plan", "--placer", "linear", "--stats", s(&stats), "--gpus", "4", "-o", "/dev/null"]);
    assert!(err.contains("/dev/null") && err.contains("device"), "{err}");
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

/// Defect 6: an output equal to an input (or another name of it) is refused and the
/// input is kept.
#[cfg(unix)]
#[test]
fn an_output_equal_to_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, stats, plan) = small_inputs(dir.path());
    let before: Vec<Vec<u8>> = [&trace, &stats, &plan].iter().map(|p| std::fs::read(p).unwrap()).collect();
    let alias = dir.path().join("alias.json");
    std::os::unix::fs::symlink("plan.json", &alias).unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["export", s(&plan), "--to", "sglang", "-o", s(&plan)],
        vec!["export", s(&plan), "--to", "sglang", "-o", s(&alias)],
        vec!["eval", "--trace", s(&trace), "--plan", s(&plan), "--report", s(&plan)],
        vec!["eval", "--trace", s(&trace), "--plan", s(&plan), "--report", s(&trace)],
        vec!["synth", "--fit", s(&stats), "--to", "jsonl", s(&stats)],
        vec!["merge", s(&stats), s(&stats), "-o", s(&stats)],
        vec!["profile", s(&trace), "-o", s(&trace)],
        vec!["convert", s(&trace), s(&trace), "--to", "jsonl"],
        vec!["plan", "--placer", "linear", "--stats", s(&stats), "--gpus", "4", "-o", s(&stats)],
    ];
    for args in cases {
        let err = fails(&args);
        assert!(err.contains("is also an input"), "{args:?}: {err}");
    }
    let after: Vec<Vec<u8>> = [&trace, &stats, &plan].iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after, "an input changed");
}

/// Defect 15: an output folder that cannot be written is found before the work.
#[cfg(target_os = "linux")]
#[test]
fn an_unwritable_output_folder_is_found_first() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, _, _) = small_inputs(dir.path());
    // No file can be created in /proc, even by root.
    let err = fails(&["profile", s(&trace), "-o", "/proc/moeplace-stats.json"]);
    assert!(err.contains("/proc/moeplace-stats.json") && err.contains("cannot write in its folder"), "{err}");
    assert!(!err.contains("profiling"), "{err}");
}

/// Defect 5: a temporary file left by a killed run is removed by the next write of
/// the same output, and SIGTERM during a write leaves no temporary file.
#[cfg(unix)]
#[test]
fn temporary_files_do_not_outlive_their_run() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, _, _) = small_inputs(dir.path());
    let out = dir.path().join("out.json");
    let stale = dir.path().join(".out.json.tmp4000000000");
    std::fs::write(&stale, b"half").unwrap();
    common::moeplace_ok(&["profile", s(&trace), "-o", s(&out)]);
    assert!(!stale.exists(), "the stale temporary file is removed");

    let big = dir.path().join("big.jsonl");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moeplace"))
        .args(["synth", "--layers", "4", "--experts", "16", "--top-k", "2", "--tokens", "50000000", s(&big)])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let temp = dir.path().join(format!(".big.jsonl.tmp{}", child.id()));
    let start = std::time::Instant::now();
    while !temp.exists() {
        assert!(start.elapsed().as_secs() < 60, "the temporary file never appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!temp.exists(), "SIGTERM left {}", temp.display());
    assert!(!big.exists());
}

/// Defect 3: a valid Parquet trace written by `convert`, with one byte changed at
/// each of a few hundred fixed positions (footer, page headers, pages), is either
/// read or refused with one message naming the file; never a panic or an abort.
#[test]
fn corrupted_parquet_is_read_or_refused_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, _, _) = small_inputs(dir.path());
    let good = dir.path().join("good.parquet");
    let out = moeplace(&["convert", s(&trace), s(&good)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.parquet");
    let n = bytes.len();
    // Every position of the footer end and a spread over the rest.
    let mut positions: Vec<usize> = (n.saturating_sub(120)..n).collect();
    positions.extend((0..n.saturating_sub(120)).step_by((n / 180).max(1)));
    for (i, &pos) in positions.iter().enumerate() {
        let mut b = bytes.clone();
        b[pos] ^= [0xff, 0x01, 0x80, 0x7f][i % 4];
        std::fs::write(&bad, &b).unwrap();
        let out = moeplace(&["profile", s(&bad)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "byte {pos}: panic: {err}");
        match out.status.code() {
            Some(0) => {}
            Some(1) => assert!(err.contains("bad.parquet"), "byte {pos}: file not named: {err}"),
            c => panic!("byte {pos}: exit {c:?}: {err}"),
        }
    }
}

/// Defect 3, each dependency panic of `crates/moeplace-formats/tests/dependency_panics.rs`
/// (the same small trace, the same changed byte) through `profile`: exit 1, the file
/// named, no panic message on stderr.
#[test]
fn each_dependency_panic_is_refused_by_profile_without_a_panic_message() {
    use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    let shape = ModelShape::new(2, 4, 2).unwrap();
    let mut batch = TokenBatch::new(shape);
    for t in 0..6u16 {
        let experts = [t % 4, (t + 1) % 4, (t + 2) % 4, (t + 3) % 4];
        let token = TokenRef {
            request: "r0",
            family: None,
            phase: None,
            position: t as u32,
            experts: &experts,
            gate_weights: None,
        };
        batch.push(token).unwrap();
    }
    let mut w = moeplace_formats::parquet::ParquetWriter::create(&good, shape).unwrap();
    w.write_batch(&batch).unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&good).unwrap();
    assert_eq!(bytes.len(), 1918, "the writer's bytes changed: the offsets below no longer apply");
    for (offset, value) in [
        (12, 0x00),
        (506, 0x00),
        (783, 0xa6),
        (1116, 0x42),
        (1484, 0x66),
        (1572, 0x43),
        (1719, 0x51),
        (29, 0x00),
        (85, 0xff),
        (203, 0x04),
        (179, 0x12),
    ] {
        let mut bad = bytes.clone();
        bad[offset] = value;
        let path = dir.path().join(format!("byte{offset}.parquet"));
        std::fs::write(&path, &bad).unwrap();
        let err = fails(&["profile", s(&path)]);
        assert!(err.contains(&format!("byte{offset}.parquet")) && err.contains("corrupted"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one message: {err}");
    }
}

/// Defect 16: a request length above the generator's limit was reported as bad
/// syntax; it names the limit, whichever form the length takes.
#[test]
fn request_lengths_beyond_the_limit_name_the_limit() {
    for len in ["2000000", "1..2000000", "99999999999", "lognormal:2000000:1"] {
        let err = fails(&["synth", "--requests", "2", "--prefill-len", len, "-o", "-"]);
        assert!(err.contains("1048576") && !err.contains("expected N"), "{len}: {err}");
    }
    let err = fails(&["synth", "--requests", "2", "--decode-len", "9..3", "-o", "-"]);
    assert!(err.contains("minimum 9 is above the maximum 3"), "{err}");
    let err = fails(&["synth", "--requests", "2", "--decode-len", "9-3", "-o", "-"]);
    assert!(err.contains("expected N, MIN..MAX"), "{err}");
}

/// Defect 9: absurd cluster sizes ran for minutes or aborted allocating tens of
/// gigabytes; they are refused at once with the limit named, and the baselines stay
/// quick at the limit (filling redundant slots no longer scans every GPU per expert).
#[test]
fn cluster_sizes_beyond_the_limits_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, stats, _) = small_inputs(dir.path());
    let plan = dir.path().join("p.json");
    for (placer, gpus, slots, limit) in [
        ("linear", "100000", "200000", "4096"),
        ("tacg", "100000", "100000", "4096"),
        ("balance", "2048", "20480", "16384"),
    ] {
        let err = fails(&[
            "plan",
            "--placer",
            placer,
            "--stats",
            s(&stats),
            "--gpus",
            gpus,
            "--slots",
            slots,
            "-o",
            s(&plan),
        ]);
        assert!(err.contains(limit) && err.contains("at most"), "{placer}: {err}");
        assert!(!plan.exists());
    }
    common::moeplace_ok(&[
        "plan",
        "--placer",
        "linear",
        "--stats",
        s(&stats),
        "--gpus",
        "4096",
        "--nodes",
        "512",
        "--slots",
        "16384",
        "-o",
        s(&plan),
    ]);
    assert!(plan.exists());
}

/// Defect 7: `convert` and `eval` accepted a request with two families that
/// `profile` refused (and `profile --no-request-vectors` accepted): every reader
/// refuses it, whatever reads it, and `convert` writes nothing.
#[test]
fn a_request_with_two_families_is_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, plan) = small_inputs(dir.path());
    let mut text = "{\"format\":\"moeplace-trace\",\"version\":1,\"layers\":2,\"experts\":8,\"top_k\":2}\n".to_string();
    for (t, fam) in ["code", "code", "law"].iter().enumerate() {
        text +=
            &format!("{{\"request\":\"r0\",\"family\":\"{fam}\",\"position\":{t},\"experts\":[[{t},7],[6,{t}]]}}\n");
    }
    let trace = write(dir.path(), "two.jsonl", &text);
    let out = dir.path().join("two.parquet");
    let commands: [&[&str]; 4] = [
        &["convert", s(&trace), "-o", s(&out)],
        &["eval", "--trace", s(&trace), "--plan", s(&plan)],
        &["profile", s(&trace)],
        &["profile", "--no-request-vectors", s(&trace)],
    ];
    for args in commands {
        let err = fails(args);
        assert!(err.contains("two.jsonl") && err.contains("\"code\" and of family \"law\""), "{args:?}: {err}");
    }
    assert!(!out.exists());
}

/// Item 4 of the fault list: a disk that fills up during a write. A file-size limit
/// (`ulimit -f`, with SIGXFSZ ignored so that the write fails instead of the process
/// being killed) stands in for a full disk: the failing write is the same error
/// path. Every command that writes fails with one message naming its output, leaves
/// no temporary file, and keeps the earlier good output under the final name.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_one_error_and_keeps_the_earlier_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trace = d.join("t.parquet");
    let synth = ["synth", "--layers", "4", "--experts", "16", "--top-k", "2", "--tokens", "20000", "--seed", "1"];
    let mut args: Vec<&str> = synth.to_vec();
    args.extend(["-o", s(&trace)]);
    common::moeplace_ok(&args);
    // Three plans: one plan's page of this small model is under 32 KiB.
    let plans: Vec<PathBuf> = ["linear", "round-robin", "eplb"]
        .iter()
        .map(|placer| {
            let plan = d.join(format!("{placer}.json"));
            common::moeplace_ok(&["plan", "--placer", placer, "--trace", s(&trace), "--gpus", "4", "-o", s(&plan)]);
            plan
        })
        .collect();
    // Each command with an output of well over the 16 KiB the limit allows.
    let cases: Vec<(PathBuf, Vec<String>)> = ["out.parquet", "out.jsonl", "out.npz"]
        .iter()
        .map(|name| {
            let out = d.join(name);
            let mut a: Vec<String> = synth.iter().map(|x| x.to_string()).collect();
            a.extend(["-o".into(), s(&out).into()]);
            (out, a)
        })
        .chain(["stats.bin", "stats.json"].iter().map(|name| {
            let out = d.join(name);
            (out.clone(), vec!["profile".into(), s(&trace).into(), "-o".into(), s(&out).into()])
        }))
        .chain(std::iter::once({
            let out = d.join("conv.jsonl");
            (out.clone(), vec!["convert".into(), s(&trace).into(), "-o".into(), s(&out).into()])
        }))
        .chain(std::iter::once({
            let out = d.join("report.html");
            let a = [
                "eval",
                "--trace",
                s(&trace),
                "--plan",
                s(&plans[0]),
                "--plan",
                s(&plans[1]),
                "--plan",
                s(&plans[2]),
                "-o",
                s(&out),
            ];
            let a: Vec<String> = a.iter().map(|x| x.to_string()).collect();
            (out, a)
        }))
        .collect();
    for (out, args) in &cases {
        // The earlier good output.
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = moeplace(&a);
        assert!(r.status.success(), "{args:?}: {}", String::from_utf8_lossy(&r.stderr));
        let before = std::fs::read(out).unwrap();
        assert!(before.len() > 32 * 1024, "{} is only {} bytes", out.display(), before.len());
        // The same command on a disk with room for 16 KiB.
        let r = std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 32; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_moeplace"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?} on a full disk: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(out.to_str().unwrap()), "{args:?}: the error names the output: {err}");
        assert_eq!(std::fs::read(out).unwrap(), before, "{} changed", out.display());
        let temps: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(temps.is_empty(), "{args:?} left {temps:?}");
    }
}

/// The same input given twice (by its path or through a link) would have its counts
/// added twice: `profile`, `plan --stats` of several and `merge` refuse it.
#[cfg(unix)]
#[test]
fn an_input_given_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (trace, stats, _) = small_inputs(dir.path());
    let link = dir.path().join("again.jsonl");
    std::os::unix::fs::symlink(&trace, &link).unwrap();
    for args in [
        vec!["profile", s(&trace), s(&trace)],
        vec!["profile", s(&trace), s(&link)],
        vec!["merge", s(&stats), s(&stats), "-o", "-"],
    ] {
        let err = fails(&args);
        assert!(err.contains("is given twice") && err.contains(args[1]), "{args:?}: {err}");
    }
}
