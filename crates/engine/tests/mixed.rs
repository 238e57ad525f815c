//! The mixed-adapter delta of a batch, gathered (stacked low-rank factors) and grouped, equals
//! each row's own adapter's delta computed alone.

use burn::tensor::{Distribution, Tensor};
use iapt_engine::mixed::{LowRankStack, MixedHook};
use iapt_model::{LlamaConfig, ModelHook, Projection};
use iapt_tuners::{IaptConfig, LoraConfig, Tuner, TunerConfig};

type TB = burn::backend::NdArray;

fn perturbed(config: TunerConfig, seed: u64) -> Tuner<TB> {
    config.init::<TB>(&LlamaConfig::tiny(), &Default::default()).unwrap().jittered(seed, 1.0, |_| true)
}

#[test]
fn gathered_and_grouped_deltas_equal_each_rows_own() {
    let config = LlamaConfig::tiny();
    let device = Default::default();
    let all7 = perturbed(TunerConfig::Lora(LoraConfig::new().with_rank(2).with_alpha(5.0).with_targets(Projection::ALL.to_vec())), 1);
    let qv = perturbed(TunerConfig::Lora(LoraConfig::new().with_rank(3)), 2);
    let iapt = perturbed(TunerConfig::Iapt(IaptConfig::new(4)), 3);
    let rows: Vec<Option<&dyn ModelHook<TB>>> = vec![Some(&all7), Some(&iapt), Some(&qv), None, Some(&all7), Some(&qv)];
    let stack = LowRankStack::build(&rows, &config, &device);
    assert!(stack.is_some(), "two LoRA adapters in one batch should be gathered");
    for stack in [stack.as_ref(), None] {
        let mixed = MixedHook::new(&rows, stack, &device);
        for layer in 0..config.num_layers {
            for projection in Projection::ALL {
                let (d_in, d_out) = config.projection_shape(projection);
                let x = Tensor::<TB, 3>::random([rows.len(), 1, d_in], Distribution::Normal(0.0, 1.0), &device);
                let got = mixed.projection_delta(layer, projection, &x).map(|d| d.into_data().to_vec::<f32>().unwrap());
                let want: Vec<Vec<f32>> = rows
                    .iter()
                    .enumerate()
                    .map(|(r, hook)| {
                        let own = hook.and_then(|h| h.projection_delta(layer, projection, &x.clone().narrow(0, r, 1)));
                        own.map_or(vec![0.0; d_out], |d| d.into_data().to_vec::<f32>().unwrap())
                    })
                    .collect();
                let any = want.iter().flatten().any(|&v| v != 0.0);
                let Some(got) = got else {
                    assert!(!any, "layer {layer} {projection:?}: no delta, but some row's adapter has one");
                    continue;
                };
                let diff = got.iter().zip(want.concat()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(diff < 1e-5, "gathered={} layer {layer} {projection:?}: batch delta differs from the rows' own by {diff}", stack.is_some());
            }
        }
    }
    // One adapter on every row: nothing to gather (its own product is the cheapest).
    assert!(LowRankStack::build(&[Some(&all7 as &dyn ModelHook<TB>), Some(&all7)], &config, &device).is_none());
    assert!(LowRankStack::build(&[Some(&iapt as &dyn ModelHook<TB>), None], &config, &device).is_none());
}
