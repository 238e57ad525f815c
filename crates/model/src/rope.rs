//! Rotary position embeddings, HF "rotate-half" convention, evaluated at explicit per-row positions.

use burn::tensor::{backend::Backend, Int, Tensor};

/// Cosines and sines for one forward pass, shaped `[batch, tokens, 1, head_dim]` so they
/// broadcast over the heads of a projection's output as it comes, `[batch, tokens, heads, hd]`:
/// rotating before the heads move to axis 1 keeps every operand contiguous. Computed once per
/// forward and shared by every layer.
#[derive(Clone, Debug)]
pub struct RopeAngles<B: Backend> {
    pub cos: Tensor<B, 4>,
    /// `[-sin, sin]` over the two halves of the head: the sign of `rotate_half`, folded in
    /// once here instead of negating half of every rotated tensor. `(-a)·b == a·(-b)` exactly.
    pub signed_sin: Tensor<B, 4>,
}

/// Inverse frequencies `theta^(-2i/hd)` for `i in 0..hd/2`, in f32 as HF computes them.
pub fn inverse_frequencies(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect()
}

impl<B: Backend> RopeAngles<B> {
    /// Angles for `positions` (`[batch, tokens]`); each row has its own positions, which is
    /// what makes left padding and KV prefixes exact.
    pub fn new(positions: Tensor<B, 2, Int>, inv_freq: &[f32]) -> Self {
        let device = positions.device();
        let [batch, tokens] = positions.dims();
        let half = inv_freq.len();
        let inv = Tensor::<B, 1>::from_floats(inv_freq, &device).reshape([1, 1, half]);
        let angles = positions.float().reshape([batch, tokens, 1]) * inv; // [b, t, hd/2]
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        let cos = Tensor::cat(vec![cos.clone(), cos], 2).unsqueeze_dim::<4>(2); // [b,t,1,hd]
        let signed_sin = Tensor::cat(vec![sin.clone().neg(), sin], 2).unsqueeze_dim::<4>(2);
        Self { cos, signed_sin }
    }

    /// Rotate `x` (`[batch, tokens, heads, head_dim]`): `x*cos + rotate_half(x)*sin`,
    /// where `rotate_half([x1, x2]) = [-x2, x1]` over the two halves of the head.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(rotated) = iapt_kernels::fused::rope(&x, &self.cos, &self.signed_sin) {
            return rotated;
        }
        let hd = x.dims()[3];
        let x1 = x.clone().narrow(3, 0, hd / 2);
        let x2 = x.clone().narrow(3, hd / 2, hd / 2);
        let swapped = Tensor::cat(vec![x2, x1], 3);
        x * self.cos.clone() + swapped * self.signed_sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    /// Hand-computed: a 4-dim head at position p rotates pairs (x0,x2) and (x1,x3) by p*f_i.
    #[test]
    fn rotates_halves_by_position_times_frequency() {
        let device = Default::default();
        let inv = inverse_frequencies(4, 100.0); // [1, 0.1]
        assert!((inv[1] - 0.1).abs() < 1e-7);
        let pos = Tensor::<TB, 2, Int>::from_ints([[3]], &device);
        let rope = RopeAngles::new(pos, &inv);
        let x = Tensor::<TB, 4>::from_floats([[[[1.0, 2.0, 3.0, 4.0]]]], &device);
        let y: Vec<f32> = rope.apply(x).into_data().to_vec().unwrap();
        let (a0, a1) = (3.0f32, 0.3f32);
        let expect = [1.0 * a0.cos() - 3.0 * a0.sin(), 2.0 * a1.cos() - 4.0 * a1.sin(), 3.0 * a0.cos() + 1.0 * a0.sin(), 4.0 * a1.cos() + 2.0 * a1.sin()];
        for (g, e) in y.iter().zip(expect) {
            assert!((g - e).abs() < 1e-5, "{y:?} vs {expect:?}");
        }
    }
}
