//! The small deterministic random number generator of the synthetic workload.
//!
//! Choice: xoshiro256++ (Blackman and Vigna) seeded through SplitMix64, written here
//! rather than taken from a crate so that the exact stream is part of this project
//! and cannot change under a dependency upgrade: the same seed gives the same tokens
//! in every version that keeps this file. It is fast (a few adds, xors and rotates
//! per 64 bits), which matters at hundreds of millions of expert picks.

/// SplitMix64 step: used to expand seeds and to derive independent child seeds.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A child seed of `seed` for the stream named by `parts` (e.g. request index and
/// purpose). Different parts give unrelated streams.
pub fn derive(seed: u64, parts: &[u64]) -> u64 {
    let mut s = seed;
    let mut out = splitmix64(&mut s);
    for &p in parts {
        s ^= p.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        out ^= splitmix64(&mut s);
        s = s.rotate_left(17) ^ out;
    }
    out
}

/// A stable 64-bit hash of a name (FNV-1a), so that streams keyed by a family name
/// do not depend on which other families exist.
pub fn hash_name(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// xoshiro256++.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Rng { s }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[0].wrapping_add(self.s[3]).rotate_left(23).wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in 0..n (n > 0), by multiply-shift (bias below 2^-32 for the
    /// small n used here).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Standard normal (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        self.normal_pair().0
    }

    /// Two independent standard normals (Box-Muller).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        (r * c, r * s)
    }

    /// A random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }
}

/// Walker/Vose alias table: O(1) draws from a fixed discrete distribution. Each
/// bucket is packed in one `u32` (acceptance threshold in 1/65536 in the high half,
/// alias in the low half) so a draw touches one word; probabilities are thus exact
/// to about 2^-16 per bucket.
#[derive(Clone, Debug)]
pub struct Alias {
    packed: Vec<u32>,
}

impl Alias {
    /// Builds the table for weights proportional to `w` (non-negative, positive sum,
    /// at most 65536 entries).
    pub fn new(w: &[f64]) -> Alias {
        let n = w.len();
        let total: f64 = w.iter().sum();
        debug_assert!(total > 0.0 && n > 0 && n <= 1 << 16);
        let mut scaled: Vec<f64> = w.iter().map(|x| x * n as f64 / total).collect();
        // Leftover buckets (rounding) keep their own index with certainty.
        let mut threshold = vec![u16::MAX; n];
        let mut alias: Vec<u16> = (0..n as u32).map(|i| i as u16).collect();
        let mut small: Vec<usize> = Vec::with_capacity(n);
        let mut large: Vec<usize> = Vec::with_capacity(n);
        for (i, &x) in scaled.iter().enumerate() {
            if x < 1.0 {
                small.push(i);
            } else {
                large.push(i);
            }
        }
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            threshold[s] = (scaled[s] * 65536.0).round().clamp(0.0, 65535.0) as u16;
            alias[s] = l as u16;
            scaled[l] = (scaled[l] + scaled[s]) - 1.0;
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        let packed = threshold.iter().zip(&alias).map(|(&t, &a)| ((t as u32) << 16) | a as u32).collect();
        Alias { packed }
    }

    /// One draw from 64 random bits.
    #[inline]
    pub fn sample(&self, r: u64) -> u16 {
        let i = (((r >> 32) * self.packed.len() as u64) >> 32) as usize;
        let p = self.packed[i];
        if ((r as u32) & 0xFFFF) < (p >> 16) {
            i as u16
        } else {
            p as u16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_children_differ() {
        let a: Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(derive(7, &[1, 0]), derive(7, &[0, 1]));
        assert_ne!(derive(7, &[1]), derive(8, &[1]));
    }

    #[test]
    fn alias_draws_follow_the_weights() {
        let w = [1.0, 0.0, 3.0, 6.0];
        let t = Alias::new(&w);
        let mut r = Rng::new(1);
        let mut c = [0usize; 4];
        let n = 200_000;
        for _ in 0..n {
            c[t.sample(r.next_u64()) as usize] += 1;
        }
        assert_eq!(c[1], 0);
        for (i, &x) in w.iter().enumerate() {
            let got = c[i] as f64 / n as f64;
            assert!((got - x / 10.0).abs() < 0.01, "bucket {i}: {got}");
        }
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..50_000).map(|_| r.normal()).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64;
        assert!(m.abs() < 0.02 && (v - 1.0).abs() < 0.03, "mean {m} var {v}");
    }
}
