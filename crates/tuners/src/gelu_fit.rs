//! Least-squares fit of a Padé "version B" rational `P(x) / (1 + |Q(x)|)` to exact GELU, in f64.
//!
//! Used once to obtain the hard-coded (5, 4) initial coefficients of [`crate::rational`], and at
//! init time for any other degrees. Method: a Sanathanan–Koerner linearised fit of
//! `P / (1 + Q)` (iterated weighted linear least squares), then Levenberg–Marquardt on the true
//! version-B residuals, wrapped in Lawson reweighting to push the L2 fit towards minimax.

use std::f64::consts::PI;

/// The error function, to ~1e-15: Taylor series below 3, the erfc continued fraction above.
pub fn erf(x: f64) -> f64 {
    if x < 0.0 {
        return -erf(-x);
    }
    if x < 3.0 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let (mut sum, mut term, mut n) = (0.0, x, 0.0f64);
        loop {
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / PI.sqrt()
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), modified Lentz.
        let tiny = 1e-300;
        let (mut f, mut c, mut d) = (x, x, 0.0f64);
        for k in 1..300 {
            let a = k as f64 / 2.0;
            d = x + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            d = 1.0 / d;
            c = x + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-x * x).exp() / PI.sqrt() / f
    }
}

/// Exact (erf-based) GELU: `x * Phi(x)`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// `P(x) / (1 + |Q(x)|)` with `numerator = [a0..ap]`, `denominator = [b1..bq]` (no constant term).
pub fn eval_rational(numerator: &[f64], denominator: &[f64], x: f64) -> f64 {
    let p = numerator.iter().rev().fold(0.0, |acc, c| acc * x + c);
    let q = denominator.iter().rev().fold(0.0, |acc, c| acc * x + c) * x;
    p / (1.0 + q.abs())
}

/// Largest `|g(x) - gelu(x)|` over `points` evenly spaced points of `[lo, hi]`.
pub fn max_gelu_error(numerator: &[f64], denominator: &[f64], lo: f64, hi: f64, points: usize) -> f64 {
    (0..points).map(|i| lo + (hi - lo) * i as f64 / (points - 1) as f64).map(|x| (eval_rational(numerator, denominator, x) - gelu(x)).abs()).fold(0.0, f64::max)
}

/// A fitted rational and its max error on the fitting interval.
#[derive(Debug, Clone)]
pub struct RationalFit {
    /// `a0..a_p`
    pub numerator: Vec<f64>,
    /// `b1..b_q`
    pub denominator: Vec<f64>,
    pub max_error: f64,
}

/// Fit `P / (1 + |Q|)` of degrees `(p, q)` to GELU on `[-range, range]`.
pub fn fit_gelu(p: usize, q: usize, range: f64) -> RationalFit {
    const POINTS: usize = 601;
    let xs: Vec<f64> = (0..POINTS).map(|i| -range + 2.0 * range * i as f64 / (POINTS - 1) as f64).collect();
    let fs: Vec<f64> = xs.iter().map(|&x| gelu(x)).collect();
    let split = |theta: &[f64]| (theta[..=p].to_vec(), theta[p + 1..].to_vec());

    // 1. Sanathanan–Koerner: minimise sum ((P - f (1 + Q)) / (1 + Q_prev))^2, linear in the unknowns.
    let mut theta = vec![0.0; p + 1 + q];
    for _ in 0..20 {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (&x, &f) in xs.iter().zip(&fs) {
            let (_, den) = split(&theta);
            let prev = 1.0 + den.iter().rev().fold(0.0, |acc, c| acc * x + c) * x;
            let w = 1.0 / prev.abs().max(1e-3);
            let mut row: Vec<f64> = (0..=p).map(|i| w * x.powi(i as i32)).collect();
            row.extend((1..=q).map(|j| -w * f * x.powi(j as i32)));
            a.push(row);
            b.push(w * f);
        }
        theta = lstsq(&a, &b);
    }

    // 2. Levenberg–Marquardt on the weighted version-B residuals; 3. Lawson reweighting.
    let mut weights = vec![1.0; POINTS];
    let mut best = theta.clone();
    let mut best_error = f64::INFINITY;
    for _ in 0..60 {
        theta = levenberg_marquardt(&xs, &fs, &weights, theta, p);
        let (num, den) = split(&theta);
        let errors: Vec<f64> = xs.iter().zip(&fs).map(|(&x, &f)| (eval_rational(&num, &den, x) - f).abs()).collect();
        let max = errors.iter().cloned().fold(0.0, f64::max);
        if max < best_error {
            let converged = best_error - max < 1e-9;
            best = theta.clone();
            best_error = max;
            if converged {
                break;
            }
        }
        let total: f64 = weights.iter().zip(&errors).map(|(w, e)| w * e).sum();
        if total <= 0.0 {
            break;
        }
        for (w, e) in weights.iter_mut().zip(&errors) {
            *w *= e / total * POINTS as f64;
        }
    }
    let (numerator, denominator) = split(&best);
    let max_error = max_gelu_error(&numerator, &denominator, -range, range, 2001);
    RationalFit { numerator, denominator, max_error }
}

/// Minimise `sum w_i (g(x_i) - f_i)^2` over `theta = [a0..ap, b1..bq]`.
fn levenberg_marquardt(xs: &[f64], fs: &[f64], weights: &[f64], mut theta: Vec<f64>, p: usize) -> Vec<f64> {
    let residuals =
        |th: &[f64]| -> Vec<f64> { xs.iter().zip(fs).zip(weights).map(|((&x, &f), &w)| w.sqrt() * (eval_rational(&th[..=p], &th[p + 1..], x) - f)).collect() };
    let cost = |r: &[f64]| r.iter().map(|v| v * v).sum::<f64>();
    let n = theta.len();
    let mut lambda = 1e-3;
    for _ in 0..50 {
        let r = residuals(&theta);
        let current = cost(&r);
        let jacobian: Vec<Vec<f64>> = xs
            .iter()
            .zip(weights)
            .map(|(&x, &w)| {
                let (num, den) = (&theta[..=p], &theta[p + 1..]);
                let pv = num.iter().rev().fold(0.0, |acc, c| acc * x + c);
                let qv = den.iter().rev().fold(0.0, |acc, c| acc * x + c) * x;
                let d = 1.0 + qv.abs();
                let sign = if qv >= 0.0 { 1.0 } else { -1.0 };
                let mut row: Vec<f64> = (0..=p).map(|i| w.sqrt() * x.powi(i as i32) / d).collect();
                row.extend((1..den.len() + 1).map(|j| -w.sqrt() * pv / (d * d) * sign * x.powi(j as i32)));
                row
            })
            .collect();
        let diag: Vec<f64> = (0..n).map(|k| jacobian.iter().map(|row| row[k] * row[k]).sum::<f64>().max(1e-30)).collect();
        let mut improved = false;
        for _ in 0..20 {
            let mut a = jacobian.clone();
            let mut b: Vec<f64> = r.iter().map(|v| -v).collect();
            for (k, dk) in diag.iter().enumerate() {
                let mut row = vec![0.0; n];
                row[k] = (lambda * dk).sqrt();
                a.push(row);
                b.push(0.0);
            }
            let step = lstsq(&a, &b);
            let candidate: Vec<f64> = theta.iter().zip(&step).map(|(t, s)| t + s).collect();
            if cost(&residuals(&candidate)) < current {
                theta = candidate;
                lambda = (lambda / 3.0).max(1e-12);
                improved = true;
                break;
            }
            lambda *= 4.0;
        }
        if !improved {
            break;
        }
    }
    theta
}

/// Least-squares solution of `a x = b` (rows >= cols) by Householder QR.
fn lstsq(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let (m, n) = (a.len(), a[0].len());
    let mut r = a.to_vec();
    let mut y = b.to_vec();
    for k in 0..n {
        let norm = (k..m).map(|i| r[i][k] * r[i][k]).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if r[k][k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (k..m).map(|i| r[i][k]).collect();
        v[0] -= alpha;
        let vv = v.iter().map(|t| t * t).sum::<f64>();
        if vv == 0.0 {
            continue;
        }
        #[allow(clippy::needless_range_loop)] // column j of the row-major matrix
        for j in k..n {
            let s = (k..m).map(|i| v[i - k] * r[i][j]).sum::<f64>() * 2.0 / vv;
            for i in k..m {
                r[i][j] -= s * v[i - k];
            }
        }
        let s = (k..m).map(|i| v[i - k] * y[i]).sum::<f64>() * 2.0 / vv;
        for i in k..m {
            y[i] -= s * v[i - k];
        }
    }
    let mut x = vec![0.0; n];
    for k in (0..n).rev() {
        let s = y[k] - (k + 1..n).map(|j| r[k][j] * x[j]).sum::<f64>();
        x[k] = if r[k][k].abs() > 1e-300 { s / r[k][k] } else { 0.0 };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of erf (Abramowitz & Stegun table 7.1, and erf(4) to 16 digits).
    #[test]
    fn erf_matches_tabulated_values() {
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (4.0, 0.999_999_984_582_742_1),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {} want {want}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14);
        }
        // Both branches agree at the switch point.
        assert!((erf(3.0 - 1e-12) - erf(3.0)).abs() < 1e-13);
    }

    #[test]
    fn lstsq_recovers_an_exact_polynomial() {
        let xs: Vec<f64> = (0..20).map(|i| i as f64 / 4.0 - 2.0).collect();
        let a: Vec<Vec<f64>> = xs.iter().map(|&x| vec![1.0, x, x * x]).collect();
        let b: Vec<f64> = xs.iter().map(|&x| 0.5 - 2.0 * x + 0.25 * x * x).collect();
        let sol = lstsq(&a, &b);
        for (s, w) in sol.iter().zip([0.5, -2.0, 0.25]) {
            assert!((s - w).abs() < 1e-12, "{sol:?}");
        }
    }

    /// Re-runs the fit behind the hard-coded (5, 4) constants and checks they are as good:
    /// `cargo test -p iapt-tuners hard_coded_constants_are_as_good -- --nocapture` prints them.
    #[test]
    fn hard_coded_constants_are_as_good_as_a_refit() {
        let fit = fit_gelu(5, 4, 3.0);
        println!("numerator {:?}\ndenominator {:?}\nmax error {:e}", fit.numerator, fit.denominator, fit.max_error);
        let constants = max_gelu_error(&crate::rational::GELU_NUMERATOR_5_4, &crate::rational::GELU_DENOMINATOR_5_4, -3.0, 3.0, 2001);
        assert!(fit.max_error < 1e-3, "refit max error {}", fit.max_error);
        assert!(constants <= fit.max_error * 1.05, "hard-coded constants ({constants:e}) are worse than a refit ({:e})", fit.max_error);
    }

    /// Lower degrees fit worse but still sensibly; the fit never produces non-finite values.
    #[test]
    fn other_degrees_fit_gelu_reasonably() {
        for (p, q, bound) in [(3, 2, 5e-2), (4, 3, 1e-2)] {
            let fit = fit_gelu(p, q, 3.0);
            assert_eq!((fit.numerator.len(), fit.denominator.len()), (p + 1, q));
            assert!(fit.max_error < bound, "({p},{q}) max error {}", fit.max_error);
        }
    }
}
