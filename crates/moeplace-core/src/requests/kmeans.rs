//! Plain and size-balanced K-means on any vectors (rows of a flat `f32` slice).
//!
//! Both start from k-means++ (seeded, so results are deterministic for a seed) and
//! alternate assignment and centroid update (the mean of each cluster's points) until
//! no point changes cluster or `max_iter` rounds pass. Distance: squared Euclidean
//! (on L2-normalised points this orders exactly like cosine distance).
//!
//! Size-balanced (ELDR): every cluster holds at most `ceil(N/K)` points, and the
//! assignment step is solved exactly, like the paper's Hungarian assignment, as a
//! min-cost flow by successive shortest paths: points are inserted one at a time;
//! each insertion follows the cheapest augmenting path over the K clusters (the new
//! point enters a cluster, which passes one member on to another cluster, and so on,
//! until a cluster with room; the arc a -> b costs the cheapest
//! `cost(j, b) - cost(j, a)` over members j of a). Because the assignment of the
//! points inserted so far is optimal, the cluster graph has no negative cycle and a
//! Bellman-Ford search finds the path; the final assignment is a minimum-cost one.
//! Cost: O(N (K^2 + path x cap x K)) per round on average (`moeplace-lab bench
//! requests` times the centroid fit, docs/REQUESTS.md, "Router decision cost"). A cluster left empty is re-seeded with
//! the point farthest from its centroid (both variants).

use crate::synth::rng::Rng;

/// Options of [`kmeans`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KMeansOptions {
    pub k: usize,
    /// Cap every cluster at `ceil(N/K)` points.
    pub balanced: bool,
    pub max_iter: usize,
    pub seed: u64,
}

impl KMeansOptions {
    pub fn new(k: usize, balanced: bool, seed: u64) -> Self {
        KMeansOptions { k, balanced, max_iter: 50, seed }
    }
}

/// The result of [`kmeans`].
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    pub dim: usize,
    /// `k * dim` centroids.
    pub centroids: Vec<f32>,
    /// Cluster of each point.
    pub assignment: Vec<usize>,
    /// Sum of squared distances of points to their centroids.
    pub inertia: f64,
    pub iterations: usize,
}

impl KMeans {
    pub fn centroid(&self, c: usize) -> &[f32] {
        &self.centroids[c * self.dim..(c + 1) * self.dim]
    }

    pub fn k(&self) -> usize {
        self.centroids.len() / self.dim.max(1)
    }

    /// Cluster sizes.
    pub fn sizes(&self) -> Vec<usize> {
        let mut s = vec![0; self.k()];
        self.assignment.iter().for_each(|&c| s[c] += 1);
        s
    }
}

/// Why K-means cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KMeansError {
    #[error("K-means needs at least one cluster")]
    NoClusters,
    #[error("K-means with {k} clusters needs at least {k} points, got {n}")]
    TooFewPoints { k: usize, n: usize },
    #[error("points are {len} numbers, not a multiple of the dimension {dim}")]
    BadShape { len: usize, dim: usize },
}

/// Squared Euclidean distance.
#[inline]
pub fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Clusters the rows of `points` (`N * dim`).
pub fn kmeans(points: &[f32], dim: usize, opts: KMeansOptions) -> Result<KMeans, KMeansError> {
    if opts.k == 0 {
        return Err(KMeansError::NoClusters);
    }
    if dim == 0 || !points.len().is_multiple_of(dim) {
        return Err(KMeansError::BadShape { len: points.len(), dim });
    }
    let n = points.len() / dim;
    let k = opts.k;
    if n < k {
        return Err(KMeansError::TooFewPoints { k, n });
    }
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    let mut rng = Rng::new(opts.seed);
    let mut centroids = plus_plus(points, dim, k, &mut rng);
    let cap = n.div_ceil(k);
    let mut assignment = vec![usize::MAX; n];
    let mut cost = vec![0f32; n * k];
    let mut iterations = 0;
    for it in 0..opts.max_iter.max(1) {
        iterations = it + 1;
        for i in 0..n {
            for c in 0..k {
                cost[i * k + c] = dist2(row(i), &centroids[c * dim..(c + 1) * dim]);
            }
        }
        let next = if opts.balanced { balanced_assign(&cost, n, k, cap) } else { nearest_assign(&cost, n, k) };
        let changed = next != assignment;
        assignment = next;
        update_centroids(points, dim, k, &assignment, &mut centroids);
        if !changed {
            break;
        }
    }
    let inertia =
        (0..n).map(|i| dist2(row(i), &centroids[assignment[i] * dim..(assignment[i] + 1) * dim]) as f64).sum();
    Ok(KMeans { dim, centroids, assignment, inertia, iterations })
}

/// k-means++: the first centre uniformly, each next one with probability
/// proportional to the squared distance to the nearest chosen centre.
fn plus_plus(points: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = points.len() / dim;
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    centroids.extend_from_slice(row(first));
    let mut d: Vec<f64> = (0..n).map(|i| dist2(row(i), row(first)) as f64).collect();
    for _ in 1..k {
        let total: f64 = d.iter().sum();
        let pick = if total > 0.0 {
            let mut u = rng.uniform() * total;
            let mut p = n - 1;
            for (i, &di) in d.iter().enumerate() {
                if u < di {
                    p = i;
                    break;
                }
                u -= di;
            }
            p
        } else {
            rng.below(n)
        };
        centroids.extend_from_slice(row(pick));
        for (i, di) in d.iter_mut().enumerate() {
            *di = di.min(dist2(row(i), row(pick)) as f64);
        }
    }
    centroids
}

fn nearest_assign(cost: &[f32], n: usize, k: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let r = &cost[i * k..(i + 1) * k];
            (0..k).min_by(|&a, &b| r[a].total_cmp(&r[b]).then(a.cmp(&b))).unwrap_or(0)
        })
        .collect()
}

/// Exact capacity-respecting assignment of `n` points to `k` clusters of at most
/// `cap` points each, minimising the total cost of the `n * k` cost matrix (see the
/// module documentation). Needs `n <= k * cap`.
pub fn balanced_assign(cost: &[f32], n: usize, k: usize, cap: usize) -> Vec<usize> {
    assert!(n <= k * cap, "{n} points do not fit {k} clusters of {cap}");
    let c = |i: usize, b: usize| cost[i * k + b] as f64;
    let mut assignment = vec![usize::MAX; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    // w[a * k + b]: cheapest cost change of moving one member of a to b, and who.
    let mut w = vec![(f64::INFINITY, usize::MAX); k * k];
    let refresh = |a: usize, members: &[Vec<usize>], w: &mut [(f64, usize)]| {
        for b in 0..k {
            w[a * k + b] = (f64::INFINITY, usize::MAX);
        }
        for &j in &members[a] {
            for b in 0..k {
                if b != a {
                    let d = c(j, b) - c(j, a);
                    if d < w[a * k + b].0 {
                        w[a * k + b] = (d, j);
                    }
                }
            }
        }
    };
    let mut dist = vec![0f64; k];
    // pred[b] = (cluster a, point moving a -> b), or usize::MAX for "the new point".
    let mut pred = vec![(usize::MAX, usize::MAX); k];
    let mut in_queue = vec![false; k];
    let mut queue = std::collections::VecDeque::with_capacity(k);
    for i in 0..n {
        for b in 0..k {
            dist[b] = c(i, b);
            pred[b] = (usize::MAX, i);
            in_queue[b] = true;
            queue.push_back(b);
        }
        // Shortest paths over the cluster graph (queue-based Bellman-Ford; arcs may be
        // negative but the current assignment is optimal, so there is no negative cycle;
        // relaxations need a strict gain above rounding noise).
        while let Some(a) = queue.pop_front() {
            in_queue[a] = false;
            if members[a].is_empty() {
                continue;
            }
            for b in 0..k {
                let (d, j) = w[a * k + b];
                if j != usize::MAX && dist[a] + d < dist[b] - 1e-9 {
                    dist[b] = dist[a] + d;
                    pred[b] = (a, j);
                    if !in_queue[b] {
                        in_queue[b] = true;
                        queue.push_back(b);
                    }
                }
            }
        }
        let end = (0..k)
            .filter(|&b| members[b].len() < cap)
            .min_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)))
            .expect("n <= k * cap leaves a cluster with room");
        // Walk the path back: each step moves one point into cluster b.
        let mut b = end;
        let mut touched = vec![end];
        let mut guard = 0;
        loop {
            let (a, j) = pred[b];
            if a != usize::MAX {
                members[a].retain(|&x| x != j);
                touched.push(a);
            }
            members[b].push(j);
            assignment[j] = b;
            if a == usize::MAX {
                break;
            }
            b = a;
            guard += 1;
            assert!(guard <= k, "augmenting path longer than the cluster count");
        }
        touched.sort_unstable();
        touched.dedup();
        for a in touched {
            refresh(a, &members, &mut w);
        }
    }
    assignment
}

fn update_centroids(points: &[f32], dim: usize, k: usize, assignment: &[usize], centroids: &mut [f32]) {
    let n = assignment.len();
    let mut sum = vec![0f64; k * dim];
    let mut count = vec![0usize; k];
    for (i, &c) in assignment.iter().enumerate() {
        count[c] += 1;
        let dst = &mut sum[c * dim..(c + 1) * dim];
        dst.iter_mut().zip(&points[i * dim..(i + 1) * dim]).for_each(|(s, &x)| *s += x as f64);
    }
    for c in 0..k {
        if count[c] > 0 {
            for d in 0..dim {
                centroids[c * dim + d] = (sum[c * dim + d] / count[c] as f64) as f32;
            }
        }
    }
    // Empty clusters: re-seed with the point farthest from its own centroid.
    for c in 0..k {
        if count[c] == 0 {
            let far = (0..n)
                .max_by(|&a, &b| {
                    let da = dist2(&points[a * dim..(a + 1) * dim], &centroids[assignment[a] * dim..][..dim]);
                    let db = dist2(&points[b * dim..(b + 1) * dim], &centroids[assignment[b] * dim..][..dim]);
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .unwrap_or(0);
            centroids[c * dim..(c + 1) * dim].copy_from_slice(&points[far * dim..(far + 1) * dim]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated blobs of unequal sizes (20, 5, 5) in 2-D.
    fn blobs() -> Vec<f32> {
        let mut rng = Rng::new(7);
        let mut p = Vec::new();
        for (cx, cy, m) in [(0.0f32, 0.0f32, 20), (10.0, 0.0, 5), (0.0, 10.0, 5)] {
            for _ in 0..m {
                p.push(cx + rng.normal() as f32 * 0.3);
                p.push(cy + rng.normal() as f32 * 0.3);
            }
        }
        p
    }

    #[test]
    fn plain_finds_blobs_and_is_deterministic() {
        let p = blobs();
        let a = kmeans(&p, 2, KMeansOptions::new(3, false, 1)).unwrap();
        let mut sizes = a.sizes();
        sizes.sort();
        assert_eq!(sizes, vec![5, 5, 20]);
        assert_eq!(a, kmeans(&p, 2, KMeansOptions::new(3, false, 1)).unwrap());
    }

    #[test]
    fn balanced_respects_the_cap() {
        let p = blobs();
        for seed in 0..5 {
            let a = kmeans(&p, 2, KMeansOptions::new(3, true, seed)).unwrap();
            assert!(a.sizes().iter().all(|&s| s <= 10), "{:?}", a.sizes());
            assert_eq!(a.sizes().iter().sum::<usize>(), 30);
        }
        let a = kmeans(&p, 2, KMeansOptions::new(4, true, 3)).unwrap();
        assert!(a.sizes().iter().all(|&s| s <= 8), "{:?}", a.sizes());
    }

    #[test]
    fn balanced_assignment_matches_brute_force_on_small_cases() {
        let mut rng = Rng::new(11);
        for _ in 0..30 {
            let (n, k) = (6, 3);
            let cost: Vec<f32> = (0..n * k).map(|_| rng.uniform() as f32).collect();
            let got = balanced_assign(&cost, n, k, 2);
            let total = |a: &[usize]| a.iter().enumerate().map(|(i, &c)| cost[i * k + c]).sum::<f32>();
            // Brute force over all 3^6 assignments with sizes <= 2.
            let mut best = f32::MAX;
            for code in 0..3usize.pow(6) {
                let a: Vec<usize> = (0..n).map(|i| code / 3usize.pow(i as u32) % 3).collect();
                if (0..k).all(|c| a.iter().filter(|&&x| x == c).count() <= 2) {
                    best = best.min(total(&a));
                }
            }
            assert!((0..k).all(|c| got.iter().filter(|&&x| x == c).count() <= 2));
            assert!((total(&got) - best).abs() < 1e-5, "{} vs {}", total(&got), best);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            kmeans(&[1.0, 2.0], 2, KMeansOptions::new(2, false, 0)),
            Err(KMeansError::TooFewPoints { k: 2, n: 1 })
        );
        assert!(kmeans(&[1.0, 2.0, 3.0], 2, KMeansOptions::new(1, false, 0)).is_err());
        assert_eq!(kmeans(&[1.0], 1, KMeansOptions::new(0, false, 0)), Err(KMeansError::NoClusters));
    }
}
