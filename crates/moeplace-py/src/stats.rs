//! Statistics from arrays and from files, and trace files read into arrays.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moeplace_core::model::{ModelDescription, BUILTIN_MODELS};
use moeplace_core::report::ProfileReport;
use moeplace_core::stats::{ProfileOptions, Statistics, StatisticsBuilder};
use moeplace_core::trace::{BatchColumns, ModelShape, Phase, TokenBatch};
use moeplace_formats::stats_file::{self, Encoding};
use moeplace_formats::{open_trace, ReadOptions, TraceFormat};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::arrays::{elements, shape_of, to_numpy, value_error};

/// Tokens per batch while counting: the command line's streaming batch.
const BATCH_TOKENS: usize = 32768;

/// Mergeable statistics of routing traces (see `moeplace.Statistics`).
#[pyclass(module = "moeplace._moeplace", name = "Statistics")]
pub struct PyStatistics {
    pub inner: Statistics,
    /// Digest of the file these statistics were loaded from, unchanged since: a plan
    /// names its input by it, as `moeplace plan --stats FILE` does.
    pub source_digest: Option<String>,
}

impl PyStatistics {
    pub fn new(inner: Statistics) -> Self {
        PyStatistics { inner, source_digest: None }
    }

    /// The plan's `input_digest`: of the file loaded, else of the binary file's bytes.
    pub fn input_digest(&self) -> String {
        self.source_digest.clone().unwrap_or_else(|| {
            moeplace_formats::plan_file::digest(&stats_file::to_bytes(&self.inner, Encoding::Binary))
        })
    }
}

fn encoding(format: Option<&str>, path: Option<&Path>) -> PyResult<Encoding> {
    match format {
        Some(f) => Encoding::parse(f).ok_or_else(|| {
            value_error(format!("unknown statistics format {f:?}; expected one of {}", Encoding::NAMES.join(", ")))
        }),
        None => Ok(path.map_or(Encoding::Binary, Encoding::for_path)),
    }
}

/// Per-token columns of `from_topk`, each optional (the NumPy trace's arrays).
struct Columns<'a> {
    requests: Option<&'a [i64]>,
    request_names: Option<&'a [String]>,
    families: Option<&'a [i64]>,
    family_names: Option<&'a [String]>,
    phases: Option<&'a [i64]>,
    positions: Option<&'a [i64]>,
}

/// A code's name: entry `code` of `names`, else `prefix` and the code.
fn code_name(code: i64, names: Option<&[String]>, prefix: &str, what: &str, t: usize) -> Result<String, String> {
    match names {
        None => Ok(format!("{prefix}{code}")),
        Some(n) => usize::try_from(code)
            .ok()
            .and_then(|i| n.get(i).cloned())
            .ok_or_else(|| format!("{what}[{t}]: code {code} has no name ({} names given)", n.len())),
    }
}

/// An optional per-token column, checked to be 1-D.
fn column<'a>(a: &'a Option<PyReadonlyArrayDyn<'_, i64>>, name: &str) -> PyResult<Option<Cow<'a, [i64]>>> {
    match a {
        None => Ok(None),
        Some(a) => {
            shape_of(a, name, 1, "[tokens]")?;
            Ok(Some(elements(a)))
        }
    }
}

/// Interns `name` into a batch's name list.
fn intern(names: &mut Vec<String>, index: &mut HashMap<String, u32>, name: String) -> u32 {
    if let Some(&i) = index.get(&name) {
        return i;
    }
    names.push(name.clone());
    index.insert(name, names.len() as u32 - 1);
    names.len() as u32 - 1
}

/// Counts `ids` (`tokens x layers x k`) with their columns, as a NumPy trace of the
/// same arrays is counted.
fn count_topk(shape: ModelShape, ids: &[i64], c: &Columns<'_>, options: ProfileOptions) -> Result<Statistics, String> {
    let per = shape.picks_per_token();
    let tokens = ids.len() / per;
    for (name, col) in
        [("request_ids", c.requests), ("families", c.families), ("phases", c.phases), ("positions", c.positions)]
    {
        if let Some(col) = col.filter(|v| v.len() != tokens) {
            return Err(format!("{name} has {} entries for {tokens} tokens", col.len()));
        }
    }
    if tokens == 0 {
        return Err("topk_ids holds no tokens".into());
    }
    let mut builder = StatisticsBuilder::new(shape, options);
    let mut counter: HashMap<i64, u32> = HashMap::new();
    for start in (0..tokens).step_by(BATCH_TOKENS) {
        let end = (start + BATCH_TOKENS).min(tokens);
        let mut b = BatchColumns::default();
        let (mut req_index, mut fam_index) = (HashMap::new(), HashMap::new());
        b.experts.reserve((end - start) * per);
        for t in start..end {
            for (i, &x) in ids[t * per..(t + 1) * per].iter().enumerate() {
                if !(0..shape.experts as i64).contains(&x) {
                    let (l, j) = (i / shape.top_k, i % shape.top_k);
                    return Err(format!(
                        "topk_ids[{t}, {l}, {j}] = {x} is out of range: the model has {} experts (ids 0..{})",
                        shape.experts, shape.experts
                    ));
                }
                b.experts.push(x as u16);
            }
            let r = c.requests.map_or(0, |v| v[t]);
            let name = code_name(r, c.request_names, "r", "request_ids", t)?;
            b.request.push(intern(&mut b.request_names, &mut req_index, name));
            let family = match c.families.map(|v| v[t]).filter(|&f| f >= 0) {
                None => None,
                Some(f) => {
                    let name = code_name(f, c.family_names, "f", "families", t)?;
                    Some(intern(&mut b.family_names, &mut fam_index, name))
                }
            };
            b.family.push(family);
            b.phase.push(match c.phases.map(|v| v[t]) {
                None => None,
                Some(x) if x < 0 => None,
                Some(0) => Some(Phase::Prefill),
                Some(1) => Some(Phase::Decode),
                Some(x) => return Err(format!("phases[{t}] = {x} is not 0 (prefill), 1 (decode) or negative (none)")),
            });
            let next = counter.entry(r).or_insert(0);
            let position = match c.positions.map(|v| v[t]) {
                None => *next,
                Some(p) => u32::try_from(p)
                    .map_err(|_| format!("positions[{t}] = {p} is not a 32-bit non-negative integer"))?,
            };
            *next += 1;
            b.position.push(position);
        }
        let batch = TokenBatch::from_columns(shape, b).map_err(|e| match e {
            moeplace_core::trace::ShapeError::InToken { token, error } => format!("token {}: {error}", start + token),
            e => e.to_string(),
        })?;
        builder.add_batch(&batch).map_err(|e| e.to_string())?;
    }
    Ok(builder.finish())
}

fn read_options(format: Option<&str>, experts: Option<usize>, top_k: Option<usize>) -> PyResult<ReadOptions> {
    let format = match format {
        None => None,
        Some(f) => Some(TraceFormat::parse(f).ok_or_else(|| {
            value_error(format!("unknown format {f:?}; expected one of {}", TraceFormat::NAMES.join(", ")))
        })?),
    };
    Ok(ReadOptions { format, batch_tokens: BATCH_TOKENS, experts, top_k, layer_map: None, slot_assignments: None })
}

/// One input of `profile`: a statistics file, engine counts or a trace.
fn profile_one(path: &Path, opts: &ReadOptions, options: ProfileOptions) -> Result<Statistics, String> {
    let shown = path.display();
    let stats = if stats_file::is_statistics_file(path) {
        stats_file::read(path).map_err(|e| e.to_string())?
    } else if let Some(counts) = moeplace_formats::engine_counts::read_engine_recording(path, opts) {
        // As `moeplace profile` reads them: top-k from the recording where it tells,
        // and the decoder layers it recorded, so both give the same statistics.
        let counts = counts.map_err(|e| e.to_string())?;
        let k = match (counts.top_k, opts.top_k) {
            (Some(r), Some(g)) if r != g => {
                return Err(format!("{shown}: the counts record top-{r} but top_k={g} was given"));
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => return Err(format!("{shown}: engine counts do not record top-k; pass top_k=")),
        };
        let loads = counts.loads;
        let shape = ModelShape::new(loads.layers, loads.experts, k).map_err(|e| format!("{shown}: {e}"))?;
        let total: Vec<u64> = loads.total().iter().map(|x| x.round() as u64).collect();
        let stats = Statistics::from_loads(shape, total, None).map_err(|e| format!("{shown}: {e}"))?;
        stats.with_layer_map(counts.layer_map).map_err(|e| format!("{shown}: {e}"))?
    } else {
        let mut reader = open_trace(path, opts).map_err(|e| e.to_string())?;
        let recorded = reader.layer_map();
        let mut builder = StatisticsBuilder::new(reader.shape(), options);
        for batch in &mut reader {
            builder.add_batch(&batch.map_err(|e| e.to_string())?).map_err(|e| format!("{shown}: {e}"))?;
        }
        let stats = builder.finish();
        if stats.tokens() == 0 {
            return Err(format!("{shown}: the trace holds no tokens"));
        }
        return stats.with_layer_map(recorded).map_err(|e| format!("{shown}: {e}"));
    };
    let shape = stats.shape();
    for (what, given, recorded) in [("experts", opts.experts, shape.experts), ("top_k", opts.top_k, shape.top_k)] {
        if let Some(g) = given.filter(|&g| g != recorded) {
            return Err(format!("{shown}: the statistics record {what}={recorded} but {what}={g} was given"));
        }
    }
    Ok(stats)
}

/// The model a call names: a built-in name, or the text of a Hugging Face config.json.
pub fn model_description(name: Option<&str>, config: Option<&str>) -> PyResult<Option<ModelDescription>> {
    match (name, config) {
        (Some(_), Some(_)) => Err(value_error("give model or model_config, not both")),
        (Some(n), None) => ModelDescription::builtin(n).map(Some).ok_or_else(|| {
            value_error(format!(
                "model {n:?} is not a built-in model (known: {}); give its config.json (a path or a dict)",
                BUILTIN_MODELS.join(", ")
            ))
        }),
        (None, Some(text)) => {
            moeplace_formats::model_config::parse(Path::new("model"), text).map(Some).map_err(value_error)
        }
        (None, None) => Ok(None),
    }
}

/// `stats` checked against model `m`, carrying the layer map the input recorded (if
/// it agrees with the model's) or the model's.
fn with_model(path: &Path, stats: Statistics, m: &ModelDescription) -> Result<Statistics, String> {
    let shown = path.display();
    if let Some(why) = m.mismatch(stats.shape()) {
        return Err(format!("{shown}: {why}"));
    }
    let map = match stats.layer_map() {
        Some(r) if !r.same_layers(&m.layers) => {
            return Err(format!(
                "{shown}: the input puts its MoE layers at decoder layers {:?} of {} hidden layers, but model {} has \
                 them at {:?} of {}",
                r.moe_layers(),
                r.hidden_layers(),
                m.name,
                m.layers.moe_layers(),
                m.layers.hidden_layers()
            ))
        }
        Some(r) => r.clone(),
        None => m.layers.clone(),
    };
    stats.with_layer_map(Some(map)).map_err(|e| format!("{shown}: {e}"))
}

/// Profiles traces, statistics files and engine counts into one set of statistics.
#[pyfunction]
#[pyo3(signature = (paths, format=None, experts=None, top_k=None, request_vectors=true, token_sample=moeplace_core::stats::DEFAULT_TOKEN_SAMPLE, model=None, model_config=None))]
#[allow(clippy::too_many_arguments)]
pub fn profile(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    format: Option<&str>,
    experts: Option<usize>,
    top_k: Option<usize>,
    request_vectors: bool,
    token_sample: usize,
    model: Option<&str>,
    model_config: Option<&str>,
) -> PyResult<PyStatistics> {
    let model = model_description(model, model_config)?;
    let mut opts = read_options(format, experts, top_k)?;
    if let Some(m) = &model {
        opts.top_k = opts.top_k.or(Some(m.top_k));
    }
    let options = ProfileOptions { request_vectors, token_sample };
    let stats = py
        .detach(|| {
            let mut acc: Option<Statistics> = None;
            for path in &paths {
                let s = profile_one(path, &opts, options)?;
                let s = match &model {
                    None => s,
                    Some(m) => with_model(path, s, m)?,
                };
                match &mut acc {
                    None => acc = Some(s),
                    Some(a) => a.merge(&s).map_err(|e| format!("adding {}: {e}", path.display()))?,
                }
            }
            acc.ok_or_else(|| "no input given".to_string())
        })
        .map_err(value_error)?;
    Ok(PyStatistics::new(stats))
}

/// A whole trace file as arrays: `topk_ids` (uint16, tokens x layers x k),
/// `num_experts`, `request_ids`/`request_names`, `families`/`family_names` (-1: none),
/// `phases` (0 prefill, 1 decode, -1 none), `positions`, `gate_weights` (or None).
#[pyfunction]
#[pyo3(signature = (path, format=None, experts=None, top_k=None))]
pub fn read_trace<'py>(
    py: Python<'py>,
    path: PathBuf,
    format: Option<&str>,
    experts: Option<usize>,
    top_k: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = read_options(format, experts, top_k)?;
    struct Cols {
        shape: ModelShape,
        ids: Vec<u16>,
        req: Vec<i64>,
        req_names: Vec<String>,
        fam: Vec<i64>,
        fam_names: Vec<String>,
        phase: Vec<i8>,
        pos: Vec<u32>,
        weights: Option<Vec<f32>>,
    }
    let c = py
        .detach(|| -> Result<Cols, String> {
            let mut reader = open_trace(&path, &opts).map_err(|e| e.to_string())?;
            let shape = reader.shape();
            let mut c = Cols {
                shape,
                ids: Vec::new(),
                req: Vec::new(),
                req_names: Vec::new(),
                fam: Vec::new(),
                fam_names: Vec::new(),
                phase: Vec::new(),
                pos: Vec::new(),
                weights: Some(Vec::new()),
            };
            let (mut req_index, mut fam_index) = (HashMap::new(), HashMap::new());
            for batch in &mut reader {
                let b = batch.map_err(|e| e.to_string())?;
                let req_codes: Vec<u32> =
                    b.request_names().iter().map(|n| intern(&mut c.req_names, &mut req_index, n.clone())).collect();
                let fam_codes: Vec<u32> =
                    b.family_names().iter().map(|n| intern(&mut c.fam_names, &mut fam_index, n.clone())).collect();
                c.ids.extend_from_slice(b.expert_ids());
                c.req.extend(b.request_indices().iter().map(|&r| i64::from(req_codes[r as usize])));
                c.fam.extend(b.family_indices().iter().map(|f| f.map_or(-1, |f| i64::from(fam_codes[f as usize]))));
                c.phase.extend(b.phases().iter().map(|p| match p {
                    None => -1,
                    Some(Phase::Prefill) => 0,
                    Some(Phase::Decode) => 1,
                }));
                c.pos.extend_from_slice(b.positions());
                match (&mut c.weights, b.gate_weights()) {
                    (Some(w), Some(x)) => w.extend_from_slice(x),
                    _ => c.weights = None,
                }
            }
            if c.req.is_empty() {
                return Err(format!("{}: the trace holds no tokens", path.display()));
            }
            Ok(c)
        })
        .map_err(value_error)?;
    let tokens = c.req.len();
    let dims = [tokens, c.shape.layers, c.shape.top_k];
    let d = PyDict::new(py);
    d.set_item("topk_ids", to_numpy(py, &dims, c.ids)?)?;
    d.set_item("num_experts", c.shape.experts)?;
    d.set_item("request_ids", to_numpy(py, &[tokens], c.req)?)?;
    d.set_item("request_names", c.req_names)?;
    d.set_item("families", to_numpy(py, &[tokens], c.fam)?)?;
    d.set_item("family_names", c.fam_names)?;
    d.set_item("phases", to_numpy(py, &[tokens], c.phase)?)?;
    d.set_item("positions", to_numpy(py, &[tokens], c.pos)?)?;
    match c.weights {
        Some(w) => d.set_item("gate_weights", to_numpy(py, &dims, w)?)?,
        None => d.set_item("gate_weights", py.None())?,
    }
    Ok(d)
}

#[pymethods]
impl PyStatistics {
    /// Statistics of top-k arrays; codes and names as the NumPy trace format has them.
    /// With a model (a built-in name or config.json text), the arrays must be its
    /// shape and the statistics carry its layer map, as `profile --model` gives.
    #[staticmethod]
    #[pyo3(signature = (topk_ids, num_experts=None, request_ids=None, request_names=None, families=None, family_names=None, phases=None, positions=None, request_vectors=true, token_sample=moeplace_core::stats::DEFAULT_TOKEN_SAMPLE, model=None, model_config=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_topk(
        py: Python<'_>,
        topk_ids: PyReadonlyArrayDyn<'_, i64>,
        num_experts: Option<usize>,
        request_ids: Option<PyReadonlyArrayDyn<'_, i64>>,
        request_names: Option<Vec<String>>,
        families: Option<PyReadonlyArrayDyn<'_, i64>>,
        family_names: Option<Vec<String>>,
        phases: Option<PyReadonlyArrayDyn<'_, i64>>,
        positions: Option<PyReadonlyArrayDyn<'_, i64>>,
        request_vectors: bool,
        token_sample: usize,
        model: Option<&str>,
        model_config: Option<&str>,
    ) -> PyResult<PyStatistics> {
        let model = model_description(model, model_config)?;
        let dims = shape_of(&topk_ids, "topk_ids", 3, "[tokens, layers, k]")?;
        let experts = match (num_experts, &model) {
            (Some(e), _) => e,
            (None, Some(m)) => m.experts,
            (None, None) => return Err(value_error("give num_experts=E, or model= (a built-in name or config.json)")),
        };
        let shape = ModelShape::new(dims[1], experts, dims[2]).map_err(value_error)?;
        // Checked before counting: arrays of another model are refused at once.
        if let Some(why) = model.as_ref().and_then(|m| m.mismatch(shape)) {
            return Err(value_error(format!("topk_ids [tokens, {}, {}]: {why}", dims[1], dims[2])));
        }
        let ids = elements(&topk_ids);
        let (req, fam, ph, pos) = (
            column(&request_ids, "request_ids")?,
            column(&families, "families")?,
            column(&phases, "phases")?,
            column(&positions, "positions")?,
        );
        let columns = Columns {
            requests: req.as_deref(),
            request_names: request_names.as_deref(),
            families: fam.as_deref(),
            family_names: family_names.as_deref(),
            phases: ph.as_deref(),
            positions: pos.as_deref(),
        };
        let options = ProfileOptions { request_vectors, token_sample };
        let stats = py
            .detach(|| {
                let stats = count_topk(shape, &ids, &columns, options)?;
                match &model {
                    None => Ok(stats),
                    Some(m) => with_model(Path::new("topk_ids"), stats, m),
                }
            })
            .map_err(value_error)?;
        Ok(PyStatistics::new(stats))
    }

    /// Adds `other` into these statistics (exact: shards merge to the whole).
    fn merge(&mut self, py: Python<'_>, other: PyRef<'_, PyStatistics>) -> PyResult<()> {
        let other = &other.inner;
        let inner = &mut self.inner;
        py.detach(|| inner.merge(other)).map_err(value_error)?;
        self.source_digest = None;
        Ok(())
    }

    fn copy(&self) -> PyStatistics {
        PyStatistics { inner: self.inner.clone(), source_digest: self.source_digest.clone() }
    }

    /// Writes the statistics file (as `moeplace profile -o` does; output appears whole):
    /// binary, or JSON for a `.json` name, unless `format` says.
    #[pyo3(signature = (path, format=None))]
    fn save(&self, py: Python<'_>, path: PathBuf, format: Option<&str>) -> PyResult<()> {
        let encoding = encoding(format, Some(&path))?;
        let inner = &self.inner;
        py.detach(|| stats_file::write_as(&path, inner, encoding)).map_err(value_error)
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyStatistics> {
        let (inner, digest) = py.detach(|| stats_file::read_with_digest(&path)).map_err(value_error)?;
        Ok(PyStatistics { inner, source_digest: Some(digest) })
    }

    /// The statistics file's bytes (binary unless `format="json"`).
    #[pyo3(signature = (format=None))]
    fn to_bytes<'py>(&self, py: Python<'py>, format: Option<&str>) -> PyResult<Bound<'py, PyBytes>> {
        let encoding = encoding(format, None)?;
        let inner = &self.inner;
        let data = py.detach(|| stats_file::to_bytes(inner, encoding));
        Ok(PyBytes::new(py, &data))
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<PyStatistics> {
        let inner = py.detach(|| stats_file::from_bytes(Path::new("<bytes>"), data)).map_err(value_error)?;
        Ok(PyStatistics { inner, source_digest: Some(moeplace_formats::plan_file::digest(data)) })
    }

    /// The profile report as JSON text (`moeplace profile --json`).
    fn report_json(&self, py: Python<'_>) -> PyResult<String> {
        let inner = &self.inner;
        py.detach(|| serde_json::to_string(&ProfileReport::from_statistics(inner))).map_err(value_error)
    }

    /// (layers, experts, top_k).
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let s = self.inner.shape();
        (s.layers, s.experts, s.top_k)
    }

    #[getter]
    fn tokens(&self) -> u64 {
        self.inner.tokens()
    }

    #[getter]
    fn families(&self) -> Vec<String> {
        self.inner.families()
    }

    #[getter]
    fn requests(&self) -> Vec<String> {
        self.inner.requests().keys().cloned().collect()
    }

    /// Picks per (layer, expert) over every group, uint64 `[layers, experts]`.
    fn loads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<u64>>> {
        let s = self.inner.shape();
        to_numpy(py, &[s.layers, s.experts], self.inner.pooled(|_| true).load)
    }

    fn __eq__(&self, other: PyRef<'_, PyStatistics>) -> bool {
        self.inner == other.inner
    }

    fn __repr__(&self) -> String {
        let s = self.inner.shape();
        format!(
            "Statistics({} tokens, {} layers x {} experts, top-{}, {} families, {} requests)",
            self.inner.tokens(),
            s.layers,
            s.experts,
            s.top_k,
            self.inner.families().len(),
            self.inner.requests().len()
        )
    }
}
