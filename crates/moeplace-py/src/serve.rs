//! Serving-time calls: replica choice per batch, and decode routers.

use moeplace_core::dispatch::{self, BatchDispatch};
use moeplace_core::requests::l2_normalise;
use moeplace_core::requests::router::{Eldr, JoinShortestQueue, RandomRouter, RoundRobin, Router};
use moeplace_core::requests::signature::Signature;
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::{elements, shape_of, to_numpy, value_error};
use crate::plan::PyPlan;

/// A dispatcher bound to a plan: one layer's top-k ids and the tokens' home ranks in,
/// physical slot ids out.
#[pyclass(module = "moeplace._moeplace", name = "Dispatcher")]
pub struct PyDispatcher {
    inner: BatchDispatch,
    slots: usize,
}

/// The slots of one batch, ids of any supported integer type.
fn dispatch_typed<'py, I, H>(
    py: Python<'py>,
    d: &BatchDispatch,
    layer: usize,
    ids: &PyReadonlyArrayDyn<'_, I>,
    homes: &PyReadonlyArrayDyn<'_, H>,
) -> PyResult<Bound<'py, PyArrayDyn<i64>>>
where
    I: Element + Copy + Into<i64> + Send + Sync,
    H: Element + Copy + Into<i64> + Send + Sync,
{
    let dims = shape_of(ids, "topk_ids", 2, "[tokens, k]")?;
    shape_of(homes, "homes", 1, "[tokens]")?;
    let (ids, homes) = (elements(ids), elements(homes));
    if homes.len() != dims[0] {
        return Err(value_error(format!("homes has {} entries for {} tokens", homes.len(), dims[0])));
    }
    let mut out = vec![0i64; ids.len()];
    py.detach(|| d.dispatch(layer, &ids, dims[1], &homes, &mut out)).map_err(value_error)?;
    to_numpy(py, &dims, out)
}

#[pymethods]
impl PyDispatcher {
    #[new]
    #[pyo3(signature = (plan, dispatcher=None, seed=0))]
    fn new(plan: PyRef<'_, PyPlan>, dispatcher: Option<&str>, seed: u64) -> PyResult<Self> {
        let p = &plan.inner;
        // The plan's own serving unless another dispatcher is named.
        let serving = p.serving_or_default();
        let d = match dispatcher.filter(|d| *d != serving.dispatcher) {
            None => serving.dispatcher(seed).map_err(value_error)?,
            Some(name) => dispatch::by_name(name, seed).ok_or_else(|| {
                value_error(format!("unknown dispatcher {name:?} (known: {})", dispatch::names().join(", ")))
            })?,
        };
        let inner = BatchDispatch::new(&p.placement, p.num_nodes, d).map_err(value_error)?;
        Ok(PyDispatcher { inner, slots: p.placement.slots() })
    }

    /// Slot ids (int64 `[tokens, k]`) for `topk_ids` (`[tokens, k]`, int32 or int64) of
    /// MoE layer `layer`, tokens homed on `homes` (`[tokens]`, int32 or int64).
    fn dispatch<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
        topk_ids: &Bound<'py, PyAny>,
        homes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        let d = &self.inner;
        let h64 = homes.extract::<PyReadonlyArrayDyn<'_, i64>>();
        let h32 = homes.extract::<PyReadonlyArrayDyn<'_, i32>>();
        let bad = || value_error("topk_ids and homes must be int32 or int64 NumPy arrays");
        if let Ok(ids) = topk_ids.extract::<PyReadonlyArrayDyn<'_, i64>>() {
            match (h64, h32) {
                (Ok(h), _) => dispatch_typed(py, d, layer, &ids, &h),
                (_, Ok(h)) => dispatch_typed(py, d, layer, &ids, &h),
                _ => Err(bad()),
            }
        } else if let Ok(ids) = topk_ids.extract::<PyReadonlyArrayDyn<'_, i32>>() {
            match (h64, h32) {
                (Ok(h), _) => dispatch_typed(py, d, layer, &ids, &h),
                (_, Ok(h)) => dispatch_typed(py, d, layer, &ids, &h),
                _ => Err(bad()),
            }
        } else {
            Err(bad())
        }
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    #[getter]
    fn num_slots(&self) -> usize {
        self.slots
    }
}

/// The decode routers of moeplace-core.
enum Kind {
    RoundRobin(RoundRobin),
    Jsq(JoinShortestQueue),
    Random(RandomRouter),
    Eldr(Eldr),
}

impl Kind {
    fn router(&mut self) -> &mut dyn Router {
        match self {
            Kind::RoundRobin(r) => r,
            Kind::Jsq(r) => r,
            Kind::Random(r) => r,
            Kind::Eldr(r) => r,
        }
    }
}

/// A decode router: a worker for each request.
#[pyclass(module = "moeplace._moeplace", name = "Router")]
pub struct PyRouter {
    kind: Kind,
    workers: usize,
    dims: usize,
}

/// A request signature from a dense vector: its non-zero entries, L2-normalised.
fn signature(v: &[f32]) -> Signature {
    let idx: Vec<u32> = (0..v.len() as u32).filter(|&i| v[i as usize] != 0.0).collect();
    let mut val: Vec<f32> = idx.iter().map(|&i| v[i as usize]).collect();
    l2_normalise(&mut val);
    Signature { idx, val }
}

fn finite(a: &[f32], name: &str) -> PyResult<()> {
    match a.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(value_error(format!("{name}: entry {i} is {}, not a finite number", a[i]))),
        None => Ok(()),
    }
}

#[pymethods]
impl PyRouter {
    /// A baseline router: "round-robin", "jsq" or "random".
    #[new]
    #[pyo3(signature = (kind, workers, seed=0))]
    fn new(kind: &str, workers: usize, seed: u64) -> PyResult<Self> {
        if workers == 0 {
            return Err(value_error("workers must be at least 1"));
        }
        let kind = match kind {
            "round-robin" => Kind::RoundRobin(RoundRobin::default()),
            "jsq" => Kind::Jsq(JoinShortestQueue),
            "random" => Kind::Random(RandomRouter::new(seed)),
            k => {
                return Err(value_error(format!(
                    "router {k:?} is not \"round-robin\", \"jsq\" or \"random\" (ELDR: Router.eldr or Router.fit_eldr)"
                )))
            }
        };
        Ok(PyRouter { kind, workers, dims: 0 })
    }

    /// ELDR from `workers x dims` centroids (normalised here) and band width `tau`.
    #[staticmethod]
    fn eldr(centroids: PyReadonlyArrayDyn<'_, f32>, tau: f32) -> PyResult<Self> {
        let dims = shape_of(&centroids, "centroids", 2, "[workers, dims]")?;
        let c = elements(&centroids);
        finite(&c, "centroids")?;
        if dims[0] == 0 || dims[1] == 0 || !tau.is_finite() || tau < 0.0 {
            return Err(value_error("ELDR needs at least one worker and dimension, and a finite tau >= 0"));
        }
        Ok(PyRouter { kind: Kind::Eldr(Eldr::from_centroids(&c, dims[1], tau)), workers: dims[0], dims: dims[1] })
    }

    /// ELDR fitted by (size-balanced) K-means over calibration signatures `[n, dims]`.
    #[staticmethod]
    #[pyo3(signature = (signatures, workers, tau, balanced=true, seed=0))]
    fn fit_eldr(
        py: Python<'_>,
        signatures: PyReadonlyArrayDyn<'_, f32>,
        workers: usize,
        tau: f32,
        balanced: bool,
        seed: u64,
    ) -> PyResult<Self> {
        let dims = shape_of(&signatures, "signatures", 2, "[requests, dims]")?;
        let s = elements(&signatures);
        finite(&s, "signatures")?;
        if !tau.is_finite() || tau < 0.0 || dims[1] == 0 {
            return Err(value_error("ELDR needs at least one dimension and a finite tau >= 0"));
        }
        let sigs: Vec<Signature> = s.chunks(dims[1]).map(signature).collect();
        let e = py.detach(|| Eldr::fit(&sigs, dims[1], workers, balanced, tau, seed)).map_err(value_error)?;
        Ok(PyRouter { kind: Kind::Eldr(e), workers, dims: dims[1] })
    }

    /// The worker for each request (`signatures` `[n, dims]`, float32; any for the
    /// baselines), in order, each adding one to its worker's load; `loads` are the
    /// workers' loads before the first. Returns int64 `[n]`.
    fn route<'py>(
        &mut self,
        py: Python<'py>,
        signatures: PyReadonlyArrayDyn<'_, f32>,
        loads: PyReadonlyArrayDyn<'_, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        let dims = shape_of(&signatures, "signatures", 2, "[requests, dims]")?;
        shape_of(&loads, "loads", 1, "[workers]")?;
        let l = elements(&loads);
        if l.len() != self.workers {
            return Err(value_error(format!("loads has {} entries for {} workers", l.len(), self.workers)));
        }
        if let Some(x) = l.iter().find(|&&x| !(0..=i64::from(u32::MAX)).contains(&x)) {
            return Err(value_error(format!("load {x} is not a count")));
        }
        if self.dims > 0 && dims[1] != self.dims {
            return Err(value_error(format!("signatures have {} dims, the router {}", dims[1], self.dims)));
        }
        let s = elements(&signatures);
        finite(&s, "signatures")?;
        let mut loads: Vec<u32> = l.iter().map(|&x| x as u32).collect();
        let kind = &mut self.kind;
        let width = dims[1].max(1);
        let out: Vec<i64> = py.detach(|| {
            (0..dims[0])
                .map(|i| {
                    let sig = signature(s.get(i * width..(i + 1) * width).unwrap_or(&[]));
                    let w = kind.router().route(&sig, &loads);
                    loads[w] = loads[w].saturating_add(1);
                    w as i64
                })
                .collect()
        });
        to_numpy(py, &[dims[0]], out)
    }

    #[getter]
    fn name(&mut self) -> String {
        self.kind.router().name()
    }

    #[getter]
    fn workers(&self) -> usize {
        self.workers
    }
}
