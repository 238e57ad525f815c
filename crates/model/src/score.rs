//! Next-token negative log-likelihoods: the quantity training minimises and `iapt score` reports.

use crate::batch::{Padding, TokenBatch};
use crate::cache::KvCache;
use crate::hook::ModelHook;
use crate::transformer::Llama;
use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, ElementConversion, Int, Tensor};

/// `-log p(ids[:, i+1] | ids[:, ..=i])` for every position, `[b, t-1]`, from logits `[b, t, v]`.
pub fn next_token_nll<B: Backend>(logits: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, t, _] = logits.dims();
    let log_probs = log_softmax(logits.narrow(1, 0, t - 1), 2);
    let targets = ids.narrow(1, 1, t - 1).reshape([b, t - 1, 1]);
    log_probs.gather(2, targets).reshape([b, t - 1]).neg()
}

/// `−log softmax(logits)[i, targets[i]]` `[n]` for each row of `logits` `[n, vocab]`: the loss
/// training minimises. On the CPU backends one fused pass over the logits, and a fused backward
/// ([`iapt_kernels::fused::token_nll`]); elsewhere burn's `log_softmax` and `gather`.
pub fn token_nll<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    if let Some(host) = host_targets(&targets) {
        if let Some(nll) = iapt_kernels::fused::token_nll(&logits, &host) {
            return nll;
        }
    }
    log_softmax(logits, 1).gather(1, targets.reshape([n, 1])).reshape([n]).neg()
}

/// [`token_nll`] and each row's most likely token, `[n]` (the first maximum), taking the logits
/// by value: on the CPU backends both come from one pass over each row, and under autodiff that
/// pass also leaves the loss's gradient in the logits' own buffer
/// ([`iapt_kernels::fused::token_nll_and_argmax`]).
pub fn token_nll_and_argmax<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
    let [n, _] = logits.dims();
    let device = logits.device();
    let logits = match host_targets(&targets) {
        Some(host) => match iapt_kernels::fused::token_nll_and_argmax(logits, &host) {
            Ok((nll, argmax)) => {
                let argmax: Vec<i64> = argmax.into_iter().map(|i| i as i64).collect();
                return (nll, Tensor::from_data(burn::tensor::TensorData::new(argmax, [n]), &device));
            }
            Err(logits) => logits,
        },
        None => logits,
    };
    let argmax = logits.clone().detach().argmax(1).reshape([n]);
    (log_softmax(logits, 1).gather(1, targets.reshape([n, 1])).reshape([n]).neg(), argmax)
}

/// The targets on the host, for the fused kernels (`None` where those do not run, or for a
/// negative id).
fn host_targets<B: Backend>(targets: &Tensor<B, 1, Int>) -> Option<Vec<usize>> {
    if !iapt_kernels::accelerated::<B>() {
        return None;
    }
    targets.to_data().convert::<i64>().iter::<i64>().map(|t| usize::try_from(t).ok()).collect()
}

/// Mean next-token NLL (nats) of `ids` under the model, and how many tokens were predicted.
pub fn mean_nll<B: Backend>(model: &Llama<B>, ids: &[u32], hook: &dyn ModelHook<B>) -> (f64, usize) {
    assert!(ids.len() >= 2, "scoring needs at least two tokens");
    let device = model.device();
    let batch = TokenBatch::<B>::padded(&[ids.to_vec()], 0, Padding::Right, &device);
    let ids_tensor = batch.ids.clone();
    let hidden = model.forward(batch, &mut KvCache::new(model.num_layers()), hook);
    let nll = next_token_nll(model.logits(hidden), ids_tensor);
    let n = ids.len() - 1;
    (nll.mean().into_scalar().elem::<f64>(), n)
}
