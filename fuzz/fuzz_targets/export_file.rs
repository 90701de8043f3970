//! Engine placement files read back (`export::read`) in every export format, for a
//! model of 5 decoder layers whose layers 1..4 are MoE layers (the shared engine
//! recordings' model).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_formats::export::{self, ExportFormat};

fuzz_target!(|data: &[u8]| {
    let layers = LayerMap::new(5, vec![1, 2, 3, 4], LayerSource::Model).expect("a valid layer map");
    for format in ExportFormat::ALL {
        let path = moeplace_fuzz::file(&format!("placement.{}", format.extension()), data);
        if let Err(e) = export::read(&path, format, &layers) {
            moeplace_fuzz::check_error(&e, &path);
        }
    }
});
