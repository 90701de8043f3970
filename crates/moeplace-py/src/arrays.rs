//! NumPy arrays in and out, and errors as Python exceptions.

use std::borrow::Cow;

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{Element, IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Any error as a `ValueError` with its message.
pub fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The elements of an array in C order: borrowed when it is contiguous (zero copy),
/// copied otherwise.
pub fn elements<'a, T: Element + Copy>(a: &'a PyReadonlyArrayDyn<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

/// The shape of an array, checked to have `rank` dimensions (`name` in the message).
pub fn shape_of<T: Element>(
    a: &PyReadonlyArrayDyn<'_, T>,
    name: &str,
    rank: usize,
    dims: &str,
) -> PyResult<Vec<usize>> {
    let shape = a.shape().to_vec();
    if shape.len() != rank {
        return Err(value_error(format!("{name} must be {rank}-D {dims}, got shape {shape:?}")));
    }
    Ok(shape)
}

/// A new NumPy array owning `data` (no copy) with `shape`.
pub fn to_numpy<'py, T: Element>(
    py: Python<'py>,
    shape: &[usize],
    data: Vec<T>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(value_error)?;
    Ok(a.into_pyarray(py))
}

/// Rows of equal length as one array.
pub fn rows_to_numpy<'py, T: Element + Copy>(
    py: Python<'py>,
    rows: &[Vec<T>],
    width: usize,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let data: Vec<T> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    to_numpy(py, &[rows.len(), width], data)
}
