//! The generator's elementwise activation: a learnable Padé rational ("version B"), or a fixed
//! GELU / ReLU / identity for ablations (method spec §2–3).

use crate::config::tuner_config;
use crate::gelu_fit;
use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::{backend::Backend, FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// GELU-fitted numerator `a0..a5` of the (5, 4) rational. Obtained by
/// `gelu_fit::fit_gelu(5, 4, 3.0)` (Sanathanan–Koerner linearised least squares on 601 points of
/// [-3, 3], then Levenberg–Marquardt on the true `P/(1+|Q|)` residuals with Lawson reweighting
/// towards minimax), printed by `cargo test -p iapt-tuners hard_coded_constants_are_as_good -- --nocapture`
/// and pasted here.
/// Max |g - GELU| on [-3, 3]: 4.4e-4 (re-checked by `tests::init_approximates_gelu`).
pub const GELU_NUMERATOR_5_4: [f64; 6] = [
    -4.429_594_184_981_334e-4,
    4.999_999_999_539_765e-1,
    4.028_454_508_856_572_6e-1,
    7.536_533_080_119_97e-2,
    -1.176_384_387_783_066_4e-2,
    -3.523_134_922_829_411e-3,
];
/// GELU-fitted denominator `b1..b4` of the (5, 4) rational (same fit as [`GELU_NUMERATOR_5_4`]).
/// The odd terms come out ~0: GELU(x) - x/2 is even, so the fit is essentially
/// x/2 + even(x) with an even denominator.
pub const GELU_DENOMINATOR_5_4: [f64; 4] = [5.958_904_362_492_838e-9, 1.507_306_566_068_639_4e-1, 1.375_552_243_401_100_9e-9, -7.046_269_968_964_62e-3];

tuner_config! {
    /// Degrees of the rational `P(x) / (1 + |Q(x)|)`; coefficients start as a GELU fit on [-3, 3].
    pub struct RationalConfig {
        /// Degree of the numerator P (it has `numerator_degree + 1` coefficients).
        pub numerator_degree: usize = 5,
        /// Degree of the denominator Q (no constant term: `denominator_degree` coefficients).
        pub denominator_degree: usize = 4,
    }
}

impl RationalConfig {
    /// Degrees (5, 4).
    pub fn new() -> Self {
        Self::default()
    }

    /// Initial `(numerator, denominator)` coefficients: the hard-coded fit for (5, 4), otherwise
    /// fitted now (a fraction of a second).
    pub fn gelu_coefficients(&self) -> (Vec<f64>, Vec<f64>) {
        if (self.numerator_degree, self.denominator_degree) == (5, 4) {
            return (GELU_NUMERATOR_5_4.to_vec(), GELU_DENOMINATOR_5_4.to_vec());
        }
        let fit = gelu_fit::fit_gelu(self.numerator_degree, self.denominator_degree, 3.0);
        (fit.numerator, fit.denominator)
    }

    /// Learnable rational initialised to approximate GELU.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Rational<B> {
        let (num, den) = self.gelu_coefficients();
        let param = |c: Vec<f64>| {
            let n = c.len();
            let c: Vec<f32> = c.into_iter().map(|v| v as f32).collect();
            Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(c, [n]), device))
        };
        Rational { numerator: param(num), denominator: param(den) }
    }

    /// Learnable scalars of one rational.
    pub fn num_params(&self) -> usize {
        self.numerator_degree + 1 + self.denominator_degree
    }
}

/// `g(x) = (a0 + a1 x + ... + a_p x^p) / (1 + |b1 x + ... + b_q x^q|)`, elementwise, evaluated
/// in f32 whatever the input dtype (x^5 overflows f16 beyond |x| ~ 9). The denominator is >= 1,
/// so g has no poles; far outside the fitting range [-3, 3] it departs from GELU (it is only
/// linear-ish at infinity), which is why its inputs should stay in range.
#[derive(Module, Debug)]
pub struct Rational<B: Backend> {
    /// `[a0, ..., a_p]`
    pub numerator: Param<Tensor<B, 1>>,
    /// `[b1, ..., b_q]`
    pub denominator: Param<Tensor<B, 1>>,
}

impl<B: Backend> Rational<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let num = self.numerator.val().cast(FloatDType::F32);
        let den = self.denominator.val().cast(FloatDType::F32);
        let coef = |c: &Tensor<B, 1>, i: usize| c.clone().narrow(0, i, 1).reshape([1; D]);
        // Horner: P = (((a_p x + a_{p-1}) x + ...) x + a0)
        let p_deg = num.dims()[0] - 1;
        let mut p = coef(&num, p_deg).expand(x.shape());
        for i in (0..p_deg).rev() {
            p = p * x.clone() + coef(&num, i);
        }
        // Q = ((b_q x + b_{q-1}) x + ... + b1) x
        let q_deg = den.dims()[0];
        let q = if q_deg == 0 {
            x.zeros_like()
        } else {
            let mut q = coef(&den, q_deg - 1).expand(x.shape());
            for j in (0..q_deg - 1).rev() {
                q = q * x.clone() + coef(&den, j);
            }
            q * x
        };
        (p / (q.abs() + 1.0)).cast(FloatDType::from(dtype))
    }
}

/// Which activation the generator applies to the pooled vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationKind {
    /// Learnable rational, per layer (the paper's choice).
    Rational,
    /// Exact (erf) GELU.
    Gelu,
    Relu,
    Identity,
}

/// The activation of one layer's generator.
#[derive(Debug, Clone)]
pub struct ActivationConfig {
    pub kind: ActivationKind,
    /// Degrees of the rational (used only when `kind` is `rational`).
    pub rational: RationalConfig,
}

impl Default for ActivationConfig {
    /// The paper's learnable (5, 4) rational.
    fn default() -> Self {
        Self { kind: ActivationKind::Rational, rational: RationalConfig::default() }
    }
}

impl ActivationConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Activation<B> {
        let rational = (self.kind == ActivationKind::Rational).then(|| self.rational.init(device));
        Activation { rational, kind: self.kind }
    }

    /// Learnable scalars (the rational's coefficients, or none).
    pub fn num_params(&self) -> usize {
        match self.kind {
            ActivationKind::Rational => self.rational.num_params(),
            _ => 0,
        }
    }
}

/// A learnable rational or a fixed function; fixed ones also run in f32.
#[derive(Module, Debug)]
pub struct Activation<B: Backend> {
    /// Present exactly when `kind` is `rational`.
    pub rational: Option<Rational<B>>,
    #[module(skip)]
    pub kind: ActivationKind,
}

impl<B: Backend> Activation<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(rational) = &self.rational {
            return rational.forward(x);
        }
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let y = match self.kind {
            ActivationKind::Gelu => gelu(x),
            ActivationKind::Relu => relu(x),
            ActivationKind::Identity | ActivationKind::Rational => x,
        };
        y.cast(FloatDType::from(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gelu_fit::{eval_rational, gelu as exact_gelu, max_gelu_error};
    type TB = burn::backend::NdArray;
    type AD = burn::backend::Autodiff<TB>;

    fn host<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec().unwrap()
    }

    fn grid(lo: f64, hi: f64, n: usize) -> Vec<f32> {
        (0..n).map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32).collect()
    }

    #[test]
    fn hard_coded_coefficients_fit_gelu() {
        let e = max_gelu_error(&GELU_NUMERATOR_5_4, &GELU_DENOMINATOR_5_4, -3.0, 3.0, 6001);
        assert!(e < 1e-3, "f64 max GELU error on [-3,3] is {e}");
    }

    /// The module as initialised, evaluated in f32 by burn, against exact GELU.
    #[test]
    fn init_approximates_gelu() {
        let r = RationalConfig::new().init::<TB>(&Default::default());
        let xs = grid(-3.0, 3.0, 6001);
        let y = host(r.forward(Tensor::<TB, 1>::from_floats(xs.as_slice(), &Default::default())));
        let err = xs.iter().zip(&y).map(|(&x, &g)| (g - exact_gelu(x as f64)).abs()).fold(0.0, f64::max);
        assert!(err < 1e-2, "max GELU error on [-3,3] is {err}");
        assert!(err < 2e-3, "fit quality regressed: max error {err}");
    }

    #[test]
    fn finite_on_a_wide_grid_and_matches_the_f64_formula() {
        let r = RationalConfig::new().init::<TB>(&Default::default());
        let xs = grid(-10.0, 10.0, 4001);
        let y = host(r.forward(Tensor::<TB, 2>::from_data(TensorData::new(xs.clone(), [4001, 1]), &Default::default())));
        for (&x, &g) in xs.iter().zip(&y) {
            assert!(g.is_finite(), "g({x}) = {g}");
            let want = eval_rational(&GELU_NUMERATOR_5_4, &GELU_DENOMINATOR_5_4, x as f64);
            assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "g({x}) = {g}, f64 formula {want}");
        }
    }

    #[test]
    fn fixed_activations() {
        let device = Default::default();
        let x = Tensor::<TB, 1>::from_floats([-2.0, -0.5, 0.0, 1.5], &device);
        let run = |kind| host(ActivationConfig { kind, ..Default::default() }.init::<TB>(&device).forward(x.clone()));
        assert_eq!(run(ActivationKind::Relu), vec![0.0, 0.0, 0.0, 1.5]);
        assert_eq!(run(ActivationKind::Identity), vec![-2.0, -0.5, 0.0, 1.5]);
        for (g, x) in run(ActivationKind::Gelu).iter().zip([-2.0, -0.5, 0.0, 1.5]) {
            assert!((g - exact_gelu(x)).abs() < 1e-5);
        }
        assert!(ActivationConfig { kind: ActivationKind::Gelu, ..Default::default() }.init::<TB>(&device).rational.is_none());
        assert_eq!(ActivationConfig { kind: ActivationKind::Relu, ..Default::default() }.num_params(), 0);
        assert_eq!(ActivationConfig::default().num_params(), 10);
    }

    /// Autodiff gradients w.r.t. the 10 coefficients and the input, against central differences
    /// of the f64 formula. Loss = sum_i w_i g(x_i).
    #[test]
    fn gradients_match_finite_differences() {
        let device = Default::default();
        // Perturb away from the GELU fit so every coefficient matters; avoid x = 0 (kink of |Q|).
        let mut num = GELU_NUMERATOR_5_4.to_vec();
        let mut den = GELU_DENOMINATOR_5_4.to_vec();
        num.iter_mut().enumerate().for_each(|(i, c)| *c += 0.01 * (i as f64 + 1.0));
        den.iter_mut().enumerate().for_each(|(j, c)| *c += 0.02 * (j as f64 - 1.5));
        let to_param = |c: &[f64]| Param::from_tensor(Tensor::<AD, 1>::from_floats(c.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), &device));
        let r = Rational { numerator: to_param(&num), denominator: to_param(&den) };
        let xs = [-2.7f64, -1.3, -0.4, 0.35, 1.1, 2.2, 2.9];
        let ws = [0.3f64, -1.2, 0.8, 0.5, -0.7, 1.1, 0.2];
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
        let x = Tensor::<AD, 1>::from_floats(f32s(&xs).as_slice(), &device).require_grad();
        let w = Tensor::<AD, 1>::from_floats(f32s(&ws).as_slice(), &device);
        let loss = (r.forward(x.clone()) * w).sum();
        let grads = loss.backward();
        let g_num = host(r.numerator.grad(&grads).unwrap());
        let g_den = host(r.denominator.grad(&grads).unwrap());
        let g_x = host(x.grad(&grads).unwrap());

        let loss64 = |num: &[f64], den: &[f64], xs: &[f64]| xs.iter().zip(&ws).map(|(&x, w)| w * eval_rational(num, den, x)).sum::<f64>();
        let h = 1e-6;
        let check = |got: f64, want: f64, what: String| {
            assert!((got - want).abs() <= 2e-3 * (1.0 + want.abs()), "{what}: autodiff {got}, finite difference {want}");
        };
        for i in 0..num.len() {
            let (mut up, mut down) = (num.clone(), num.clone());
            up[i] += h;
            down[i] -= h;
            check(g_num[i], (loss64(&up, &den, &xs) - loss64(&down, &den, &xs)) / (2.0 * h), format!("d/da{i}"));
        }
        for j in 0..den.len() {
            let (mut up, mut down) = (den.clone(), den.clone());
            up[j] += h;
            down[j] -= h;
            check(g_den[j], (loss64(&num, &up, &xs) - loss64(&num, &down, &xs)) / (2.0 * h), format!("d/db{}", j + 1));
        }
        for k in 0..xs.len() {
            let (mut up, mut down) = (xs.to_vec(), xs.to_vec());
            up[k] += h;
            down[k] -= h;
            check(g_x[k], (loss64(&num, &den, &up) - loss64(&num, &den, &down)) / (2.0 * h), format!("d/dx{k}"));
        }
        // The check can fail: a wrong coefficient gradient would not match.
        assert!(g_den.iter().any(|g| g.abs() > 1e-3), "denominator gradients all ~0: {g_den:?}");
    }

    #[test]
    fn other_degrees_are_fitted_at_init() {
        let config = RationalConfig::new().with_numerator_degree(4).with_denominator_degree(3);
        let r = config.init::<TB>(&Default::default());
        assert_eq!(r.numerator.dims(), [5]);
        assert_eq!(r.denominator.dims(), [3]);
        let xs = grid(-3.0, 3.0, 601);
        let y = host(r.forward(Tensor::<TB, 1>::from_floats(xs.as_slice(), &Default::default())));
        let err = xs.iter().zip(&y).map(|(&x, &g)| (g - exact_gelu(x as f64)).abs()).fold(0.0, f64::max);
        assert!(err < 1e-2, "(4,3) max GELU error {err}");
    }
}
