//! Sentence-level train/dev/test splits from a seed.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{PrepError, Result};

/// Parses `--split` (three non-negative fractions summing to 1, e.g. `0.8,0.1,0.1` or `1,0,0`).
pub fn parse_fractions(text: &str) -> Result<[f64; 3]> {
    let bad = |why: String| {
        PrepError::Options(format!(
            "--split {text:?}: {why} (expected three fractions for train,dev,test summing to 1, \
             e.g. 0.8,0.1,0.1)"
        ))
    };
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(bad(format!("{} value(s)", parts.len())));
    }
    let mut f = [0.0; 3];
    for (slot, p) in f.iter_mut().zip(&parts) {
        *slot = p
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && (0.0..=1.0).contains(v))
            .ok_or_else(|| bad(format!("{p:?} is not a fraction between 0 and 1")))?;
    }
    let sum: f64 = f.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(bad(format!("the fractions sum to {sum}")));
    }
    Ok(f)
}

/// Assigns sentence indices `0..n` to train, dev and test: a seeded shuffle (ChaCha8, whose stream is
/// fixed across platforms and versions), cut at the rounded fractions, each part sorted back into
/// corpus order so that shards read like the source.
pub fn assign(n: usize, fractions: [f64; 3], seed: u64) -> [Vec<usize>; 3] {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_train = ((fractions[0] * n as f64).round() as usize).min(n);
    let n_dev = ((fractions[1] * n as f64).round() as usize).min(n - n_train);
    let n_dev = if fractions[2] == 0.0 {
        n - n_train
    } else {
        n_dev
    };
    let mut parts = [
        order[..n_train].to_vec(),
        order[n_train..n_train + n_dev].to_vec(),
        order[n_train + n_dev..].to_vec(),
    ];
    for p in &mut parts {
        p.sort_unstable();
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_valid_and_invalid() {
        assert_eq!(parse_fractions("0.8,0.1,0.1").unwrap(), [0.8, 0.1, 0.1]);
        assert_eq!(parse_fractions("1, 0, 0").unwrap(), [1.0, 0.0, 0.0]);
        for bad in [
            "0.8,0.1",
            "0.8,0.1,0.2",
            "a,b,c",
            "1.5,-0.5,0",
            "0.5,0.5,0,0",
        ] {
            let err = parse_fractions(bad).unwrap_err().to_string();
            assert!(err.contains("--split"), "{bad}: {err}");
        }
    }

    #[test]
    fn assignment_is_a_deterministic_partition() {
        let a = assign(1000, [0.8, 0.1, 0.1], 42);
        let b = assign(1000, [0.8, 0.1, 0.1], 42);
        assert_eq!(a, b);
        assert_eq!([a[0].len(), a[1].len(), a[2].len()], [800, 100, 100]);
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_ne!(assign(1000, [0.8, 0.1, 0.1], 43), a);
        assert!(a[0].windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn zero_fractions_and_rounding() {
        let a = assign(7, [1.0, 0.0, 0.0], 1);
        assert_eq!(a[0].len(), 7);
        assert!(a[1].is_empty() && a[2].is_empty());
        let a = assign(3, [0.5, 0.5, 0.0], 1);
        assert_eq!(a[0].len() + a[1].len(), 3);
        assert!(a[2].is_empty());
    }
}
