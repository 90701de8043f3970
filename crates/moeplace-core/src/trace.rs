//! The trace model: tokens x MoE layers x top-k expert ids, with the request,
//! family, phase and position of every token (docs/DESIGN.md, "Trace record").
//!
//! Traces travel in [`TokenBatch`]es so that readers can stream files of any size
//! with bounded memory. A batch is columnar: expert ids of all tokens sit in one
//! flat `u16` array (`token * layers * k + layer * k + slot`), which is what the
//! statistics and the simulator loop over.

use std::collections::HashMap;
use std::fmt;

/// The shape of a model's MoE part: how many MoE layers, routed experts per layer,
/// and experts each token picks per layer (top-k).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ModelShape {
    pub layers: usize,
    pub experts: usize,
    pub top_k: usize,
}

/// Largest expert count a trace may have: expert ids are stored as `u16`.
pub const MAX_EXPERTS: usize = u16::MAX as usize + 1;

/// Largest MoE layer count a trace may have (real models have well under a hundred);
/// it keeps sizes computed from a file's declared shape far from overflow.
pub const MAX_LAYERS: usize = 1 << 16;

impl ModelShape {
    /// Checks the shape is usable: at least one layer and expert, 1 <= k <= experts.
    pub fn new(layers: usize, experts: usize, top_k: usize) -> Result<Self, ShapeError> {
        let shape = ModelShape { layers, experts, top_k };
        shape.validate()?;
        Ok(shape)
    }

    pub fn validate(&self) -> Result<(), ShapeError> {
        if self.layers == 0 {
            return Err(ShapeError::BadShape("the model has zero MoE layers".into()));
        }
        if self.layers > MAX_LAYERS {
            return Err(ShapeError::BadShape(format!(
                "{} MoE layers is more than the supported {MAX_LAYERS}",
                self.layers
            )));
        }
        if self.experts == 0 {
            return Err(ShapeError::BadShape("the model has zero experts".into()));
        }
        if self.experts > MAX_EXPERTS {
            return Err(ShapeError::BadShape(format!(
                "{} experts per layer is more than the supported {MAX_EXPERTS}",
                self.experts
            )));
        }
        if self.top_k == 0 || self.top_k > self.experts {
            return Err(ShapeError::BadShape(format!(
                "top-k {} must be between 1 and the number of experts ({})",
                self.top_k, self.experts
            )));
        }
        Ok(())
    }

    /// Expert ids per token (all layers).
    pub fn picks_per_token(&self) -> usize {
        self.layers * self.top_k
    }
}

impl fmt::Display for ModelShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} layers x {} experts, top-{}", self.layers, self.experts, self.top_k)
    }
}

/// Prefill (prompt tokens) or decode (generated tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }

    /// Parses `prefill` or `decode` (case-insensitive).
    pub fn parse(s: &str) -> Option<Phase> {
        if s.eq_ignore_ascii_case("prefill") {
            Some(Phase::Prefill)
        } else if s.eq_ignore_ascii_case("decode") {
            Some(Phase::Decode)
        } else {
            None
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a token or shape. Readers wrap it with the file and line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    #[error("{0}")]
    BadShape(String),
    #[error("expected {expected} expert ids ({layers} layers x top-{k}), found {found}")]
    WrongPickCount { expected: usize, found: usize, layers: usize, k: usize },
    #[error("expert id {id} at layer {layer} is out of range: the model has {experts} experts (ids 0..{experts})")]
    ExpertOutOfRange { id: i64, layer: usize, experts: usize },
    #[error("expert {id} appears twice in the top-{k} of layer {layer}")]
    DuplicateExpert { id: usize, layer: usize, k: usize },
    #[error("expected {expected} gate weights, found {found}")]
    WrongWeightCount { expected: usize, found: usize },
    #[error("gate weight {value} at layer {layer} is not a finite number")]
    BadWeight { value: f32, layer: usize },
    #[error("shape mismatch: this input is {found}, earlier input was {expected}")]
    ShapeMismatch { expected: ModelShape, found: ModelShape },
    /// A token of a batch built from columns (its index in the batch) is invalid.
    #[error("{error}")]
    InToken { token: usize, error: Box<ShapeError> },
}

impl ShapeError {
    /// The MoE layer the error is about, when it is about one (readers that keep a
    /// file per layer name that layer's file).
    pub fn layer(&self) -> Option<usize> {
        match self {
            ShapeError::ExpertOutOfRange { layer, .. }
            | ShapeError::DuplicateExpert { layer, .. }
            | ShapeError::BadWeight { layer, .. } => Some(*layer),
            ShapeError::InToken { error, .. } => error.layer(),
            _ => None,
        }
    }
}

/// One token's record, borrowed from a batch.
#[derive(Clone, Copy, Debug)]
pub struct TokenRef<'a> {
    pub request: &'a str,
    pub family: Option<&'a str>,
    pub phase: Option<Phase>,
    pub position: u32,
    /// `layers * k` expert ids, layer-major.
    pub experts: &'a [u16],
    pub gate_weights: Option<&'a [f32]>,
}

/// A columnar batch of tokens of one model shape.
///
/// Request and family names are interned per batch; `request[t]` and `family[t]`
/// index `request_names` and `family_names`. Tokens keep their input order.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    shape: ModelShape,
    request_names: Vec<String>,
    family_names: Vec<String>,
    request: Vec<u32>,
    family: Vec<Option<u32>>,
    phase: Vec<Option<Phase>>,
    position: Vec<u32>,
    experts: Vec<u16>,
    /// Present only if every token of the batch carries gate weights.
    gate_weights: Option<Vec<f32>>,
    request_index: HashMap<String, u32>,
    family_index: HashMap<String, u32>,
}

impl TokenBatch {
    pub fn new(shape: ModelShape) -> Self {
        TokenBatch {
            shape,
            request_names: Vec::new(),
            family_names: Vec::new(),
            request: Vec::new(),
            family: Vec::new(),
            phase: Vec::new(),
            position: Vec::new(),
            experts: Vec::new(),
            gate_weights: None,
            request_index: HashMap::new(),
            family_index: HashMap::new(),
        }
    }

    /// The reservation is only a hint: it is capped (at about 32 MB of ids), so that
    /// a shape or batch size read from a file cannot ask for more memory than exists.
    pub fn with_capacity(shape: ModelShape, tokens: usize) -> Self {
        const MAX_RESERVED_TOKENS: usize = 1 << 20;
        const MAX_RESERVED_IDS: usize = 1 << 24;
        let mut b = Self::new(shape);
        let tokens = tokens.min(MAX_RESERVED_TOKENS);
        b.request.reserve(tokens);
        b.family.reserve(tokens);
        b.phase.reserve(tokens);
        b.position.reserve(tokens);
        b.experts.reserve(tokens.saturating_mul(shape.picks_per_token()).min(MAX_RESERVED_IDS));
        b
    }

    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    pub fn len(&self) -> usize {
        self.request.len()
    }

    pub fn is_empty(&self) -> bool {
        self.request.is_empty()
    }

    /// Appends one token after checking it against the shape: `layers * k` ids, each
    /// below the expert count, no expert twice in one layer's top-k, and (if given)
    /// as many finite gate weights as ids.
    pub fn push(&mut self, token: TokenRef<'_>) -> Result<(), ShapeError> {
        check_token(self.shape, token.experts, token.gate_weights)?;
        let request = intern(&mut self.request_names, &mut self.request_index, token.request);
        let family = token.family.map(|f| intern(&mut self.family_names, &mut self.family_index, f));
        // Gate weights are kept only while every token has them.
        let had_tokens = !self.request.is_empty();
        match (&mut self.gate_weights, token.gate_weights) {
            (Some(w), Some(new)) => w.extend_from_slice(new),
            (None, Some(new)) if !had_tokens => self.gate_weights = Some(new.to_vec()),
            (Some(_), None) => self.gate_weights = None,
            _ => {}
        }
        self.request.push(request);
        self.family.push(family);
        self.phase.push(token.phase);
        self.position.push(token.position);
        self.experts.extend_from_slice(token.experts);
        Ok(())
    }

    /// The token at `t`.
    pub fn token(&self, t: usize) -> TokenRef<'_> {
        let n = self.shape.picks_per_token();
        TokenRef {
            request: &self.request_names[self.request[t] as usize],
            family: self.family[t].map(|f| self.family_names[f as usize].as_str()),
            phase: self.phase[t],
            position: self.position[t],
            experts: &self.experts[t * n..(t + 1) * n],
            gate_weights: self.gate_weights.as_ref().map(|w| &w[t * n..(t + 1) * n]),
        }
    }

    pub fn tokens(&self) -> impl Iterator<Item = TokenRef<'_>> + '_ {
        (0..self.len()).map(move |t| self.token(t))
    }

    /// The top-k expert ids of token `t` at `layer`.
    #[inline]
    pub fn picks(&self, t: usize, layer: usize) -> &[u16] {
        let k = self.shape.top_k;
        let start = (t * self.shape.layers + layer) * k;
        &self.experts[start..start + k]
    }

    /// All expert ids, `token * layers * k + layer * k + slot`.
    pub fn expert_ids(&self) -> &[u16] {
        &self.experts
    }

    pub fn gate_weights(&self) -> Option<&[f32]> {
        self.gate_weights.as_deref()
    }

    pub fn request_names(&self) -> &[String] {
        &self.request_names
    }

    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// Per token: index into [`Self::request_names`].
    pub fn request_indices(&self) -> &[u32] {
        &self.request
    }

    /// Per token: index into [`Self::family_names`], if the token has a family.
    pub fn family_indices(&self) -> &[Option<u32>] {
        &self.family
    }

    pub fn phases(&self) -> &[Option<Phase>] {
        &self.phase
    }

    pub fn positions(&self) -> &[u32] {
        &self.position
    }
}

/// The columns of a batch, for producers that build whole batches at once (the
/// synthetic workload generator) instead of pushing token by token.
#[derive(Clone, Debug, Default)]
pub struct BatchColumns {
    pub request_names: Vec<String>,
    pub family_names: Vec<String>,
    pub request: Vec<u32>,
    pub family: Vec<Option<u32>>,
    pub phase: Vec<Option<Phase>>,
    pub position: Vec<u32>,
    pub experts: Vec<u16>,
    pub gate_weights: Option<Vec<f32>>,
}

impl TokenBatch {
    /// A batch from its columns, checked like [`TokenBatch::push`] checks tokens: equal
    /// column lengths, name indices in range, names unique, and every token's ids
    /// valid for `shape` (checked in parallel; a bad token is reported as
    /// [`ShapeError::InToken`], the first one when several are bad).
    pub fn from_columns(shape: ModelShape, c: BatchColumns) -> Result<TokenBatch, ShapeError> {
        shape.validate()?;
        let n = c.request.len();
        let per = shape.picks_per_token();
        if c.family.len() != n || c.phase.len() != n || c.position.len() != n {
            return Err(ShapeError::BadShape("batch columns have different lengths".into()));
        }
        if c.experts.len() != n * per {
            return Err(ShapeError::WrongPickCount {
                expected: n * per,
                found: c.experts.len(),
                layers: shape.layers,
                k: shape.top_k,
            });
        }
        if let Some(w) = &c.gate_weights {
            if w.len() != n * per {
                return Err(ShapeError::WrongWeightCount { expected: n * per, found: w.len() });
            }
        }
        if c.request.iter().any(|&r| r as usize >= c.request_names.len())
            || c.family.iter().flatten().any(|&f| f as usize >= c.family_names.len())
        {
            return Err(ShapeError::BadShape("batch column refers to a missing request or family name".into()));
        }
        let index = |names: &[String], what: &str| -> Result<HashMap<String, u32>, ShapeError> {
            let mut m = HashMap::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                if m.insert(name.clone(), i as u32).is_some() {
                    return Err(ShapeError::BadShape(format!("{what} name {name:?} appears twice in a batch")));
                }
            }
            Ok(m)
        };
        let request_index = index(&c.request_names, "request")?;
        let family_index = index(&c.family_names, "family")?;
        {
            use rayon::prelude::*;
            let chunk = 1024;
            let first_bad = c.experts.par_chunks(chunk * per).enumerate().find_map_first(|(i, ids)| {
                let weights = c.gate_weights.as_ref().map(|w| &w[i * chunk * per..i * chunk * per + ids.len()]);
                // A branch-free pass first; the detailed check only to name an error.
                if weights.is_none() && ids_look_valid(shape, ids) {
                    return None;
                }
                ids.chunks_exact(per).enumerate().find_map(|(t, token)| {
                    let error = check_token(shape, token, weights.map(|w| &w[t * per..(t + 1) * per])).err()?;
                    Some(ShapeError::InToken { token: i * chunk + t, error: Box::new(error) })
                })
            });
            if let Some(e) = first_bad {
                return Err(e);
            }
        }
        Ok(TokenBatch {
            shape,
            request_names: c.request_names,
            family_names: c.family_names,
            request: c.request,
            family: c.family,
            phase: c.phase,
            position: c.position,
            experts: c.experts,
            gate_weights: c.gate_weights,
            request_index,
            family_index,
        })
    }
}

/// Whether every top-k group of `ids` has ids below the expert count and no
/// repeats (no early exits, so it vectorises; specialised for common k so the
/// pair loops unroll: this check is most of the cost of reading a Parquet trace).
fn ids_look_valid(shape: ModelShape, ids: &[u16]) -> bool {
    match shape.top_k {
        1 => ids_look_valid_k::<1>(shape.experts, ids),
        2 => ids_look_valid_k::<2>(shape.experts, ids),
        4 => ids_look_valid_k::<4>(shape.experts, ids),
        6 => ids_look_valid_k::<6>(shape.experts, ids),
        8 => ids_look_valid_k::<8>(shape.experts, ids),
        k => {
            let mut bad = false;
            for picks in ids.chunks_exact(k) {
                for i in 0..k {
                    bad |= picks[i] as usize >= shape.experts;
                    for j in i + 1..k {
                        bad |= picks[i] == picks[j];
                    }
                }
            }
            !bad
        }
    }
}

fn ids_look_valid_k<const K: usize>(experts: usize, ids: &[u16]) -> bool {
    // Ids are u16, so any expert count above u16::MAX admits them all.
    let limit = experts.min(u16::MAX as usize + 1);
    let mut bad = false;
    for picks in ids.chunks_exact(K) {
        let picks: &[u16; K] = picks.try_into().expect("chunks of K");
        // Comparing with the rotations by 1..=K/2 meets every pair; lane by lane, so
        // it maps onto vector compares.
        for r in 1..=K / 2 {
            for i in 0..K {
                bad |= picks[i] == picks[(i + r) % K];
            }
        }
        for &p in picks {
            bad |= p as usize >= limit;
        }
    }
    !bad
}

fn intern(names: &mut Vec<String>, index: &mut HashMap<String, u32>, name: &str) -> u32 {
    if let Some(&i) = index.get(name) {
        return i;
    }
    let i = names.len() as u32;
    names.push(name.to_string());
    index.insert(name.to_string(), i);
    i
}

/// Checks one token's expert ids (and gate weights) against `shape`.
pub fn check_token(shape: ModelShape, experts: &[u16], weights: Option<&[f32]>) -> Result<(), ShapeError> {
    let expected = shape.picks_per_token();
    if experts.len() != expected {
        return Err(ShapeError::WrongPickCount {
            expected,
            found: experts.len(),
            layers: shape.layers,
            k: shape.top_k,
        });
    }
    for (layer, picks) in experts.chunks_exact(shape.top_k).enumerate() {
        for (i, &e) in picks.iter().enumerate() {
            if e as usize >= shape.experts {
                return Err(ShapeError::ExpertOutOfRange { id: e as i64, layer, experts: shape.experts });
            }
            if picks[..i].contains(&e) {
                return Err(ShapeError::DuplicateExpert { id: e as usize, layer, k: shape.top_k });
            }
        }
    }
    if let Some(w) = weights {
        if w.len() != expected {
            return Err(ShapeError::WrongWeightCount { expected, found: w.len() });
        }
        if let Some(i) = w.iter().position(|x| !x.is_finite()) {
            return Err(ShapeError::BadWeight { value: w[i], layer: i / shape.top_k });
        }
    }
    Ok(())
}

/// Converts an expert id read from a file (any integer) to the compact form,
/// checking it is in range.
pub fn expert_id(id: i64, layer: usize, experts: usize) -> Result<u16, ShapeError> {
    if id < 0 || id as u64 >= experts as u64 {
        return Err(ShapeError::ExpertOutOfRange { id, layer, experts });
    }
    Ok(id as u16)
}

/// A whole trace in memory: the shape and its batches. Handy for tests, the
/// calibration/test split and small real traces; large files are streamed instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub shape: ModelShape,
    pub batches: Vec<TokenBatch>,
}

impl Trace {
    pub fn new(shape: ModelShape) -> Self {
        Trace { shape, batches: Vec::new() }
    }

    pub fn tokens(&self) -> usize {
        self.batches.iter().map(TokenBatch::len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = TokenRef<'_>> + '_ {
        self.batches.iter().flat_map(|b| b.tokens())
    }

    /// The same tokens re-batched into one batch (drops nothing, keeps order).
    pub fn concat(&self) -> TokenBatch {
        let mut out = TokenBatch::with_capacity(self.shape, self.tokens());
        for t in self.iter() {
            out.push(t).expect("tokens of a trace already match its shape");
        }
        out
    }

    /// Keeps the tokens for which `keep` is true.
    pub fn filter(&self, mut keep: impl FnMut(&TokenRef<'_>) -> bool) -> Trace {
        let mut out = TokenBatch::new(self.shape);
        for t in self.iter() {
            if keep(&t) {
                out.push(t).expect("tokens of a trace already match its shape");
            }
        }
        Trace { shape: self.shape, batches: vec![out] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ModelShape {
        ModelShape::new(2, 4, 2).unwrap()
    }

    #[test]
    fn push_checks_shape() {
        let mut b = TokenBatch::new(shape());
        let ok = TokenRef {
            request: "r",
            family: Some("f"),
            phase: None,
            position: 0,
            experts: &[0, 1, 2, 3],
            gate_weights: None,
        };
        b.push(ok).unwrap();
        let short = TokenRef { experts: &[0, 1, 2], ..ok };
        assert!(matches!(b.push(short), Err(ShapeError::WrongPickCount { .. })));
        let big = TokenRef { experts: &[0, 1, 2, 4], ..ok };
        assert!(matches!(b.push(big), Err(ShapeError::ExpertOutOfRange { id: 4, layer: 1, .. })));
        let dup = TokenRef { experts: &[0, 0, 2, 3], ..ok };
        assert!(matches!(b.push(dup), Err(ShapeError::DuplicateExpert { id: 0, layer: 0, .. })));
        assert_eq!(b.len(), 1);
        assert_eq!(b.picks(0, 1), &[2, 3]);
    }

    #[test]
    fn gate_weights_kept_only_when_all_tokens_have_them() {
        let mut b = TokenBatch::new(shape());
        let w = [0.5f32; 4];
        let t = TokenRef {
            request: "r",
            family: None,
            phase: Some(Phase::Decode),
            position: 3,
            experts: &[0, 1, 2, 3],
            gate_weights: Some(&w),
        };
        b.push(t).unwrap();
        b.push(t).unwrap();
        assert_eq!(b.gate_weights().unwrap().len(), 8);
        b.push(TokenRef { gate_weights: None, ..t }).unwrap();
        assert!(b.gate_weights().is_none());
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(ModelShape::new(0, 4, 2).is_err());
        assert!(ModelShape::new(1, 0, 1).is_err());
        assert!(ModelShape::new(1, 4, 5).is_err());
        assert!(ModelShape::new(1, 4, 0).is_err());
    }
}
