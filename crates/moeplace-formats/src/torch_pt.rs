//! Files written by `torch.save` (the zip layout, torch >= 1.6), read without Python.
//!
//! The archive holds `<name>/data.pkl` (a pickle, protocol 2 as torch writes it) and
//! one `<name>/data/<key>` entry per tensor storage. The pickle interpreter here is
//! limited to what engine recordings hold: dicts (plain and `OrderedDict`), lists,
//! tuples, integers, floats, strings, booleans, `None`, and tensors rebuilt by
//! `torch._utils._rebuild_tensor_v2` from integer or float storages. Any other object
//! is refused with an error naming it: unpickling arbitrary objects would run code.
//!
//! Allocations are bounded by the file: a storage must fit in its zip entry, which
//! must fit in the file, and a tensor must fit in its storage.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use crate::error::FormatError;

/// Element values of a tensor: integers or floats, widened.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
}

/// A dense tensor (row-major) read from the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The storage class it was saved from (`IntStorage`, `LongStorage`, ...).
    pub storage: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Integer elements; `None` for a float tensor.
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::Ints(v) => Some(v),
            TensorData::Floats(_) => None,
        }
    }

    /// Elements as floats, whatever their type.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::Ints(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Floats(v) => v.clone(),
        }
    }
}

/// A value of the pickle.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Tensor(Rc<Tensor>),
    /// A class or function named by `GLOBAL` (only the allowed ones get this far).
    Global(String),
    /// A storage loaded from the archive.
    Storage(Rc<Storage>),
    /// The MARK on the stack.
    Mark,
}

#[derive(Debug)]
pub struct Storage {
    class: String,
    data: TensorData,
}

impl Value {
    /// The entry `key` of a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(x) => Some(*x),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The keys of a dict with string keys (for messages).
    pub fn keys(&self) -> Vec<String> {
        match self {
            Value::Dict(items) => items
                .iter()
                .map(|(k, _)| match k {
                    Value::Str(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Tuple(_) => "a tuple",
            Value::Dict(_) => "a dict",
            Value::Tensor(_) => "a tensor",
            Value::Global(_) => "a class",
            Value::Storage(_) => "a storage",
            Value::Mark => "a mark",
        }
    }
}

/// Whether the file starts like a zip archive (every `torch.save` file of torch >= 1.6).
pub fn is_zip(path: &Path) -> bool {
    let mut head = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).map(|_| &head == b"PK\x03\x04").unwrap_or(false)
}

/// Reads a `torch.save` file into its pickled value.
pub fn read(path: &Path) -> Result<Value, FormatError> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        FormatError::file(
            path,
            format!(
                "not a torch.save zip archive ({e}); files written with _use_new_zipfile_serialization=False \
                 are not supported"
            ),
        )
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| FormatError::file(path, "a zip archive without data.pkl: not a torch.save file"))?;
    let prefix = pkl_name.strip_suffix("data.pkl").expect("found by suffix").to_string();
    if let Ok(order) = read_entry(path, &mut zip, &format!("{prefix}byteorder"), file_len) {
        if order.trim_ascii() != b"little" {
            return Err(FormatError::file(path, "saved on a big-endian machine: not supported"));
        }
    }
    let pkl = read_entry(path, &mut zip, &pkl_name, file_len)?;
    let mut m = Machine { path, zip: &mut zip, prefix, file_len, storages: HashMap::new() };
    m.run(&pkl)
}

fn read_entry(path: &Path, zip: &mut zip::ZipArchive<File>, name: &str, file_len: u64) -> Result<Vec<u8>, FormatError> {
    let entry = zip.by_name(name).map_err(|e| FormatError::file(path, format!("entry {name}: {e}")))?;
    let size = entry.size();
    if size > file_len {
        return Err(FormatError::file(
            path,
            format!("truncated or corrupt: entry {name} claims {size} bytes, the file has {file_len}"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut buf)
        .map_err(|e| FormatError::file(path, format!("truncated or corrupt: entry {name}: {e}")))?;
    if buf.len() as u64 != size {
        return Err(FormatError::file(path, format!("truncated: entry {name} has {} of its {size} bytes", buf.len())));
    }
    Ok(buf)
}

struct Machine<'a> {
    path: &'a Path,
    zip: &'a mut zip::ZipArchive<File>,
    prefix: String,
    file_len: u64,
    storages: HashMap<String, Rc<Storage>>,
}

const REBUILD: &str = "torch._utils._rebuild_tensor_v2";
const ORDERED_DICT: &str = "collections.OrderedDict";

/// Storage classes read: name, bytes per element, integer?
const STORAGES: &[(&str, usize, bool)] = &[
    ("torch.IntStorage", 4, true),
    ("torch.LongStorage", 8, true),
    ("torch.ShortStorage", 2, true),
    ("torch.CharStorage", 1, true),
    ("torch.ByteStorage", 1, true),
    ("torch.BoolStorage", 1, true),
    ("torch.FloatStorage", 4, false),
    ("torch.DoubleStorage", 8, false),
];

impl Machine<'_> {
    fn err(&self, pos: usize, msg: impl std::fmt::Display) -> FormatError {
        FormatError::file(self.path, format!("data.pkl at byte {pos}: {msg}"))
    }

    fn run(&mut self, code: &[u8]) -> Result<Value, FormatError> {
        let mut stack: Vec<Value> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        let mut pos = 0usize;
        macro_rules! take {
            ($n:expr) => {{
                let n: usize = $n;
                let end = pos.checked_add(n).filter(|&e| e <= code.len());
                match end {
                    Some(end) => {
                        let s = &code[pos..end];
                        pos = end;
                        s
                    }
                    None => return Err(self.err(pos, "truncated pickle")),
                }
            }};
        }
        macro_rules! pop {
            () => {
                match stack.pop() {
                    Some(v) => v,
                    None => return Err(self.err(pos, "pickle stack underflow")),
                }
            };
        }
        macro_rules! since_mark {
            () => {{
                let m = stack.iter().rposition(|v| matches!(v, Value::Mark));
                match m {
                    Some(m) => {
                        let items: Vec<Value> = stack.drain(m + 1..).collect();
                        stack.pop();
                        items
                    }
                    None => return Err(self.err(pos, "no MARK on the pickle stack")),
                }
            }};
        }
        loop {
            let at = pos;
            let op = take!(1)[0];
            match op {
                0x80 => {
                    let proto = take!(1)[0];
                    if proto > 5 {
                        return Err(self.err(at, format!("pickle protocol {proto} is not supported")));
                    }
                }
                0x95 => {
                    take!(8);
                }
                b'.' => return stack.pop().ok_or_else(|| self.err(at, "empty pickle")),
                b'(' => stack.push(Value::Mark),
                b'}' => stack.push(Value::Dict(Vec::new())),
                b']' => stack.push(Value::List(Vec::new())),
                b')' => stack.push(Value::Tuple(Vec::new())),
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'K' => stack.push(Value::Int(take!(1)[0] as i64)),
                b'M' => {
                    let b = take!(2);
                    stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                b'J' => {
                    let b = take!(4);
                    stack.push(Value::Int(i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64))
                }
                0x8a => {
                    let n = take!(1)[0] as usize;
                    let b = take!(n);
                    if n > 8 {
                        return Err(self.err(at, "an integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                }
                b'G' => {
                    let b = take!(8);
                    stack.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))))
                }
                b'X' | 0x8c => {
                    let n = if op == b'X' {
                        u32::from_le_bytes(take!(4).try_into().expect("4 bytes")) as usize
                    } else {
                        take!(1)[0] as usize
                    };
                    let s = std::str::from_utf8(take!(n)).map_err(|_| self.err(at, "a string that is not UTF-8"))?;
                    stack.push(Value::Str(s.to_string()));
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => take!(1)[0] as u32,
                        b'r' => u32::from_le_bytes(take!(4).try_into().expect("4 bytes")),
                        _ => memo.len() as u32,
                    };
                    let top = stack.last().ok_or_else(|| self.err(at, "memo of an empty stack"))?.clone();
                    memo.insert(idx, top);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        take!(1)[0] as u32
                    } else {
                        u32::from_le_bytes(take!(4).try_into().expect("4 bytes"))
                    };
                    let v = memo.get(&idx).ok_or_else(|| self.err(at, format!("memo {idx} was never set")))?.clone();
                    stack.push(v);
                }
                b't' => {
                    let items = since_mark!();
                    stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(self.err(at, "pickle stack underflow"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = since_mark!();
                    stack.push(Value::List(items));
                }
                b'd' => {
                    let items = since_mark!();
                    let d = self.pairs(at, items)?;
                    stack.push(Value::Dict(d));
                }
                b'a' => {
                    let v = pop!();
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err(self.err(at, "APPEND to something that is not a list")),
                    }
                }
                b'e' => {
                    let items = since_mark!();
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err(self.err(at, "APPENDS to something that is not a list")),
                    }
                }
                b's' => {
                    let v = pop!();
                    let k = pop!();
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => return Err(self.err(at, "SETITEM on something that is not a dict")),
                    }
                }
                b'u' => {
                    let items = since_mark!();
                    let pairs = self.pairs(at, items)?;
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => d.extend(pairs),
                        _ => return Err(self.err(at, "SETITEMS on something that is not a dict")),
                    }
                }
                b'c' => {
                    let module = self.line(code, &mut pos)?;
                    let name = self.line(code, &mut pos)?;
                    let full = format!("{module}.{name}");
                    if full != REBUILD && full != ORDERED_DICT && !STORAGES.iter().any(|s| s.0 == full) {
                        return Err(self.err(
                            at,
                            format!(
                                "unexpected object {full}: only dicts, lists, numbers, strings and integer or float \
                                 tensors are read"
                            ),
                        ));
                    }
                    stack.push(Value::Global(full));
                }
                b'Q' => {
                    let pid = pop!();
                    let st = self.storage(at, &pid)?;
                    stack.push(Value::Storage(st));
                }
                b'R' => {
                    let args = pop!();
                    let f = pop!();
                    let Value::Tuple(args) = args else {
                        return Err(self.err(at, format!("REDUCE arguments are {}, not a tuple", args.kind())));
                    };
                    let v = match &f {
                        Value::Global(g) if g == ORDERED_DICT && args.is_empty() => Value::Dict(Vec::new()),
                        Value::Global(g) if g == REBUILD => Value::Tensor(Rc::new(self.rebuild(at, &args)?)),
                        other => return Err(self.err(at, format!("cannot call {other:?}"))),
                    };
                    stack.push(v);
                }
                other => {
                    return Err(self.err(
                        at,
                        format!(
                            "pickle opcode 0x{other:02x} is not supported: only dicts, lists, numbers, strings and \
                             tensors are read"
                        ),
                    ))
                }
            }
        }
    }

    fn line(&self, code: &[u8], pos: &mut usize) -> Result<String, FormatError> {
        let rest = &code[*pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err(*pos, "truncated pickle"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err(*pos, "a name that is not UTF-8"))?;
        *pos += n + 1;
        Ok(s.to_string())
    }

    fn pairs(&self, at: usize, items: Vec<Value>) -> Result<Vec<(Value, Value)>, FormatError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(at, "a dict with an odd number of keys and values"));
        }
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    /// Loads the storage a persistent id `('storage', class, key, location, numel)` names.
    fn storage(&mut self, at: usize, pid: &Value) -> Result<Rc<Storage>, FormatError> {
        let parts = match pid {
            Value::Tuple(p) if p.len() == 5 && matches!(&p[0], Value::Str(s) if s == "storage") => p,
            other => return Err(self.err(at, format!("unexpected persistent id {other:?}"))),
        };
        let (Value::Global(class), Value::Str(key), Some(numel)) = (&parts[1], &parts[2], parts[4].as_int()) else {
            return Err(self.err(at, "a storage reference without class, key and size"));
        };
        if let Some(s) = self.storages.get(key) {
            return Ok(Rc::clone(s));
        }
        let &(_, width, is_int) = STORAGES
            .iter()
            .find(|s| s.0 == class)
            .ok_or_else(|| self.err(at, format!("storage type {class} is not supported")))?;
        let numel = usize::try_from(numel).map_err(|_| self.err(at, format!("negative storage size {numel}")))?;
        let bytes = numel
            .checked_mul(width)
            .filter(|&b| b as u64 <= self.file_len)
            .ok_or_else(|| self.err(at, format!("storage {key} claims {numel} elements, more than the file holds")))?;
        let name = format!("{}data/{key}", self.prefix);
        let raw = read_entry(self.path, self.zip, &name, self.file_len)?;
        if raw.len() < bytes {
            return Err(FormatError::file(
                self.path,
                format!("truncated: storage {name} has {} bytes, {numel} elements need {bytes}", raw.len()),
            ));
        }
        let raw = &raw[..bytes];
        let data = if is_int {
            TensorData::Ints(match width {
                1 if class == "torch.CharStorage" => raw.iter().map(|&b| b as i8 as i64).collect(),
                1 => raw.iter().map(|&b| b as i64).collect(),
                2 => raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
                4 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64).collect(),
                _ => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect(),
            })
        } else {
            TensorData::Floats(match width {
                4 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64).collect(),
                _ => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8"))).collect(),
            })
        };
        let s = Rc::new(Storage { class: class.clone(), data });
        self.storages.insert(key.clone(), Rc::clone(&s));
        Ok(s)
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild(&self, at: usize, args: &[Value]) -> Result<Tensor, FormatError> {
        let bad = |m: &str| self.err(at, format!("tensor: {m}"));
        if args.len() < 4 {
            return Err(bad("too few arguments"));
        }
        let Value::Storage(st) = &args[0] else { return Err(bad("no storage")) };
        let ints = |v: &Value, what: &str| -> Result<Vec<usize>, FormatError> {
            v.as_list()
                .ok_or_else(|| bad(&format!("{what} is not a tuple")))?
                .iter()
                .map(|x| x.as_int().and_then(|x| usize::try_from(x).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| bad(&format!("{what} holds a negative or non-integer value")))
        };
        let offset = args[1].as_int().and_then(|x| usize::try_from(x).ok()).ok_or_else(|| bad("bad offset"))?;
        let shape = ints(&args[2], "size")?;
        let stride = ints(&args[3], "stride")?;
        if shape.len() != stride.len() {
            return Err(bad("size and stride differ in length"));
        }
        let len = match &st.data {
            TensorData::Ints(v) => v.len(),
            TensorData::Floats(v) => v.len(),
        };
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("size overflows"))?;
        // Views that repeat elements (stride 0, from expand) could announce any size;
        // a tensor no larger than its storage bounds the allocation by the file.
        if numel > len {
            return Err(bad(&format!("size {shape:?} has more elements than its storage ({len})")));
        }
        if numel > 0 {
            // The last element read must lie in the storage.
            shape
                .iter()
                .zip(&stride)
                .try_fold(offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?))
                .filter(|&l| l < len)
                .ok_or_else(|| {
                    bad(&format!("size {shape:?} with stride {stride:?} reaches past its storage of {len}"))
                })?;
        }
        // Row-major gather (strides may be anything that stays in the storage).
        let mut index = Vec::with_capacity(numel);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..numel {
            index.push(offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>());
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        let data = match &st.data {
            TensorData::Ints(v) => TensorData::Ints(index.iter().map(|&i| v[i]).collect()),
            TensorData::Floats(v) => TensorData::Floats(index.iter().map(|&i| v[i]).collect()),
        };
        Ok(Tensor { storage: st.class.trim_start_matches("torch.").to_string(), shape, data })
    }
}
