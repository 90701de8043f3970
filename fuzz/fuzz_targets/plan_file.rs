//! Plan files (`plan_file::from_json`, and `plan_file::read` from a file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::plan_file;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("plan.json", data);
    match plan_file::read(&path) {
        Ok(plan) => {
            // A plan that reads must also write: `to_json` checks it again.
            plan_file::to_json(&plan).expect("a plan that reads is one that writes");
        }
        Err(e) => moeplace_fuzz::check_error(&e, &path),
    }
});
