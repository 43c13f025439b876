//! Jitter distribution tables for the kernel side (DIST_TABLE): for each distribution,
//! DIST_TABLE_LEN quantiles of the distribution standardised to mean 0 and standard
//! deviation 1, in units of 1/DIST_SCALE. The program picks one at random, so a jitter of
//! 20 ms with `normal` gives delays with a standard deviation of 20 ms around the latency.

use fault_common::{DIST_NORMAL, DIST_PARETO, DIST_PARETONORMAL, DIST_SCALE, DIST_TABLE_LEN};

/// All tables, in DIST_* order starting at DIST_NORMAL, concatenated.
pub fn tables() -> Vec<i32> {
    let mut out = Vec::with_capacity(3 * DIST_TABLE_LEN as usize);
    for dist in [DIST_NORMAL, DIST_PARETO, DIST_PARETONORMAL] {
        out.extend(table(dist));
    }
    out
}

fn table(dist: u32) -> Vec<i32> {
    let n = DIST_TABLE_LEN as usize;
    let quantiles: Vec<f64> = match dist {
        DIST_NORMAL => (0..n)
            .map(|i| normal_quantile((i as f64 + 0.5) / n as f64))
            .collect(),
        DIST_PARETO => (0..n)
            .map(|i| pareto((i as f64 + 0.5) / n as f64))
            .collect(),
        _ => mixture_quantiles(n),
    };
    standardise(&quantiles)
        .into_iter()
        .map(|x| (x * DIST_SCALE as f64).round() as i32)
        .collect()
}

/// Pareto with shape 3 (the tail netem's table uses), by its inverse CDF.
fn pareto(u: f64) -> f64 {
    (1.0 - u).powf(-1.0 / 3.0)
}

/// 0.25 normal + 0.75 Pareto, as iproute2's paretonormal mixes them: its quantiles come from
/// a large deterministic sample, since a sum has no closed-form inverse CDF.
fn mixture_quantiles(n: usize) -> Vec<f64> {
    let samples = 1 << 18;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        // xorshift64*: plenty for building a table.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (normal_sd, pareto_mean, pareto_sd) = (1.0, 1.5, 0.75f64.sqrt());
    let mut xs: Vec<f64> = (0..samples)
        .map(|_| {
            let z = normal_quantile(uniform().clamp(1e-12, 1.0 - 1e-12)) / normal_sd;
            let p = (pareto(uniform()) - pareto_mean) / pareto_sd;
            0.25 * z + 0.75 * p
        })
        .collect();
    xs.sort_by(f64::total_cmp);
    (0..n)
        .map(|i| xs[(i * samples + samples / 2) / n])
        .collect()
}

fn standardise(xs: &[f64]) -> Vec<f64> {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    xs.iter().map(|x| (x - mean) / sd).collect()
}

/// The standard normal's inverse CDF (Acklam's rational approximation, relative error
/// below 1.2e-9: far finer than the table's resolution).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(t: &[i32]) -> (f64, f64) {
        let xs: Vec<f64> = t.iter().map(|v| *v as f64 / DIST_SCALE as f64).collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        (mean, sd)
    }

    #[test]
    fn every_table_has_mean_zero_and_unit_spread() {
        let all = tables();
        assert_eq!(all.len(), 3 * DIST_TABLE_LEN as usize);
        for t in all.chunks(DIST_TABLE_LEN as usize) {
            let (mean, sd) = moments(t);
            assert!(mean.abs() < 0.01, "mean {mean}");
            assert!((sd - 1.0).abs() < 0.01, "sd {sd}");
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "quantiles ascend");
        }
    }

    #[test]
    fn normal_quantiles_are_right() {
        assert!(normal_quantile(0.5).abs() < 1e-9);
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-5);
        assert!((normal_quantile(0.001) + 3.090232).abs() < 1e-5);
    }

    #[test]
    fn pareto_is_skewed_right() {
        let t = table(DIST_PARETO);
        // Most draws lie a little below the mean, a few far above it.
        let below = t.iter().filter(|v| **v < 0).count();
        assert!(below > t.len() * 6 / 10, "{below}");
        assert!(*t.last().unwrap() > 8 * DIST_SCALE as i32);
    }
}
