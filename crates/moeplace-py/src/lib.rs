//! The native part of the `moeplace` Python package. It only converts between
//! Python/NumPy and the Rust crates and calls them; every rule lives in
//! moeplace-core and every file layout in moeplace-formats. Heavy calls release the
//! GIL; bad input raises `ValueError` with the crates' messages (file, line/row/part,
//! what is wrong). The Python layer (`python/moeplace`) checks dtypes and ranks,
//! converts torch tensors and holds the documentation.

use pyo3::prelude::*;

mod arrays;
mod plan;
mod serve;
mod stats;

#[pymodule]
fn _moeplace(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<stats::PyStatistics>()?;
    m.add_class::<plan::PyPlan>()?;
    m.add_class::<serve::PyDispatcher>()?;
    m.add_class::<serve::PyRouter>()?;
    m.add_function(wrap_pyfunction!(stats::profile, m)?)?;
    m.add_function(wrap_pyfunction!(stats::read_trace, m)?)?;
    m.add_function(wrap_pyfunction!(plan::rebalance_experts, m)?)?;
    m.add_function(wrap_pyfunction!(plan::plan, m)?)?;
    m.add_function(wrap_pyfunction!(plan::placers, m)?)?;
    m.add_function(wrap_pyfunction!(plan::evaluate, m)?)?;
    m.add("DEFAULT_TOKEN_SAMPLE", moeplace_core::stats::DEFAULT_TOKEN_SAMPLE)?;
    m.add("TRACE_FORMATS", moeplace_formats::TraceFormat::NAMES.to_vec())?;
    m.add("DISPATCHERS", moeplace_core::dispatch::names())?;
    Ok(())
}
