//! Request-side locality (docs/METHODS.md,
//! "Activation-pattern micro-batching" and "ELDR decode routing"): where each request runs
//! decides which experts its tokens need locally.
//!
//! - [`records`]: per-request prefill and decode tokens from a trace (recorded
//!   phases, or the first fraction of each sequence taken as prefill).
//! - [`signature`]: ELDR request signatures from prefill counts (IDF weighting, a
//!   greedy layer mask, sparse and L2-normalised), built from summable per-KV-block
//!   int8 rows.
//! - [`kmeans`]: plain and size-balanced K-means on any vectors.
//! - [`router`]: decode routers behind the small [`router::Router`] trait: ELDR,
//!   round-robin, join-shortest-queue, random.
//! - [`decode_sim`]: a prefill/decode-disaggregated decode simulator with a
//!   memory-bandwidth time-per-output-token model.

pub mod decode_sim;
pub mod kmeans;
pub mod records;
pub mod router;
pub mod signature;

/// Cosine similarity of two dense vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Scales `v` to unit L2 norm (left as is when zero).
pub fn l2_normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
}

/// Ranks of `x` (1-based, ties get their average rank), for Spearman correlation.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &t in &idx[i..=j] {
            r[t] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation; `None` if either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    crate::report::distribution::pearson(&ranks(a), &ranks(b))
}

/// Percentile `p` (0..=100) of `v` by the nearest-rank rule (`None` if empty).
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_sees_monotone_and_ties() {
        assert_eq!(ranks(&[3.0, 1.0, 1.0, 2.0]), vec![4.0, 1.5, 1.5, 3.0]);
        let s = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 64.0]).unwrap();
        assert!((s - 1.0).abs() < 1e-12);
        let s = spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
        assert!((s + 1.0).abs() < 1e-12);
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 99.0), Some(5.0));
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-9);
    }
}
