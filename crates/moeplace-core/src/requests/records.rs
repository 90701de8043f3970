//! Per-request prefill and decode tokens from a trace.
//!
//! The request-side methods need, per request, its prefill tokens (to build a
//! signature before decoding starts) and its decode tokens in order (to know which
//! experts each decode step touches). [`requests_from_batches`] groups a trace's
//! tokens by request (in order of first appearance), sorts each request's tokens by
//! position (stable), and splits them into phases:
//! - [`PhaseSplit::Recorded`]: the trace's phases (tokens without a phase are
//!   dropped and counted);
//! - [`PhaseSplit::Prefix`]: the first fraction of each sequence is prefill, the rest
//!   decode, for teacher-forced logs such as ESFT's that record no phase (at least
//!   one token on each side when the sequence has two or more).

use std::collections::HashMap;

use crate::trace::{ModelShape, Phase, TokenBatch};

/// How to split a request's tokens into prefill and decode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PhaseSplit {
    Recorded,
    /// The first `fraction` of each sequence (by position) is prefill.
    Prefix(f64),
}

/// One request's tokens: expert ids `token * layers * k + layer * k + slot`.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestTokens {
    pub name: String,
    pub family: Option<String>,
    pub prefill: Vec<u16>,
    pub decode: Vec<u16>,
}

impl RequestTokens {
    pub fn prefill_len(&self, shape: ModelShape) -> usize {
        self.prefill.len() / shape.picks_per_token()
    }

    pub fn decode_len(&self, shape: ModelShape) -> usize {
        self.decode.len() / shape.picks_per_token()
    }
}

/// Tokens per (layer, expert) of `picks` (a dense `[layers * experts]` vector).
pub fn counts(shape: ModelShape, picks: &[u16]) -> Vec<u32> {
    let mut c = vec![0u32; shape.layers * shape.experts];
    let k = shape.top_k;
    for (i, &e) in picks.iter().enumerate() {
        let layer = (i / k) % shape.layers;
        c[layer * shape.experts + e as usize] += 1;
    }
    c
}

/// Requests of `batches` with their phases split by `split`; also the number of
/// tokens dropped (no phase under `Recorded`).
pub fn requests_from_batches(
    shape: ModelShape,
    batches: &[TokenBatch],
    split: PhaseSplit,
) -> (Vec<RequestTokens>, u64) {
    // Per request: family and (position, batch, token) of each token.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut families: Vec<Option<String>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut toks: Vec<Vec<(u32, u32, u32)>> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        for (t, tok) in batch.tokens().enumerate() {
            let i = *index.entry(tok.request.to_string()).or_insert_with(|| {
                names.push(tok.request.to_string());
                families.push(tok.family.map(str::to_string));
                toks.push(Vec::new());
                names.len() - 1
            });
            toks[i].push((tok.position, b as u32, t as u32));
        }
    }
    let ppt = shape.picks_per_token();
    let mut dropped = 0u64;
    let mut out = Vec::with_capacity(names.len());
    for ((name, family), mut list) in names.into_iter().zip(families).zip(toks) {
        list.sort_by_key(|x| x.0);
        let n = list.len();
        let cut = match split {
            PhaseSplit::Recorded => 0,
            PhaseSplit::Prefix(f) => {
                let c = (f * n as f64).round() as usize;
                if n >= 2 {
                    c.clamp(1, n - 1)
                } else {
                    c.min(n)
                }
            }
        };
        let mut r = RequestTokens { name, family, prefill: Vec::new(), decode: Vec::new() };
        for (j, &(_, b, t)) in list.iter().enumerate() {
            let batch = &batches[b as usize];
            let picks = &batch.expert_ids()[t as usize * ppt..(t as usize + 1) * ppt];
            let phase = match split {
                PhaseSplit::Recorded => batch.phases()[t as usize],
                PhaseSplit::Prefix(_) => Some(if j < cut { Phase::Prefill } else { Phase::Decode }),
            };
            match phase {
                Some(Phase::Prefill) => r.prefill.extend_from_slice(picks),
                Some(Phase::Decode) => r.decode.extend_from_slice(picks),
                None => dropped += 1,
            }
        }
        out.push(r);
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TokenRef;

    #[test]
    fn prefix_split_orders_by_position_and_counts() {
        let shape = ModelShape::new(2, 4, 1).unwrap();
        let mut b = TokenBatch::new(shape);
        // Request "a": positions 3,0,1,2 pushed out of order; "b": one phase-less token.
        for (pos, e) in [(3u32, [3u16, 3]), (0, [0, 1]), (1, [1, 1]), (2, [2, 0])] {
            b.push(TokenRef {
                request: "a",
                family: Some("f"),
                phase: None,
                position: pos,
                experts: &e,
                gate_weights: None,
            })
            .unwrap();
        }
        b.push(TokenRef { request: "b", family: None, phase: None, position: 0, experts: &[1, 2], gate_weights: None })
            .unwrap();
        let (rs, dropped) = requests_from_batches(shape, std::slice::from_ref(&b), PhaseSplit::Prefix(0.25));
        assert_eq!(dropped, 0);
        assert_eq!(rs[0].name, "a");
        assert_eq!(rs[0].prefill, vec![0, 1]);
        assert_eq!(rs[0].decode, vec![1, 1, 2, 0, 3, 3]);
        assert_eq!(counts(shape, &rs[0].decode), vec![0, 1, 1, 1, 1, 1, 0, 1]);
        let (rs, dropped) = requests_from_batches(shape, std::slice::from_ref(&b), PhaseSplit::Recorded);
        assert_eq!(dropped, 5);
        assert!(rs[1].prefill.is_empty() && rs[1].decode.is_empty());
    }
}
