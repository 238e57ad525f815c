//! The model's f64 reference forward (`crates/model/tests/reference.rs`, included as is), plus an
//! f64 IAPT generator written from the spec that feeds it soft tokens layer by layer.
#![allow(dead_code)]

#[path = "../../model/tests/reference.rs"]
mod model_reference;

pub use model_reference::*;

use burn::tensor::backend::Backend;
use iapt_model::Llama;
use iapt_tuners::gelu_fit::{eval_rational, gelu};
use iapt_tuners::{ActivationKind, GeneratorInput, Iapt, PoolerKind, PrefixPositions, SoftTokenSpace};

/// One layer's IAPT generator in f64, written from the spec (§2) with the tuner's parameters:
/// the soft tokens `[l_sp][d]` from the real tokens' `states` (hidden or normed, per config),
/// reading only rows where `instruction` is true.
pub fn iapt_soft_tokens<B: Backend>(iapt: &Iapt<B>, layer: usize, states: &[Vec<f64>], instruction: &[bool]) -> Vec<Vec<f64>> {
    let config = &iapt.config;
    let generator = &iapt.layers[layer];
    let projections = generator.projections.as_ref().or(iapt.shared.as_ref()).unwrap();
    let down = Mat::from_tensor(projections.down.weight.val());
    let down_b = vec1(projections.down.bias.as_ref().unwrap().val());
    let up = Mat::from_tensor(projections.up.weight.val());
    let up_b = vec1(projections.up.bias.as_ref().unwrap().val());
    let (m, l) = (down.cols, config.num_soft_tokens);
    // X = H W_down + b_down, instruction rows only.
    let xs: Vec<Vec<f64>> =
        states.iter().zip(instruction).filter(|(_, &keep)| keep).map(|(h, _)| down.apply(h).iter().zip(&down_b).map(|(a, b)| a + b).collect()).collect();
    let pooled: Vec<Vec<f64>> = if xs.is_empty() {
        vec![vec![0.0; m]; l]
    } else {
        match config.pooler {
            PoolerKind::SelfAttn => {
                let wq = Mat::from_tensor(generator.pooler.queries.as_ref().unwrap().val());
                let scale = if config.pooler_scale { 1.0 / (m as f64).sqrt() } else { 1.0 };
                (0..l)
                    .map(|t| {
                        let scores: Vec<f64> = xs.iter().map(|x| scale * (0..m).map(|k| x[k] * wq.data[k * l + t]).sum::<f64>()).collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                        (0..m).map(|k| xs.iter().zip(&scores).map(|(x, s)| (s - max).exp() / z * x[k]).sum()).collect()
                    })
                    .collect()
            }
            PoolerKind::Mean => vec![(0..m).map(|k| xs.iter().map(|x| x[k]).sum::<f64>() / xs.len() as f64).collect(); l],
            PoolerKind::Max => vec![(0..m).map(|k| xs.iter().map(|x| x[k]).fold(f64::MIN, f64::max)).collect(); l],
            PoolerKind::Last => vec![xs.last().unwrap().clone(); l],
        }
    };
    let activation = &generator.activation;
    let g = |v: f64| match config.activation {
        ActivationKind::Rational => {
            let r = activation.rational.as_ref().unwrap();
            eval_rational(&vec1(r.numerator.val()), &vec1(r.denominator.val()), v)
        }
        ActivationKind::Gelu => gelu(v),
        ActivationKind::Relu => v.max(0.0),
        ActivationKind::Identity => v,
    };
    pooled
        .iter()
        .map(|p| {
            let act: Vec<f64> = p.iter().map(|&v| g(v)).collect();
            up.apply(&act).iter().zip(&up_b).map(|(a, b)| a + b).collect()
        })
        .collect()
}

/// Logits of one unpadded sequence with IAPT active, entirely in f64: per layer, the generator
/// reads the states entering the layer (the first `n_instruction` tokens) and its soft tokens
/// run through the full frozen layer in front of the sequence.
pub fn reference_iapt_logits<B: Backend>(model: &Llama<B>, iapt: &Iapt<B>, ids: &[u32], n_instruction: usize) -> Vec<Vec<f64>> {
    let instruction: Vec<bool> = (0..ids.len()).map(|i| i < n_instruction).collect();
    let shifted = iapt.config.prefix_positions == PrefixPositions::Shifted;
    let offset = if shifted { iapt.config.num_soft_tokens } else { 0 };
    let norm_soft = iapt.config.soft_token_space == SoftTokenSpace::Hidden;
    reference_logits_generated(model, ids, offset, shifted, norm_soft, &|layer, hidden, normed| {
        let states = match iapt.config.generator_input {
            GeneratorInput::Normed => normed,
            GeneratorInput::Raw => hidden,
        };
        Some(iapt_soft_tokens(iapt, layer, states, &instruction))
    })
}
