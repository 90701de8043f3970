//! The plan file (docs/DESIGN.md, "Plan file"): versioned JSON carrying a placement to
//! serving engines and to `moeplace eval`.
//!
//! ```text
//! {
//!   "format": "moeplace-plan",
//!   "version": 2,
//!   "num_gpus": G, "num_nodes": N, "num_slots": S, "slots_per_gpu": S/G,
//!   "num_experts": E,
//!   "num_layers": L,
//!   "hidden_layers": H,                  // decoder layers of the model, dense included
//!   "moe_layers": [decoder-layer index of each row] x L,
//!   "layer_source": "input" | "model" | "default",
//!   "physical_to_logical_map": [[expert id per slot] x L],
//!   "family_gpus": {"law": [0, 1, 2, 3], ...},            // optional
//!   "provenance": {"placer": "linear", "parameters": {"k": "v"}, "seed": 0,
//!                  "input_digest": "fnv1a64:0123456789abcdef"},
//!   "serving": {"dispatcher": "gesr", "parameters": {"k": "v"},
//!               "homes": "family"},                         // optional
//!   "notes": {"name": number, ...},                         // placer's figures
//!   "tuning": {"objective": "remote-nodes", "min_jain": 0.99, "folds": 4,
//!              "held": true, "chosen": 2,
//!              "candidates": [{"label": "...", "parameters": {"k": "v"},
//!                              "serving": {...},
//!                              "cut": {"mean": m, "min": a, "max": b},
//!                              "jain": {"mean": m, "min": a, "max": b}}, ...]}  // optional
//! }
//! ```
//! `tuning` is what `plan --trace` tried when it tuned the placer by cross-validation
//! ([`Tuning`]): every candidate setting with the objective's cut (percent against
//! the baseline) and Jain over the held-out folds, and the index of the one chosen;
//! plans written without tuning, or before plans recorded it, have none.
//! `serving` says how the plan is served (`moeplace_core::serving`): the dispatcher,
//! its parameters and the home policy (`rr` or `family`); `plan` writes the one its
//! placer declares. Plans without it (written before plans named their serving) are
//! served with [`Serving::default`].
//! Row i of the map is MoE layer i, decoder layer `moe_layers[i]`. `layer_source` says
//! where that numbering came from: the input recorded it (engine recordings), a model
//! description gave it (`--model`, `--model-config`), or nothing told and MoE layer i
//! is taken as decoder layer i (`default`). Version 1 plans, which lack the three
//! fields, still read, with the default numbering.
//! GPU g owns slots [g*S/G, (g+1)*S/G) of each layer's S slots. `slots_per_gpu` is
//! written only when G divides S (files from before `num_slots` carry only it).
//! Every read and every write validates the placement with
//! [`Placement::new`](moeplace_core::placement::Placement::new) (errors name the layer,
//! GPU and expert), checks that GPUs divide into nodes and that `family_gpus` ids are
//! in range, non-empty and not repeated within a family. Output has no timestamps and
//! a fixed key order, so the same inputs give a byte-identical file. The input digest
//! is FNV-1a (64-bit) over the canonical statistics file text of the calibration
//! input ([`digest`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_core::placement::Placement;
use moeplace_core::placers::{Params, PlacerOutput};
use moeplace_core::serving::{Homes, Serving};
use serde_json::Value;

use crate::atomic;
use crate::error::{FormatError, Location};

pub const FORMAT_NAME: &str = "moeplace-plan";
pub const VERSION: u64 = 2;

/// The name a plan or statistics file gives a [`LayerSource`].
pub fn layer_source_name(s: LayerSource) -> &'static str {
    match s {
        LayerSource::Recorded => "input",
        LayerSource::Model => "model",
        LayerSource::Assumed => "default",
    }
}

/// Parses a `layer_source` value (the core's names are accepted too).
pub fn parse_layer_source(s: &str) -> Option<LayerSource> {
    match s {
        "input" => Some(LayerSource::Recorded),
        "default" => Some(LayerSource::Assumed),
        _ => LayerSource::parse(s),
    }
}

/// Where a plan came from.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Provenance {
    pub placer: String,
    pub parameters: BTreeMap<String, String>,
    pub seed: u64,
    /// `fnv1a64:<16 hex digits>` of the calibration statistics.
    pub input_digest: String,
}

/// A plan: placement, node count, optional family homes, provenance and notes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub num_nodes: usize,
    pub placement: Placement,
    pub family_gpus: Option<BTreeMap<String, Vec<usize>>>,
    pub provenance: Provenance,
    pub notes: BTreeMap<String, f64>,
    /// How the plan is served; `None` in plans written before plans named it.
    pub serving: Option<Serving>,
    /// The decoder-layer index of each row and the model's hidden-layer count.
    pub layers: LayerMap,
    /// What tuning tried and chose, when `plan` tuned the placer.
    pub tuning: Option<Tuning>,
}

/// Mean, least and largest of a figure over the held-out folds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// One setting tuning tried.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// One line naming the setting (`alpha=0 robust=0.5; served gesr theta=1, homes family`).
    pub label: String,
    pub parameters: BTreeMap<String, String>,
    pub serving: Serving,
    /// The objective's cut against the baseline, in percent.
    pub cut: Range,
    pub jain: Range,
}

/// What cross-validation tried and chose (`moeplace_core::tune::Tuned`, as recorded).
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// The objective's name (`remote-nodes`, `remote-gpus`, `bytes`, `all-to-all-time`).
    pub objective: String,
    /// The Jain floor every fold had to reach.
    pub min_jain: f64,
    pub folds: usize,
    /// Whether some candidate reached the floor on every fold.
    pub held: bool,
    /// Index of the chosen candidate.
    pub chosen: usize,
    pub candidates: Vec<Candidate>,
}

impl Tuning {
    pub fn from_tuned(t: &moeplace_core::tune::Tuned) -> Tuning {
        let range = |s: moeplace_core::tune::Spread| Range { mean: s.mean, min: s.min, max: s.max };
        Tuning {
            objective: t.options.objective.name().to_string(),
            min_jain: t.options.min_jain,
            folds: t.folds,
            held: t.held,
            chosen: t.chosen,
            candidates: t
                .scores
                .iter()
                .map(|s| Candidate {
                    label: s.setting.label(),
                    parameters: s.setting.params.0.clone(),
                    serving: s.setting.serving.clone(),
                    cut: range(s.cut()),
                    jain: range(s.jain()),
                })
                .collect(),
        }
    }
}

impl Plan {
    /// How the plan is served: as it says, else [`Serving::default`].
    pub fn serving_or_default(&self) -> Serving {
        self.serving.clone().unwrap_or_default()
    }

    /// The plan of a placer's output on `num_nodes` nodes, with its provenance.
    /// `input_digest` is [`digest`] of the calibration input's bytes (the statistics
    /// file or trace as read, see [`digest_file`]), computed while reading it rather
    /// than by writing the statistics out again. `layer_map` is the statistics' (the
    /// default numbering when they have none).
    pub fn from_placer(
        out: PlacerOutput,
        num_nodes: usize,
        placer: &str,
        params: &Params,
        seed: u64,
        input_digest: String,
        layer_map: Option<LayerMap>,
    ) -> Plan {
        Plan {
            num_nodes,
            family_gpus: out.family_gpus,
            provenance: Provenance { placer: placer.to_string(), parameters: params.0.clone(), seed, input_digest },
            layers: layer_map.unwrap_or_else(|| LayerMap::assumed(out.placement.layers())),
            placement: out.placement,
            notes: out.notes,
            serving: moeplace_core::placers::by_name(placer).map(|p| p.serving()),
            tuning: None,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a 64-bit digest of `bytes`, as `fnv1a64:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("fnv1a64:{:016x}", fnv1a(FNV_OFFSET, bytes))
}

/// [`digest`] of a file's bytes, read in blocks; for a folder (an ESFT log folder,
/// engine statistics), of its files' relative names and bytes in name order.
pub fn digest_file(path: &Path) -> Result<String, FormatError> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), FormatError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| FormatError::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| FormatError::io(dir, e)))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    fn add_file(mut h: u64, path: &Path) -> Result<u64, FormatError> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| FormatError::io(path, e))?;
            if n == 0 {
                return Ok(h);
            }
            h = fnv1a(h, &buf[..n]);
        }
    }
    let mut h = FNV_OFFSET;
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files)?;
        for f in files {
            let name = f.strip_prefix(path).unwrap_or(&f).to_string_lossy().replace('\\', "/");
            h = fnv1a(h, name.as_bytes());
            h = fnv1a(h, &[0]);
            h = add_file(h, &f)?;
        }
    } else {
        h = add_file(h, path)?;
    }
    Ok(format!("fnv1a64:{h:016x}"))
}

/// Checks what [`Placement::new`] does not: nodes divide GPUs, family GPU ids.
pub fn check(plan: &Plan) -> Result<(), String> {
    if plan.layers.len() != plan.placement.layers() {
        return Err(format!(
            "moe_layers lists {} MoE layers but the map has {} rows",
            plan.layers.len(),
            plan.placement.layers()
        ));
    }
    let g = plan.placement.gpus();
    if plan.num_nodes == 0 || !g.is_multiple_of(plan.num_nodes) {
        return Err(format!("{g} GPUs do not divide evenly into {} nodes", plan.num_nodes));
    }
    if let Some(f) = &plan.family_gpus {
        for (name, gpus) in f {
            if gpus.is_empty() {
                return Err(format!("family_gpus: family {name:?} has no GPUs"));
            }
            for (i, &x) in gpus.iter().enumerate() {
                if x >= g {
                    return Err(format!(
                        "family_gpus: family {name:?}: GPU {x} is out of range (the plan has {g} GPUs)"
                    ));
                }
                if gpus[..i].contains(&x) {
                    return Err(format!("family_gpus: family {name:?}: GPU {x} is listed twice"));
                }
            }
        }
    }
    if let Some(t) = &plan.tuning {
        check_tuning(t)?;
    }
    Ok(())
}

/// A tuning block names a chosen candidate that exists, finite figures in order and
/// servings that are valid.
fn check_tuning(t: &Tuning) -> Result<(), String> {
    if t.candidates.is_empty() {
        return Err("tuning: no candidates".into());
    }
    if t.chosen >= t.candidates.len() {
        return Err(format!("tuning: chosen {} but there are {} candidates", t.chosen, t.candidates.len()));
    }
    if t.folds < 2 {
        return Err(format!("tuning: {} folds (cross-validation needs at least 2)", t.folds));
    }
    if moeplace_core::tune::Objective::parse(&t.objective).is_none() {
        return Err(format!(
            "tuning: objective {:?} is not one of {}",
            t.objective,
            moeplace_core::tune::Objective::NAMES.join(", ")
        ));
    }
    if !t.min_jain.is_finite() {
        return Err("tuning: min_jain must be a number".into());
    }
    for (i, c) in t.candidates.iter().enumerate() {
        for (name, r) in [("cut", c.cut), ("jain", c.jain)] {
            if !(r.min.is_finite() && r.mean.is_finite() && r.max.is_finite()) {
                return Err(format!("tuning: candidate {i}: {name} must be numbers"));
            }
            if !(r.min <= r.mean && r.mean <= r.max) {
                return Err(format!(
                    "tuning: candidate {i}: {name} needs min <= mean <= max ({} {} {})",
                    r.min, r.mean, r.max
                ));
            }
        }
        c.serving.check().map_err(|e| format!("tuning: candidate {i}: serving: {e}"))?;
    }
    Ok(())
}

fn write_serving(s: &mut String, sv: &Serving) {
    let _ = write!(
        s,
        "{{\"dispatcher\": {}, \"parameters\": {}, \"homes\": {}}}",
        js(&sv.dispatcher),
        serde_json::to_string(&sv.params.0).expect("strings serialise"),
        js(sv.homes.name())
    );
}

fn write_range(r: Range) -> String {
    format!("{{\"mean\": {}, \"min\": {}, \"max\": {}}}", num(r.mean), num(r.min), num(r.max))
}

/// A finite number as JSON (checked finite before).
fn num(x: f64) -> String {
    serde_json::to_string(&x).expect("numbers serialise")
}

/// The canonical text of a plan (validated first).
pub fn to_json(plan: &Plan) -> Result<String, String> {
    check(plan)?;
    let p = &plan.placement;
    let mut s = String::new();
    s.push_str("{\n");
    let _ = writeln!(s, "  \"format\": {},", js(FORMAT_NAME));
    let _ = writeln!(s, "  \"version\": {VERSION},");
    let _ = writeln!(s, "  \"num_gpus\": {},", p.gpus());
    let _ = writeln!(s, "  \"num_nodes\": {},", plan.num_nodes);
    let _ = writeln!(s, "  \"num_slots\": {},", p.slots());
    if let Some(spg) = p.uniform_slots_per_gpu() {
        let _ = writeln!(s, "  \"slots_per_gpu\": {spg},");
    }
    let _ = writeln!(s, "  \"num_experts\": {},", p.experts());
    let _ = writeln!(s, "  \"num_layers\": {},", p.layers());
    let _ = writeln!(s, "  \"hidden_layers\": {},", plan.layers.hidden_layers());
    let ids: Vec<String> = plan.layers.moe_layers().iter().map(usize::to_string).collect();
    let _ = writeln!(s, "  \"moe_layers\": [{}],", ids.join(", "));
    let _ = writeln!(s, "  \"layer_source\": {},", js(layer_source_name(plan.layers.source())));
    s.push_str("  \"physical_to_logical_map\": [\n");
    for (l, row) in p.phy2log().iter().enumerate() {
        let items: Vec<String> = row.iter().map(u32::to_string).collect();
        let _ = writeln!(s, "    [{}]{}", items.join(", "), if l + 1 < p.layers() { "," } else { "" });
    }
    s.push_str("  ],\n");
    if let Some(f) = &plan.family_gpus {
        s.push_str("  \"family_gpus\": {");
        let items: Vec<String> = f
            .iter()
            .map(|(k, v)| {
                let ids: Vec<String> = v.iter().map(usize::to_string).collect();
                format!("\n    {}: [{}]", js(k), ids.join(", "))
            })
            .collect();
        s.push_str(&items.join(","));
        s.push_str("\n  },\n");
    }
    let pr = &plan.provenance;
    s.push_str("  \"provenance\": {\n");
    let _ = writeln!(s, "    \"placer\": {},", js(&pr.placer));
    let _ = writeln!(s, "    \"parameters\": {},", serde_json::to_string(&pr.parameters).expect("strings serialise"));
    let _ = writeln!(s, "    \"seed\": {},", pr.seed);
    let _ = writeln!(s, "    \"input_digest\": {}", js(&pr.input_digest));
    s.push_str("  },\n");
    if let Some(sv) = &plan.serving {
        s.push_str("  \"serving\": {\n");
        let _ = writeln!(s, "    \"dispatcher\": {},", js(&sv.dispatcher));
        let _ = writeln!(s, "    \"parameters\": {},", serde_json::to_string(&sv.params.0).expect("strings serialise"));
        let _ = writeln!(s, "    \"homes\": {}", js(sv.homes.name()));
        s.push_str("  },\n");
    }
    let notes = serde_json::to_string(&plan.notes).map_err(|e| e.to_string())?;
    match &plan.tuning {
        None => {
            let _ = writeln!(s, "  \"notes\": {notes}");
        }
        Some(t) => {
            let _ = writeln!(s, "  \"notes\": {notes},");
            s.push_str("  \"tuning\": {\n");
            let _ = writeln!(s, "    \"objective\": {},", js(&t.objective));
            let _ = writeln!(s, "    \"min_jain\": {},", num(t.min_jain));
            let _ = writeln!(s, "    \"folds\": {},", t.folds);
            let _ = writeln!(s, "    \"held\": {},", t.held);
            let _ = writeln!(s, "    \"chosen\": {},", t.chosen);
            s.push_str("    \"candidates\": [\n");
            for (i, c) in t.candidates.iter().enumerate() {
                let _ = write!(
                    s,
                    "      {{\"label\": {}, \"parameters\": {}, \"serving\": ",
                    js(&c.label),
                    serde_json::to_string(&c.parameters).expect("strings serialise")
                );
                write_serving(&mut s, &c.serving);
                let _ = writeln!(
                    s,
                    ", \"cut\": {}, \"jain\": {}}}{}",
                    write_range(c.cut),
                    write_range(c.jain),
                    if i + 1 < t.candidates.len() { "," } else { "" }
                );
            }
            s.push_str("    ]\n  }\n");
        }
    }
    s.push_str("}\n");
    Ok(s)
}

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Writes a plan atomically after validating it.
pub fn write(path: &Path, plan: &Plan) -> Result<(), FormatError> {
    let text = to_json(plan).map_err(|e| FormatError::file(path, format!("refusing to write an invalid plan: {e}")))?;
    atomic::write_bytes(path, text.as_bytes())
}

/// Reads and validates a plan file.
pub fn read(path: &Path) -> Result<Plan, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    from_json(path, &text)
}

fn part(path: &Path, key: &str, msg: impl Into<String>) -> FormatError {
    FormatError::new(path, Location::Part(key.to_string()), msg)
}

fn uint(path: &Path, v: &Value, key: &str) -> Result<usize, FormatError> {
    v.get(key)
        .ok_or_else(|| part(path, key, "missing"))?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| part(path, key, "must be a non-negative integer"))
}

/// A JSON value read with every object's keys distinct: plain `Value` parsing keeps
/// the last of two equal keys, so a hand-edited plan with `physical_to_logical_map`
/// twice would silently lose one of them.
struct NoDuplicateKeys(Value);

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeysVisitor).map(NoDuplicateKeys)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, x: bool) -> Result<Value, E> {
        Ok(Value::Bool(x))
    }
    fn visit_i64<E>(self, x: i64) -> Result<Value, E> {
        Ok(Value::from(x))
    }
    fn visit_u64<E>(self, x: u64) -> Result<Value, E> {
        Ok(Value::from(x))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Value, E> {
        Ok(Value::from(x))
    }
    fn visit_str<E>(self, x: &str) -> Result<Value, E> {
        Ok(Value::String(x.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(NoDuplicateKeys(x)) = seq.next_element()? {
            items.push(x);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("key {key:?} appears twice in one object")));
            }
            let NoDuplicateKeys(x) = map.next_value()?;
            out.insert(key, x);
        }
        Ok(Value::Object(out))
    }
}

/// Parses and validates plan text (`path` names it in errors).
pub fn from_json(path: &Path, text: &str) -> Result<Plan, FormatError> {
    if text.trim().is_empty() {
        return Err(FormatError::file(path, "empty file: expected a moeplace plan (JSON)"));
    }
    let v: Value = serde_json::from_str::<NoDuplicateKeys>(text)
        .map_err(|e| FormatError::line(path, e.line() as u64, format!("not valid JSON: {e}")))?
        .0;
    let obj = v.as_object().ok_or_else(|| FormatError::file(path, "a plan is a JSON object"))?;
    // The format first: another moeplace file (statistics, a trace) is named as such
    // rather than by its first key a plan does not have.
    if let Some(other) = v.get("format").and_then(Value::as_str).filter(|&f| f != FORMAT_NAME) {
        return Err(part(path, "format", format!("{other:?} is not {FORMAT_NAME:?}; is this a plan file?")));
    }
    const KNOWN: &[&str] = &[
        "format",
        "version",
        "num_gpus",
        "num_nodes",
        "num_slots",
        "slots_per_gpu",
        "num_experts",
        "num_layers",
        "hidden_layers",
        "moe_layers",
        "layer_source",
        "physical_to_logical_map",
        "family_gpus",
        "provenance",
        "serving",
        "notes",
        "tuning",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(part(path, k, "unknown key in a plan file"));
    }
    if v.get("format").and_then(Value::as_str) != Some(FORMAT_NAME) {
        return Err(part(path, "format", format!("expected \"{FORMAT_NAME}\"; is this a plan file?")));
    }
    let version = uint(path, &v, "version")?;
    if version == 0 || version as u64 > VERSION {
        return Err(part(
            path,
            "version",
            format!("version {version} is not supported (this build reads 1 to {VERSION})"),
        ));
    }
    let gpus = uint(path, &v, "num_gpus")?;
    let nodes = uint(path, &v, "num_nodes")?;
    let total = |spg: usize| {
        spg.checked_mul(gpus).ok_or_else(|| {
            part(path, "slots_per_gpu", format!("{spg} slots per GPU on {gpus} GPUs is too large a slot count"))
        })
    };
    let slots = match (v.get("num_slots"), v.get("slots_per_gpu")) {
        (None, None) => return Err(part(path, "num_slots", "missing (give num_slots or slots_per_gpu)")),
        (Some(_), None) => uint(path, &v, "num_slots")?,
        (None, Some(_)) => total(uint(path, &v, "slots_per_gpu")?)?,
        (Some(_), Some(_)) => {
            let (n, spg) = (uint(path, &v, "num_slots")?, uint(path, &v, "slots_per_gpu")?);
            if n != total(spg)? {
                return Err(part(
                    path,
                    "slots_per_gpu",
                    format!("{spg} slots per GPU on {gpus} GPUs disagrees with num_slots {n}"),
                ));
            }
            n
        }
    };
    let experts = uint(path, &v, "num_experts")?;
    let map = v
        .get("physical_to_logical_map")
        .and_then(Value::as_array)
        .ok_or_else(|| part(path, "physical_to_logical_map", "missing or not an array of layers"))?;
    let mut rows = Vec::with_capacity(map.len());
    for (l, row) in map.iter().enumerate() {
        let row = row
            .as_array()
            .ok_or_else(|| part(path, "physical_to_logical_map", format!("layer {l} is not an array")))?;
        let ids: Option<Vec<i64>> = row.iter().map(Value::as_i64).collect();
        rows.push(ids.ok_or_else(|| {
            part(path, "physical_to_logical_map", format!("layer {l} holds something other than integers"))
        })?);
    }
    if let Some(layers) = v.get("num_layers") {
        if layers.as_u64() != Some(rows.len() as u64) {
            return Err(part(path, "num_layers", format!("says {layers} but the map has {} layers", rows.len())));
        }
    }
    let placement = Placement::with_slots(experts, gpus, slots, rows)
        .map_err(|e| part(path, "physical_to_logical_map", e.to_string()))?;
    let family_gpus = match v.get("family_gpus") {
        None | Some(Value::Null) => None,
        Some(f) => Some(
            serde_json::from_value::<BTreeMap<String, Vec<usize>>>(f.clone())
                .map_err(|e| part(path, "family_gpus", format!("expected {{family: [GPU ids]}}: {e}")))?,
        ),
    };
    let pv = v.get("provenance").ok_or_else(|| part(path, "provenance", "missing"))?;
    let provenance = Provenance {
        placer: pv
            .get("placer")
            .and_then(Value::as_str)
            .ok_or_else(|| part(path, "provenance", "`placer` missing or not a string"))?
            .to_string(),
        parameters: serde_json::from_value(pv.get("parameters").cloned().unwrap_or(Value::Object(Default::default())))
            .map_err(|e| part(path, "provenance", format!("`parameters` must map names to strings: {e}")))?,
        seed: pv
            .get("seed")
            .and_then(Value::as_u64)
            .ok_or_else(|| part(path, "provenance", "`seed` missing or not a non-negative integer"))?,
        // Optional (plans written by hand may lack it), but a string when present.
        input_digest: match pv.get("input_digest") {
            None | Some(Value::Null) => String::new(),
            Some(d) => {
                d.as_str().ok_or_else(|| part(path, "provenance", "`input_digest` must be a string"))?.to_string()
            }
        },
    };
    let notes = match v.get("notes") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(n) => serde_json::from_value(n.clone())
            .map_err(|e| part(path, "notes", format!("expected {{name: number}}: {e}")))?,
    };
    let serving = match v.get("serving") {
        None | Some(Value::Null) => None,
        Some(sv) => Some(read_serving(path, sv)?),
    };
    let tuning = match v.get("tuning") {
        None | Some(Value::Null) => None,
        Some(t) => Some(read_tuning(path, t)?),
    };
    let layers = plan_layers(path, &v, placement.layers())?;
    let plan = Plan { num_nodes: nodes, placement, family_gpus, provenance, notes, serving, layers, tuning };
    check(&plan).map_err(|e| FormatError::file(path, e))?;
    Ok(plan)
}

/// The `serving` object: a known dispatcher taking these parameters, a known home
/// policy.
fn read_serving(path: &Path, sv: &Value) -> Result<Serving, FormatError> {
    let err = |m: String| part(path, "serving", m);
    let obj = sv.as_object().ok_or_else(|| err("expected {\"dispatcher\": ..., \"homes\": ...}".into()))?;
    if let Some(k) = obj.keys().find(|k| !["dispatcher", "parameters", "homes"].contains(&k.as_str())) {
        return Err(err(format!("unknown key {k:?}")));
    }
    let dispatcher = sv
        .get("dispatcher")
        .and_then(Value::as_str)
        .ok_or_else(|| err("`dispatcher` missing or not a string".into()))?;
    let params: BTreeMap<String, String> =
        serde_json::from_value(sv.get("parameters").cloned().unwrap_or(Value::Object(Default::default())))
            .map_err(|e| err(format!("`parameters` must map names to strings: {e}")))?;
    let homes = sv.get("homes").and_then(Value::as_str).ok_or_else(|| err("`homes` missing or not a string".into()))?;
    let homes =
        Homes::parse(homes).ok_or_else(|| err(format!("homes {homes:?} is not one of {}", Homes::NAMES.join(", "))))?;
    let serving = Serving { dispatcher: dispatcher.to_string(), params: Params(params), homes };
    serving.check().map_err(|e| err(e.to_string()))?;
    Ok(serving)
}

/// The `tuning` object (checked further by [`check`]).
fn read_tuning(path: &Path, t: &Value) -> Result<Tuning, FormatError> {
    let err = |m: String| part(path, "tuning", m);
    let obj = t.as_object().ok_or_else(|| err("expected {\"objective\": ..., \"candidates\": [...]}".into()))?;
    const KEYS: &[&str] = &["objective", "min_jain", "folds", "held", "chosen", "candidates"];
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(err(format!("unknown key {k:?}")));
    }
    let field = |k: &str| t.get(k).ok_or_else(|| err(format!("`{k}` missing")));
    let uint = |k: &str| {
        field(k)?.as_u64().map(|x| x as usize).ok_or_else(|| err(format!("`{k}` must be a non-negative integer")))
    };
    let number = |v: &Value, what: &str| v.as_f64().ok_or_else(|| err(format!("{what} must be a number")));
    let range = |v: Option<&Value>, what: &str| -> Result<Range, FormatError> {
        let v = v.ok_or_else(|| err(format!("{what} missing")))?;
        let o = v.as_object().ok_or_else(|| err(format!("{what}: expected {{\"mean\", \"min\", \"max\"}}")))?;
        if let Some(k) = o.keys().find(|k| !["mean", "min", "max"].contains(&k.as_str())) {
            return Err(err(format!("{what}: unknown key {k:?}")));
        }
        let get = |k: &str| number(v.get(k).unwrap_or(&Value::Null), &format!("{what}.{k}"));
        Ok(Range { mean: get("mean")?, min: get("min")?, max: get("max")? })
    };
    let objective = field("objective")?.as_str().ok_or_else(|| err("`objective` must be a string".into()))?.to_string();
    let min_jain = number(field("min_jain")?, "`min_jain`")?;
    let held = field("held")?.as_bool().ok_or_else(|| err("`held` must be true or false".into()))?;
    let list = field("candidates")?.as_array().ok_or_else(|| err("`candidates` must be a list".into()))?;
    let mut candidates = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let what = format!("candidate {i}");
        let o = c.as_object().ok_or_else(|| err(format!("{what} is not an object")))?;
        const CKEYS: &[&str] = &["label", "parameters", "serving", "cut", "jain"];
        if let Some(k) = o.keys().find(|k| !CKEYS.contains(&k.as_str())) {
            return Err(err(format!("{what}: unknown key {k:?}")));
        }
        let label = c
            .get("label")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("{what}: `label` missing or not a string")))?
            .to_string();
        let parameters =
            serde_json::from_value(c.get("parameters").cloned().unwrap_or(Value::Object(Default::default())))
                .map_err(|e| err(format!("{what}: `parameters` must map names to strings: {e}")))?;
        let sv = c.get("serving").ok_or_else(|| err(format!("{what}: `serving` missing")))?;
        let serving = read_serving(path, sv).map_err(|e| err(format!("{what}: {e}")))?;
        let cut = range(c.get("cut"), &format!("{what}: `cut`"))?;
        let jain = range(c.get("jain"), &format!("{what}: `jain`"))?;
        candidates.push(Candidate { label, parameters, serving, cut, jain });
    }
    Ok(Tuning { objective, min_jain, folds: uint("folds")?, held, chosen: uint("chosen")?, candidates })
}

/// The plan's layer map: its three fields, or the default numbering when the plan has
/// none of them (version 1).
fn plan_layers(path: &Path, v: &Value, rows: usize) -> Result<LayerMap, FormatError> {
    let (h, ids, src) = (v.get("hidden_layers"), v.get("moe_layers"), v.get("layer_source"));
    if h.is_none() && ids.is_none() && src.is_none() {
        return Ok(LayerMap::assumed(rows));
    }
    let hidden = uint(path, v, "hidden_layers")?;
    let ids: Vec<usize> = ids
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
        .ok_or_else(|| part(path, "moe_layers", "missing or not a list of decoder-layer ids"))?;
    let source = match src {
        None => LayerSource::Recorded,
        Some(s) => s
            .as_str()
            .and_then(parse_layer_source)
            .ok_or_else(|| part(path, "layer_source", format!("{s} is not \"input\", \"model\" or \"default\"")))?,
    };
    if ids.len() != rows {
        return Err(part(path, "moe_layers", format!("lists {} MoE layers but the map has {rows} rows", ids.len())));
    }
    LayerMap::new(hidden, ids, source).map_err(|e| part(path, "moe_layers", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            num_nodes: 2,
            placement: Placement::new(4, 2, 3, vec![vec![0, 1, 2, 3, 2, 0], vec![3, 2, 1, 0, 1, 2]]).unwrap(),
            family_gpus: Some(BTreeMap::from([("law".into(), vec![1]), ("code \"x\"".into(), vec![0, 1])])),
            provenance: Provenance {
                placer: "linear".into(),
                parameters: BTreeMap::from([("a".into(), "1".into())]),
                seed: 7,
                input_digest: digest(b"abc"),
            },
            notes: BTreeMap::from([("bound".into(), 1.5)]),
            serving: Some(Serving::new("gesr", Homes::Family).with_param("theta", "1.5")),
            layers: LayerMap::new(5, vec![1, 3], LayerSource::Model).unwrap(),
            tuning: None,
        }
    }

    fn tuning() -> Tuning {
        let c = |label: &str, theta: &str, cut: f64, jain: f64| Candidate {
            label: label.into(),
            parameters: BTreeMap::from([("alpha".into(), "0.5".into())]),
            serving: Serving::new("gesr", Homes::Family).with_param("theta", theta),
            cut: Range { mean: cut, min: cut - 2.5, max: cut + 1.0 },
            jain: Range { mean: jain, min: jain - 0.01, max: (jain + 0.005).min(1.0) },
        };
        Tuning {
            objective: "remote-nodes".into(),
            min_jain: 0.99,
            folds: 4,
            held: true,
            chosen: 1,
            candidates: vec![c("a \"quoted\"", "0.15", 12.25, 0.97), c("b", "1", 30.5, 0.995)],
        }
    }

    #[test]
    fn tuning_round_trips_and_plans_without_it_still_read() {
        let mut p = plan();
        p.tuning = Some(tuning());
        let text = to_json(&p).unwrap();
        assert!(text.contains("\"tuning\": {") && text.contains("\"chosen\": 1"), "{text}");
        let back = from_json(Path::new("p.json"), &text).unwrap();
        assert_eq!(back, p);
        assert_eq!(to_json(&back).unwrap(), text);
        // A plan written before the block reads, without it.
        let old = to_json(&plan()).unwrap();
        assert!(!old.contains("tuning"));
        assert_eq!(from_json(Path::new("p.json"), &old).unwrap().tuning, None);
    }

    #[test]
    fn bad_tuning_blocks_are_refused_with_names() {
        let mut p = plan();
        p.tuning = Some(tuning());
        let text = to_json(&p).unwrap();
        for (from, to, says) in [
            ("\"chosen\": 1", "\"chosen\": 2", "chosen 2"),
            ("\"folds\": 4", "\"folds\": 1", "folds"),
            ("\"objective\": \"remote-nodes\"", "\"objective\": \"speed\"", "speed"),
            ("\"held\": true", "\"held\": 1", "held"),
            ("\"mean\": 30.5", "\"mean\": 99", "min <= mean <= max"),
            ("\"mean\": 30.5", "\"mean\": null", "must be a number"),
            ("{\"theta\":\"1\"}", "{\"tehta\":\"1\"}", "tehta"),
            ("\"candidates\": [", "\"candidates\": [], \"x\": [", "unknown key"),
        ] {
            assert!(text.contains(from), "{from} not in {text}");
            let bad = text.replacen(from, to, 1);
            let e = from_json(Path::new("p.json"), &bad).unwrap_err().to_string();
            assert!(e.contains("tuning") && e.contains(says), "{from} -> {to}: {e}");
        }
        p.tuning.as_mut().unwrap().candidates[0].cut.mean = f64::NAN;
        assert!(to_json(&p).unwrap_err().contains("cut must be numbers"));
    }

    #[test]
    fn plans_without_serving_still_read_and_bad_serving_is_named() {
        let mut p = plan();
        p.serving = None;
        let text = to_json(&p).unwrap();
        assert!(!text.contains("serving"));
        let back = from_json(Path::new("p.json"), &text).unwrap();
        assert_eq!(back.serving_or_default(), Serving::default());
        let text = to_json(&plan()).unwrap();
        let bad = text.replace("\"theta\"", "\"tehta\"");
        let e = from_json(Path::new("p.json"), &bad).unwrap_err().to_string();
        assert!(e.contains("serving") && e.contains("tehta"), "{e}");
        let bad = text.replace("\"homes\": \"family\"", "\"homes\": \"nearby\"");
        let e = from_json(Path::new("p.json"), &bad).unwrap_err().to_string();
        assert!(e.contains("nearby"), "{e}");
    }

    #[test]
    fn version_1_plans_read_with_the_default_layers() {
        let p = plan();
        let text = to_json(&p).unwrap();
        assert!(
            text.contains("\"hidden_layers\": 5,\n  \"moe_layers\": [1, 3],\n  \"layer_source\": \"model\","),
            "{text}"
        );
        let old: String = text
            .lines()
            .filter(|l| !l.contains("hidden_layers") && !l.contains("moe_layers") && !l.contains("layer_source"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("\"version\": 2", "\"version\": 1");
        let back = from_json(Path::new("p.json"), &old).unwrap();
        assert_eq!(back.layers, LayerMap::assumed(2));
        assert!(to_json(&back).unwrap().contains("\"layer_source\": \"default\""));
        let wrong = text.replace("\"moe_layers\": [1, 3]", "\"moe_layers\": [1, 3, 4]");
        let e = from_json(Path::new("p.json"), &wrong).unwrap_err().to_string();
        assert!(e.contains("moe_layers") && e.contains("3 MoE layers"), "{e}");
        let wrong = text.replace("\"moe_layers\": [1, 3]", "\"moe_layers\": [1, 5]");
        assert!(from_json(Path::new("p.json"), &wrong).unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn round_trip_is_exact_and_canonical() {
        let p = plan();
        let text = to_json(&p).unwrap();
        let back = from_json(Path::new("p.json"), &text).unwrap();
        assert_eq!(back, p);
        assert_eq!(to_json(&back).unwrap(), text);
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(digest(b""), "fnv1a64:cbf29ce484222325");
        assert_eq!(digest(b"a"), "fnv1a64:af63dc4c8601ec8c");
    }

    #[test]
    fn invalid_plans_are_refused_with_names() {
        let text = to_json(&plan()).unwrap();
        let bad = text.replace("[0, 1, 2, 3, 2, 0]", "[0, 1, 2, 3, 3, 0]");
        let e = from_json(Path::new("p.json"), &bad).unwrap_err().to_string();
        assert!(e.contains("layer 0, GPU 1: expert 3"), "{e}");
        let bad = text.replace("\"law\": [1]", "\"law\": [2]");
        let e = from_json(Path::new("p.json"), &bad).unwrap_err().to_string();
        assert!(e.contains("GPU 2 is out of range"), "{e}");
        let bad = text.replace("\"num_nodes\": 2", "\"num_nodes\": 3");
        assert!(from_json(Path::new("p.json"), &bad).is_err());
        let mut p = plan();
        p.family_gpus = Some(BTreeMap::from([("x".into(), vec![])]));
        assert!(to_json(&p).is_err());
    }
}
