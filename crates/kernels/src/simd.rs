//! Element-wise loops compiled for the widest SIMD the CPU has, chosen at run time, and an
//! `exp` written so that those loops vectorise (libm's `expf` is a call per element: SwiGLU's
//! sigmoid over a training batch's 1.5 M gate values took ~10 ms a layer with it).

/// Defines `fn name(args)` whose body is compiled three times (AVX-512, AVX2 + FMA, the
/// baseline) and run in the widest version this CPU supports.
macro_rules! widest_simd {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features this version was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// `e^x` in f32 within a few ulp on [-87.3, 88.3], saturating outside it (so that `2^n` stays a
/// normal f32: e^88.3 ≈ 2.2e38 above, 1.2e-38 below; enough for a sigmoid), without branches or
/// calls: `2^n · e^r` with `n = round(x · log2 e)`, `|r| ≤ ln 2 / 2`, and `e^r` by its degree-7
/// Taylor polynomial (truncation error below 1e-8 relative).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for the n that occur (Cody–Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer (|v| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^n from its exponent bits: n ∈ [-126, 127] after the clamp.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

widest_simd! {
    /// `gate ← silu(gate) · up`, SwiGLU's gating.
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g * sigmoid(*g) * u;
        }
    }
}

widest_simd! {
    /// `d ← d · up · σ(gate) · (1 + gate · (1 − σ(gate)))`: the gate's gradient through
    /// `silu(gate) · up`, `d` holding the output's.
    pub fn silu_mul_gate_grad(d: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((d, g), u) in d.iter_mut().zip(gate).zip(up) {
            let s = sigmoid(*g);
            *d = *d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

widest_simd! {
    /// Both gradients through `silu(gate) · up` in one pass (one sigmoid per element): `d_up ←
    /// d · silu(gate)`, then `d` as in [`silu_mul_gate_grad`], `d` holding the output's on entry.
    pub fn silu_mul_grads(d: &mut [f32], d_up: &mut [f32], gate: &[f32], up: &[f32]) {
        for (((d, du), g), u) in d.iter_mut().zip(d_up.iter_mut()).zip(gate).zip(up) {
            let s = sigmoid(*g);
            *du = *d * g * s;
            *d = *d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

widest_simd! {
    /// `d ← d · silu(gate)`: `up`'s gradient through `silu(gate) · up`.
    pub fn silu_mul_up_grad(d: &mut [f32], gate: &[f32]) {
        for (d, g) in d.iter_mut().zip(gate) {
            *d = *d * g * sigmoid(*g);
        }
    }
}

widest_simd! {
    /// `stats ← [max x, Σ exp(x − max x)]` of a row of finite values: its log-sum-exp is
    /// `max + ln Σ` (the softmax denominator without overflow). Sixteen lanes of partial maxima
    /// and sums, so both loops vectorise.
    pub fn max_and_sum_exp(x: &[f32], stats: &mut [f32; 2]) {
        const LANES: usize = 16;
        let (chunks, rest) = (x.chunks_exact(LANES), x.chunks_exact(LANES).remainder());
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        for chunk in chunks.clone() {
            for (m, &v) in lane_max.iter_mut().zip(chunk) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = lane_max.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let mut lane_sum = [0.0f32; LANES];
        for chunk in chunks {
            for (s, &v) in lane_sum.iter_mut().zip(chunk) {
                *s += exp(v - max);
            }
        }
        let sum = lane_sum.iter().sum::<f32>() + rest.iter().map(|&v| exp(v - max)).sum::<f32>();
        *stats = [max, sum];
    }
}

widest_simd! {
    /// `x ← exp(x − shift) · scale`, in place: with `shift` the row's log-sum-exp, its softmax
    /// times `scale` (the cross-entropy gradient before the target's `− scale`).
    pub fn scale_exp_in_place(x: &mut [f32], shift: f32, scale: f32) {
        for v in x.iter_mut() {
            *v = scale * exp(*v - shift);
        }
    }
}

widest_simd! {
    /// Attention's weighted values for a few queries, reading each value row once per block of
    /// up to [`VALUE_ROWS`] queries: `out[i] = Σ_j probs[i * n + j] · values[j]` for the
    /// `out.len() / hd` query rows and the `n = probs.len() / rows` value rows (`stride` apart in
    /// `values`, `hd` wide). `out` is overwritten. Decoding's three queries per KV head, where a
    /// general product's packing and dispatch cost more than the arithmetic. The sums of a
    /// block's `VALUE_LANES` columns stay in registers across all `n` value rows (accumulating in
    /// `out` itself made every multiply-add a store and a reload: a third of decoding's attention).
    pub fn weighted_value_sums(probs: &[f32], values: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
        let m = out.len() / hd;
        let n = probs.len() / m.max(1);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(VALUE_ROWS);
            match rows {
                1 => value_block::<1>(probs, n, i, values, stride, hd, out),
                2 => value_block::<2>(probs, n, i, values, stride, hd, out),
                _ => value_block::<VALUE_ROWS>(probs, n, i, values, stride, hd, out),
            }
            i += rows;
        }
    }
}

/// Query rows whose sums [`weighted_value_sums`] keeps in registers at once: 3 × 32 columns is
/// 6 AVX-512 or 12 AVX2 registers of accumulators.
const VALUE_ROWS: usize = 3;

/// Columns of a block of [`weighted_value_sums`].
const VALUE_LANES: usize = 32;

/// How many value rows ahead [`weighted_value_sums`] asks for the next rows' cache lines: a
/// task's value rows are a short stream (~50 KB) the hardware prefetchers barely ramp up on
/// (`--example decode_attention`, batch 8, with and without, alternated three times: 6.45–7.13
/// against 6.74–7.28 ms a step, small but in the same direction each time).
const PREFETCH_ROWS: usize = 8;

/// A hint to load the 64-byte cache lines of `values[at..at + VALUE_LANES]` (nothing past the end).
#[inline(always)]
fn prefetch(values: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + VALUE_LANES <= values.len() {
        for line in (0..VALUE_LANES).step_by(16) {
            // SAFETY: in bounds (checked above); a prefetch has no other effect.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(values.as_ptr().add(at + line) as *const i8) };
        }
    }
}

/// Query rows `i0..i0 + R` of [`weighted_value_sums`]: `VALUE_LANES` columns at a time, then
/// the last `hd % VALUE_LANES` columns one by one.
#[inline(always)]
fn value_block<const R: usize>(probs: &[f32], n: usize, i0: usize, values: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
    let probs: [&[f32]; R] = std::array::from_fn(|r| &probs[(i0 + r) * n..][..n]);
    let mut c0 = 0;
    while c0 + VALUE_LANES <= hd {
        let mut sums = [[0.0f32; VALUE_LANES]; R];
        for j in 0..n {
            prefetch(values, (j + PREFETCH_ROWS) * stride + c0);
            let value: &[f32; VALUE_LANES] = values[j * stride + c0..][..VALUE_LANES].try_into().expect("VALUE_LANES values");
            for (sums, probs) in sums.iter_mut().zip(&probs) {
                let p = probs[j];
                for (s, v) in sums.iter_mut().zip(value) {
                    *s += p * v;
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            out[(i0 + r) * hd + c0..][..VALUE_LANES].copy_from_slice(sums);
        }
        c0 += VALUE_LANES;
    }
    for c in c0..hd {
        for (r, probs) in probs.iter().enumerate() {
            out[(i0 + r) * hd + c] = (0..n).fold(0.0, |s, j| s + probs[j] * values[j * stride + c]);
        }
    }
}

widest_simd! {
    /// `x ← softmax(x)` in place over a row whose hidden slots hold `-inf` (they get exactly 0)
    /// and at least one finite value: sixteen lanes of partial maxima and sums, so every loop
    /// vectorises (a serial sum is a chain of dependent additions).
    pub fn softmax_in_place(x: &mut [f32]) {
        const LANES: usize = 16;
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (m, &v) in lane_max.iter_mut().zip(chunk) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = lane_max.iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let mut lane_sum = [0.0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (s, v) in lane_sum.iter_mut().zip(chunk) {
                *v = if *v == f32::NEG_INFINITY { 0.0 } else { exp(*v - max) };
                *s += *v;
            }
        }
        let mut sum = 0.0;
        for v in chunks.into_remainder() {
            *v = if *v == f32::NEG_INFINITY { 0.0 } else { exp(*v - max) };
            sum += *v;
        }
        let inverse = 1.0 / (lane_sum.iter().sum::<f32>() + sum);
        x.iter_mut().for_each(|p| *p *= inverse);
    }
}

/// The first index of `x` holding `value` (a row's argmax once its maximum is known): sixteen
/// elements compared at a time, so the scan vectorises, then the hit located within them.
pub fn first_index_of(x: &[f32], value: f32) -> Option<usize> {
    const LANES: usize = 16;
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        if chunk.iter().fold(false, |hit, &v| hit | (v == value)) {
            return chunk.iter().position(|&v| v == value).map(|i| c * LANES + i);
        }
    }
    rest.iter().position(|&v| v == value).map(|i| x.len() - rest.len() + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64's exp over the whole useful range, densely, and at the clamps.
    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -870_000..=883_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "largest relative error {worst:e}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite() && exp(0.0) == 1.0);
    }

    /// Against f64 on rows shorter than, equal to and across the 16 lanes, hidden slots (`-inf`)
    /// in the lanes and in the remainder, the maximum in the remainder.
    #[test]
    fn softmax_in_place_matches_f64_and_zeroes_hidden_slots() {
        for len in [1usize, 6, 16, 37] {
            let scores: Vec<f32> = (0..len)
                .map(|i| if i % 5 == 1 { f32::NEG_INFINITY } else { ((i * 7919) % 101) as f32 * 0.13 - 6.0 + if i == 35 { 9.0 } else { 0.0 } })
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let total: f64 = scores.iter().map(|&v| (v as f64 - max).exp()).sum();
            let mut probs = scores.clone();
            softmax_in_place(&mut probs);
            for (p, s) in probs.iter().zip(&scores) {
                let want = (*s as f64 - max).exp() / total;
                assert!((*p as f64 - want).abs() <= 1e-6 * want.max(1e-30), "len {len}: {p} vs {want}");
                if *s == f32::NEG_INFINITY {
                    assert_eq!(*p, 0.0, "hidden slots weigh exactly 0");
                }
            }
        }
    }

    /// Against f64 sums, for widths below, at and across 16 and 32 columns (3 to 96), value
    /// rows `stride` apart with unread floats between them (NaN, so a read of them would show),
    /// and 1 to 6 queries (blocks of 3, 2 and 1), widths of one and several 32-column blocks with
    /// or without a remainder.
    #[test]
    fn weighted_value_sums_match_f64() {
        let value = |i: usize| ((i * 7919 % 263) as f32 - 131.0) / 97.0;
        for &(hd, m, n) in &[(3, 1, 5), (16, 6, 33), (20, 3, 17), (64, 6, 150), (64, 1, 1), (64, 2, 40), (96, 4, 9), (40, 5, 3)] {
            let stride = hd + 5;
            let rows: Vec<f32> = (0..n * stride).map(|i| if i % stride < hd { value(i) } else { f32::NAN }).collect();
            let probs: Vec<f32> = (0..m * n).map(|i| value(i + 5000).abs()).collect();
            let mut out = vec![f32::NAN; m * hd];
            weighted_value_sums(&probs, &rows, stride, hd, &mut out);
            for i in 0..m {
                for p in 0..hd {
                    let want: f64 = (0..n).map(|j| probs[i * n + j] as f64 * rows[j * stride + p] as f64).sum();
                    let got = out[i * hd + p] as f64;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "hd{hd} ({i}, {p}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn log_sum_exp_parts_and_scaled_softmax_match_f64() {
        // 37 values: two full 16-lane chunks and a remainder holding the maximum.
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 * 0.31 - 12.0 + if i == 35 { 30.0 } else { 0.0 }).collect();
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        let mut stats = [0.0f32; 2];
        max_and_sum_exp(&x, &mut stats);
        assert_eq!(stats[0] as f64, max);
        assert!((stats[1] as f64 - sum).abs() <= 1e-6 * sum, "{} vs {sum}", stats[1]);
        // The shift as the kernel gets it (an f32 near 20 is off by up to 1e-6, which exp keeps).
        let lse = (max + sum.ln()) as f32 as f64;
        let mut out = x.clone();
        scale_exp_in_place(&mut out, lse as f32, 0.25);
        for (o, &v) in out.iter().zip(&x) {
            let want = 0.25 * (v as f64 - lse).exp();
            assert!((*o as f64 - want).abs() <= 1e-6 * want.max(1e-30), "{o} vs {want}");
        }
    }

    /// The first occurrence, in a full chunk, in the remainder, and none.
    #[test]
    fn first_index_of_finds_the_first_occurrence() {
        let mut x = vec![0.0f32; 37];
        assert_eq!(first_index_of(&x, 1.0), None);
        x[35] = 1.0;
        assert_eq!(first_index_of(&x, 1.0), Some(35));
        x[20] = 1.0;
        x[17] = 1.0;
        assert_eq!(first_index_of(&x, 1.0), Some(17));
        x[3] = 1.0;
        assert_eq!(first_index_of(&x, 1.0), Some(3));
        assert_eq!(first_index_of(&x, 0.0), Some(0));
        assert_eq!(first_index_of(&[], 0.0), None);
    }

    #[test]
    fn gating_and_its_gradients_match_the_formulas() {
        let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let up: Vec<f32> = (0..1000).map(|i| ((i * 7) % 13) as f32 * 0.3 - 2.0).collect();
        let dy: Vec<f32> = (0..1000).map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0).collect();
        let sig = |g: f32| 1.0 / (1.0 + (-g as f64).exp());
        let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs());
        let mut out = gate.clone();
        silu_mul(&mut out, &up);
        let mut dg = dy.clone();
        silu_mul_gate_grad(&mut dg, &gate, &up);
        let mut du = dy.clone();
        silu_mul_up_grad(&mut du, &gate);
        for i in 0..1000 {
            let (g, u, d, s) = (gate[i] as f64, up[i] as f64, dy[i] as f64, sig(gate[i]));
            assert!(close(out[i], g * s * u), "silu_mul at {g}: {}", out[i]);
            assert!(close(dg[i], d * u * s * (1.0 + g * (1.0 - s))), "gate gradient at {g}: {}", dg[i]);
            assert!(close(du[i], d * g * s), "up gradient at {g}: {}", du[i]);
        }
    }
}
