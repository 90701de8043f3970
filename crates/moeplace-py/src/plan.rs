//! EPLB's drop-in, placers, plans and their replay.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use moeplace_core::cluster::{Cluster, Machine};
use moeplace_core::placement::Placement;
use moeplace_core::placers::{self as core_placers, Params, PlacerInput};
use moeplace_core::serving::{Homes, Serving};
use moeplace_core::simulate::{simulate, HomePolicy};
use moeplace_core::stats::ExpertLoads;
use moeplace_core::trace::{ModelShape, Trace};
use moeplace_formats::export::{self, ExportFormat};
use moeplace_formats::plan_file::{self, Plan};
use moeplace_formats::{cluster_file, open_trace, ReadOptions};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{elements, rows_to_numpy, shape_of, to_numpy, value_error};
use crate::stats::PyStatistics;

type EplbOut<'py> = (Bound<'py, PyArrayDyn<i64>>, Bound<'py, PyArrayDyn<i64>>, Bound<'py, PyArrayDyn<i64>>);

/// DeepSeek EPLB's `rebalance_experts` (method "eplb", exact) or the `balance` placer
/// (method "balance"), answering with EPLB's three int64 arrays.
#[pyfunction]
#[pyo3(signature = (weight, num_replicas, num_groups, num_nodes, num_gpus, method="balance"))]
pub fn rebalance_experts<'py>(
    py: Python<'py>,
    weight: PyReadonlyArrayDyn<'_, f64>,
    num_replicas: usize,
    num_groups: usize,
    num_nodes: usize,
    num_gpus: usize,
    method: &str,
) -> PyResult<EplbOut<'py>> {
    let dims = shape_of(&weight, "weight", 2, "[layers, experts]")?;
    let (layers, experts) = (dims[0], dims[1]);
    let flat = elements(&weight);
    if let Some((i, x)) = flat.iter().enumerate().find(|(_, x)| !x.is_finite() || **x < 0.0) {
        return Err(value_error(format!(
            "weight[{}, {}] = {x} is not a finite non-negative load",
            i / experts.max(1),
            i % experts.max(1)
        )));
    }
    let loads: Vec<Vec<f64>> = flat.chunks(experts.max(1)).map(<[f64]>::to_vec).collect();
    let (phy2log, log2phy, logcnt) = py
        .detach(|| -> Result<_, String> {
            match method {
                "eplb" => {
                    let a = core_placers::rebalance_experts(&loads, num_replicas, num_groups, num_nodes, num_gpus)
                        .map_err(|e| e.to_string())?;
                    let p: Vec<Vec<i64>> = a.phy2log.iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect();
                    let c: Vec<Vec<i64>> = a.logcnt.iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect();
                    Ok((p, a.log2phy, c))
                }
                "balance" => {
                    let p = balance_placement(loads, layers, experts, num_replicas, num_groups, num_nodes, num_gpus)?;
                    let rows = p.phy2log().iter().map(|r| r.iter().map(|&x| i64::from(x)).collect()).collect();
                    let c = p.logcnt().iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect();
                    Ok((rows, p.log2phy_padded(), c))
                }
                m => Err(format!("method {m:?} is not \"balance\" or \"eplb\"")),
            }
        })
        .map_err(value_error)?;
    let width = log2phy.first().and_then(|l| l.first()).map_or(0, Vec::len);
    let l2p: Vec<i64> = log2phy.into_iter().flatten().flatten().collect();
    Ok((
        rows_to_numpy(py, &phy2log, num_replicas)?,
        to_numpy(py, &[layers, experts, width], l2p)?,
        rows_to_numpy(py, &logcnt, experts)?,
    ))
}

/// The `balance` placer on EPLB's inputs.
fn balance_placement(
    loads: Vec<Vec<f64>>,
    layers: usize,
    experts: usize,
    slots: usize,
    groups: usize,
    nodes: usize,
    gpus: usize,
) -> Result<Placement, String> {
    let shape = ModelShape::new(layers, experts, 1).map_err(|e| e.to_string())?;
    let cluster = Cluster::new(nodes, gpus, 1).and_then(|c| c.with_slots(slots)).map_err(|e| e.to_string())?;
    let loads = ExpertLoads::new(layers, experts, vec![loads.concat()]).map_err(|e| e.to_string())?;
    let params = Params([("groups".to_string(), groups.to_string())].into_iter().collect());
    let placer = core_placers::by_name("balance").expect("the balance placer is registered");
    let input =
        PlacerInput { shape, cluster: &cluster, loads: &loads, stats: None, previous: None, params: &params, seed: 0 };
    Ok(placer.place(&input).map_err(|e| e.to_string())?.placement)
}

/// The cluster of a plan or of `plan(...)`: a cluster file, or the layout with a
/// preset's links.
fn cluster_of(
    file: Option<PathBuf>,
    machine: Option<&str>,
    nodes: usize,
    gpus: usize,
    slots: usize,
) -> Result<Cluster, String> {
    if let Some(path) = file {
        let c = cluster_file::read(&path).map_err(|e| e.to_string())?;
        if (c.nodes, c.gpus, c.slots) != (nodes, gpus, slots) {
            return Err(format!(
                "{}: the cluster is {} nodes x {} GPUs with {} slots per layer, not {nodes} x {gpus} with {slots}",
                path.display(),
                c.nodes,
                c.gpus,
                c.slots
            ));
        }
        return Ok(c);
    }
    let c = Cluster::new(nodes, gpus, 1).and_then(|c| c.with_slots(slots)).map_err(|e| e.to_string())?;
    match machine {
        None => Ok(c),
        Some(name) => Machine::by_name(name)
            .map(|p| c.with_links_of(&p))
            .ok_or_else(|| format!("unknown machine {name:?} (known: {})", Machine::names().join(", "))),
    }
}

/// A plan file: placement, nodes, family homes, provenance and notes.
#[pyclass(module = "moeplace._moeplace", name = "Plan")]
pub struct PyPlan {
    pub inner: Plan,
}

#[pymethods]
impl PyPlan {
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<PyPlan> {
        Ok(PyPlan { inner: plan_file::read(&path).map_err(value_error)? })
    }

    /// Writes the plan file (validated; output appears whole).
    fn save(&self, path: PathBuf) -> PyResult<()> {
        plan_file::write(&path, &self.inner).map_err(value_error)
    }

    /// The plan file's canonical text.
    fn to_json(&self) -> PyResult<String> {
        plan_file::to_json(&self.inner).map_err(value_error)
    }

    /// The plan in an engine's format: the text, also written to `path` if given.
    #[pyo3(signature = (engine, path=None))]
    fn export(&self, engine: &str, path: Option<PathBuf>) -> PyResult<String> {
        let names: Vec<&str> = ExportFormat::ALL.iter().map(|f| f.name()).collect();
        let f = ExportFormat::parse(engine)
            .ok_or_else(|| value_error(format!("unknown engine {engine:?} (known: {})", names.join(", "))))?;
        let text = export::render(&self.inner.placement, &self.inner.layers, f).map_err(value_error)?;
        if let Some(p) = &path {
            export::write(p, &self.inner.placement, &self.inner.layers, f).map_err(value_error)?;
        }
        Ok(text)
    }

    /// Slot -> expert per layer, int64 `[layers, slots]`.
    #[getter]
    fn physical_to_logical_map<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        let p = &self.inner.placement;
        let data = p.phy2log().iter().flatten().map(|&x| i64::from(x)).collect();
        to_numpy(py, &[p.layers(), p.slots()], data)
    }

    /// The GPU of every slot, int64 `[slots]`.
    #[getter]
    fn slot_gpus<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        let p = &self.inner.placement;
        to_numpy(py, &[p.slots()], (0..p.slots()).map(|s| p.gpu_of_slot(s) as i64).collect())
    }

    #[getter]
    fn num_gpus(&self) -> usize {
        self.inner.placement.gpus()
    }

    #[getter]
    fn num_nodes(&self) -> usize {
        self.inner.num_nodes
    }

    #[getter]
    fn num_slots(&self) -> usize {
        self.inner.placement.slots()
    }

    #[getter]
    fn num_experts(&self) -> usize {
        self.inner.placement.experts()
    }

    #[getter]
    fn num_layers(&self) -> usize {
        self.inner.placement.layers()
    }

    #[getter]
    fn family_gpus(&self) -> Option<BTreeMap<String, Vec<usize>>> {
        self.inner.family_gpus.clone()
    }

    #[getter]
    fn notes(&self) -> BTreeMap<String, f64> {
        self.inner.notes.clone()
    }

    /// How the plan is served: `{"dispatcher", "parameters", "homes"}` (the default,
    /// `nearest` with round-robin homes, for plans that name none).
    #[getter]
    fn serving<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.serving_or_default();
        let d = PyDict::new(py);
        d.set_item("dispatcher", &s.dispatcher)?;
        d.set_item("parameters", s.params.0.clone())?;
        d.set_item("homes", s.homes.name())?;
        Ok(d)
    }

    /// The model's hidden-layer (decoder-layer) count.
    #[getter]
    fn hidden_layers(&self) -> usize {
        self.inner.layers.hidden_layers()
    }

    /// The decoder-layer index of each row of the placement.
    #[getter]
    fn moe_layers(&self) -> Vec<usize> {
        self.inner.layers.moe_layers().to_vec()
    }

    /// Where the layer map came from: "input", "model" or "default".
    #[getter]
    fn layer_source(&self) -> &'static str {
        plan_file::layer_source_name(self.inner.layers.source())
    }

    #[getter]
    fn placer(&self) -> String {
        self.inner.provenance.placer.clone()
    }

    fn __eq__(&self, other: PyRef<'_, PyPlan>) -> bool {
        self.inner == other.inner
    }

    fn __repr__(&self) -> String {
        let p = &self.inner.placement;
        format!(
            "Plan({}: {} layers x {} experts on {} GPUs in {} nodes, {} slots per layer)",
            self.inner.provenance.placer,
            p.layers(),
            p.experts(),
            p.gpus(),
            self.inner.num_nodes,
            p.slots()
        )
    }
}

/// Plans a placement with a placer, as `moeplace plan` does.
#[pyfunction]
#[pyo3(signature = (stats, placer, gpus, nodes=1, slots_per_gpu=None, slots=None, params=None, seed=0, previous=None, family_shares=None, preset=None, machine=None, cluster=None))]
#[allow(clippy::too_many_arguments)]
pub fn plan(
    py: Python<'_>,
    stats: PyRef<'_, PyStatistics>,
    placer: &str,
    gpus: usize,
    nodes: usize,
    slots_per_gpu: Option<usize>,
    slots: Option<usize>,
    params: Option<BTreeMap<String, String>>,
    seed: u64,
    previous: Option<PyRef<'_, PyPlan>>,
    family_shares: Option<BTreeMap<String, f64>>,
    preset: Option<&str>,
    machine: Option<&str>,
    cluster: Option<PathBuf>,
) -> PyResult<PyPlan> {
    let experts = stats.inner.shape().experts;
    let slots = match (slots_per_gpu, slots) {
        (Some(_), Some(_)) => return Err(value_error("give slots_per_gpu or slots, not both")),
        (Some(s), None) => gpus.checked_mul(s).ok_or_else(|| value_error("slots_per_gpu x gpus is too large"))?,
        (None, Some(s)) => s,
        (None, None) => experts,
    };
    let cluster = cluster_of(cluster, machine, nodes, gpus, slots).map_err(value_error)?;
    let mut params = Params(params.unwrap_or_default());
    let previous = previous.map(|p| p.inner.placement.clone());
    let p = core_placers::by_name(placer).ok_or_else(|| {
        let names: Vec<&str> = core_placers::registry().iter().map(|p| p.name()).collect();
        value_error(format!("unknown placer {placer:?} (known: {})", names.join(", ")))
    })?;
    let preset = match preset {
        None => None,
        Some(name) => Some(core_placers::preset(p.as_ref(), name).map_err(|e| {
            let hint = if Machine::by_name(name).is_some() { " (link figures of a machine: machine=...)" } else { "" };
            value_error(format!("preset: {e}{hint}"))
        })?),
    };
    if let Some(preset) = &preset {
        params = params.over(&preset.placer_params());
    }
    let digest = stats.input_digest();
    let stats = &stats.inner;
    let out = py
        .detach(|| -> Result<Plan, String> {
            let shifted;
            let stats = match family_shares.filter(|s| !s.is_empty()) {
                None => stats,
                Some(shares) => {
                    shifted = stats.with_family_shares(&shares).map_err(|e| format!("family_shares: {e}"))?;
                    &shifted
                }
            };
            let loads = stats.loads(|_| true);
            let input = PlacerInput {
                shape: stats.shape(),
                cluster: &cluster,
                loads: &loads,
                stats: Some(stats),
                previous: previous.as_ref(),
                params: &params,
                seed,
            };
            let out = p.place(&input).map_err(|e| format!("placer {placer}: {e}"))?;
            let mut plan =
                Plan::from_placer(out, cluster.nodes, placer, &params, seed, digest, stats.layer_map().cloned());
            if let (Some(serving), Some(preset)) = (plan.serving.as_mut(), &preset) {
                serving.params = preset.serving_params().over(&serving.params);
            }
            Ok(plan)
        })
        .map_err(value_error)?;
    Ok(PyPlan { inner: out })
}

/// Every placer: name, description, serving, presets and parameters (name, default,
/// about, level), from the placers' declarations.
#[pyfunction]
pub fn placers<'py>(py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
    core_placers::registry()
        .iter()
        .map(|p| {
            let d = PyDict::new(py);
            d.set_item("name", p.name())?;
            d.set_item("about", p.about())?;
            d.set_item("serving", p.serving().label())?;
            let params: Vec<(&str, String, &str, &str)> =
                p.params().iter().map(|x| (x.name, x.default_text(), x.about, x.level.name())).collect();
            d.set_item("params", params)?;
            let presets: Vec<(&str, &str, String)> =
                p.presets().iter().map(|x| (x.name, x.about, x.settings())).collect();
            d.set_item("presets", presets)?;
            Ok(d)
        })
        .collect()
}

/// Replays trace files against a plan; the metrics as JSON text.
#[pyfunction]
#[pyo3(signature = (paths, plan, dispatcher=None, dispatcher_params=None, homes=None, request_homes=None, seed=0, format=None, experts=None, top_k=None, machine=None, cluster=None))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    plan: PyRef<'_, PyPlan>,
    dispatcher: Option<&str>,
    dispatcher_params: Option<BTreeMap<String, String>>,
    homes: Option<&str>,
    request_homes: Option<HashMap<String, usize>>,
    seed: u64,
    format: Option<&str>,
    experts: Option<usize>,
    top_k: Option<usize>,
    machine: Option<&str>,
    cluster: Option<PathBuf>,
) -> PyResult<String> {
    let plan = &plan.inner;
    let p = &plan.placement;
    let cluster = cluster_of(cluster, machine, plan.num_nodes, p.gpus(), p.slots()).map_err(value_error)?;
    // The plan's serving, changed by what is given.
    let mut serving = plan.serving_or_default();
    if let Some(d) = dispatcher.filter(|d| *d != serving.dispatcher) {
        serving = Serving { dispatcher: d.to_string(), params: Params::default(), homes: serving.homes };
    }
    serving.params.0.extend(dispatcher_params.unwrap_or_default());
    let d = serving.dispatcher(seed).map_err(value_error)?;
    let default_homes = match (serving.homes, &plan.family_gpus) {
        (Homes::Family, Some(_)) => "family",
        _ => "round-robin",
    };
    let policy = match (homes.unwrap_or(default_homes), request_homes) {
        (_, Some(m)) => HomePolicy::Request(m),
        ("round-robin", None) => HomePolicy::RoundRobin,
        ("family", None) => HomePolicy::Family(
            plan.family_gpus.clone().ok_or_else(|| value_error("homes=\"family\": the plan has no family_gpus"))?,
        ),
        (h, None) => return Err(value_error(format!("homes {h:?} is not \"round-robin\" or \"family\""))),
    };
    let format = match format {
        None => None,
        Some(f) => {
            Some(moeplace_formats::TraceFormat::parse(f).ok_or_else(|| value_error(format!("unknown format {f:?}")))?)
        }
    };
    let opts = ReadOptions { format, batch_tokens: 32768, experts, top_k, layer_map: None, slot_assignments: None };
    py.detach(|| -> Result<String, String> {
        let mut trace: Option<Trace> = None;
        for path in &paths {
            let reader = open_trace(path, &opts).map_err(|e| e.to_string())?;
            let t = trace.get_or_insert_with(|| Trace::new(reader.shape()));
            if t.shape != reader.shape() {
                return Err(format!("{}: the trace is {}, the first one {}", path.display(), reader.shape(), t.shape));
            }
            for batch in reader {
                t.batches.push(batch.map_err(|e| e.to_string())?);
            }
        }
        let trace = trace.ok_or("no trace given")?;
        let r = simulate(&trace, p, &cluster, d.as_ref(), &policy).map_err(|e| e.to_string())?;
        let mut v = serde_json::to_value(&r).map_err(|e| e.to_string())?;
        // Every figure of the protocol, and how the plan was served.
        v["balancedness_vllm"] = serde_json::json!(moeplace_core::protocol::balancedness_vllm(&r));
        v["serving"] = serde_json::json!({
            "dispatcher": serving.dispatcher,
            "parameters": serving.params.0,
            "homes": serving.homes.name(),
        });
        serde_json::to_string(&v).map_err(|e| e.to_string())
    })
    .map_err(value_error)
}
