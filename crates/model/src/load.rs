//! Build a [`Llama`] from a checkpoint: GGUF file or HF directory, every tensor accounted for.

use crate::config::LlamaConfig;
use crate::error::LoadError;
use crate::transformer::{cast_linear, Attention, DecoderLayer, Llama, Mlp};
use crate::weights::{HostTensor, WeightMap};
use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{backend::Backend, DType, FloatDType, Tensor, TensorData};
use std::path::Path;

/// Read a checkpoint (a `.gguf` file or a HF directory) into its config and weights.
pub fn read_checkpoint(path: &Path) -> Result<(LlamaConfig, WeightMap), LoadError> {
    match checkpoint_format(path)? {
        Format::HfDir => crate::hf::load_llama_hf_dir(path),
        Format::Gguf => crate::gguf::load_llama_gguf(path),
    }
}

/// Only the config of a checkpoint (the GGUF header or the HF `config.json`); no weight is read.
pub fn read_checkpoint_config(path: &Path) -> Result<LlamaConfig, LoadError> {
    match checkpoint_format(path)? {
        Format::HfDir => crate::hf::read_config(&path.join(crate::hf::CONFIG_FILE)),
        Format::Gguf => crate::gguf::llama_config(&crate::gguf::GgufFile::open(path)?),
    }
}

enum Format {
    HfDir,
    Gguf,
}

/// A directory is a HF checkpoint, any other existing path a GGUF file.
fn checkpoint_format(path: &Path) -> Result<Format, LoadError> {
    if path.is_dir() {
        Ok(Format::HfDir)
    } else if path.exists() {
        Ok(Format::Gguf)
    } else {
        Err(LoadError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")))
    }
}

/// Load a model from a `.gguf` file or HF directory onto `device`.
pub fn load_llama<B: Backend>(path: &Path, device: &B::Device) -> Result<Llama<B>, LoadError> {
    load_llama_as(path, device, FloatDType::F32)
}

/// [`load_llama`] with the frozen backbone's matrices (projections, embeddings, LM head) stored
/// as `dtype`; see [`llama_from_weights_as`].
pub fn load_llama_as<B: Backend>(path: &Path, device: &B::Device, dtype: FloatDType) -> Result<Llama<B>, LoadError> {
    check_weight_dtype::<B>(device, dtype)?;
    let (config, weights) = read_checkpoint(path)?;
    llama_from_weights_as(&config, weights, device, dtype)
}

/// Whether the backbone's matrices can be stored as `dtype` on `device`: f32 anywhere; f16 and
/// bf16 where the backend computes in them (CUDA; wgpu on adapters with f16 shaders, f16 only),
/// and not on the CPU backends this project's kernels run, which compute in f32.
pub fn check_weight_dtype<B: Backend>(device: &B::Device, dtype: FloatDType) -> Result<(), LoadError> {
    if dtype == FloatDType::F32 {
        return Ok(());
    }
    let name = dtype_name(dtype);
    if iapt_kernels::accelerated::<B>() {
        return Err(LoadError::Other(format!(
            "--dtype {name}: the CPU backends run the backbone in f32 (their kernels are f32); half precision is for the GPU backends (wgpu, cuda)"
        )));
    }
    if !B::supports_dtype(device, DType::from(dtype)) {
        return Err(LoadError::Other(format!(
            "--dtype {name}: this backend cannot compute in {name} on {device:?}; use f32{}",
            if dtype == FloatDType::BF16 { " or f16" } else { "" }
        )));
    }
    Ok(())
}

/// The name `--dtype` uses for `dtype`.
pub fn dtype_name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::F64 => "f64",
        FloatDType::F32 | FloatDType::Flex32 => "f32",
        FloatDType::F16 => "f16",
        FloatDType::BF16 => "bf16",
    }
}

/// Move host weights (HF names and layouts) into a model; fails on a missing, misshapen or
/// unused tensor, naming it. A misshapen tensor is reported against the config that set the
/// expected shape (`config.json` of a HF directory, a GGUF file's header).
pub fn llama_from_weights<B: Backend>(config: &LlamaConfig, weights: WeightMap, device: &B::Device) -> Result<Llama<B>, LoadError> {
    llama_from_weights_as(config, weights, device, FloatDType::F32)
}

/// [`llama_from_weights`] with the frozen matrices (projections, embeddings, LM head) stored as
/// `dtype` (f16/bf16 halve the backbone's memory). Norm weights stay f32, and so does everything
/// computed: each product casts its input to the weight's type and its output back, the
/// embedding rows come out as f32, so softmax, norms, the KV cache and the tuners run in f32.
pub fn llama_from_weights_as<B: Backend>(config: &LlamaConfig, weights: WeightMap, device: &B::Device, dtype: FloatDType) -> Result<Llama<B>, LoadError> {
    check_weight_dtype::<B>(device, dtype)?;
    let source = weights.source.clone();
    build_llama(config, weights, device, dtype).map_err(|e| match e {
        LoadError::ShapeMismatch { path, tensor, found, expected } => {
            let config_file = match source.is_dir() {
                true => source.join(crate::hf::CONFIG_FILE).display().to_string(),
                false => format!("the header of {}", source.display()),
            };
            let c = config;
            let config_gives = format!(
                "{config_file} gives hidden_size {}, intermediate_size {}, vocab_size {}, num_attention_heads {}, num_key_value_heads {}, head_dim {}",
                c.hidden_size, c.intermediate_size, c.vocab_size, c.num_heads, c.num_kv_heads, c.head_dim
            );
            LoadError::ConfigMismatch { path, tensor, found, expected, config_gives }
        }
        other => other,
    })
}

fn build_llama<B: Backend>(config: &LlamaConfig, mut weights: WeightMap, device: &B::Device, dtype: FloatDType) -> Result<Llama<B>, LoadError> {
    // Each matrix is cast as it is built, so the device never holds the whole backbone twice.
    let linear = |t: HostTensor, device: &B::Device| cast_linear(linear(t, device), dtype);
    config.validate().map_err(|reason| LoadError::field(&weights.source, "config", reason))?;
    let c = config;
    let (d, kv, qd, ff) = (c.hidden_size, c.kv_dim(), c.num_heads * c.head_dim, c.intermediate_size);
    let norm = |t: HostTensor| RmsNorm { gamma: param(t, device), epsilon: c.rms_norm_eps };

    let table = table(weights.take("model.embed_tokens.weight", &[c.vocab_size, d])?, c.tie_word_embeddings, device);
    let embed_tokens = Embedding { weight: table.map(|w| w.cast(dtype)) };
    let lm_head = match c.tie_word_embeddings {
        true => None,
        false => Some(linear(weights.take("lm_head.weight", &[c.vocab_size, d])?, device)),
    };
    let final_norm = norm(weights.take("model.norm.weight", &[d])?);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let mut take = |name: &str, shape: &[usize]| weights.take(&format!("model.layers.{i}.{name}.weight"), shape);
        layers.push(DecoderLayer {
            input_layernorm: norm(take("input_layernorm", &[d])?),
            self_attn: Attention {
                q_proj: linear(take("self_attn.q_proj", &[qd, d])?, device),
                k_proj: linear(take("self_attn.k_proj", &[kv, d])?, device),
                v_proj: linear(take("self_attn.v_proj", &[kv, d])?, device),
                o_proj: linear(take("self_attn.o_proj", &[d, qd])?, device),
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                rope_theta: c.rope_theta,
            },
            post_attention_layernorm: norm(take("post_attention_layernorm", &[d])?),
            mlp: Mlp {
                gate_proj: linear(take("mlp.gate_proj", &[ff, d])?, device),
                up_proj: linear(take("mlp.up_proj", &[ff, d])?, device),
                down_proj: linear(take("mlp.down_proj", &[d, ff])?, device),
            },
        });
    }
    weights.finish()?;
    Ok(Llama { embed_tokens, layers, norm: final_norm, lm_head, config: c.clone() })
}

fn param<B: Backend, const D: usize>(t: HostTensor, device: &B::Device) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(t.data, t.shape), device))
}

/// The embedding table `[vocab, d]`. When it is also the LM head (tied), on burn-ndarray (and its
/// autodiff) it is stored as a frozen weight (`frozen_weight`: rows a little apart, from a 2 MB
/// boundary in 2 MB pages, packed into panels for many-row heads), because the head streams all
/// of it at every decode step (a fifth of SmolLM2's bytes per token) as an `[out, in]` weight,
/// and that backend's lookups read such a table in place. Otherwise (an untied table is only
/// looked up; flex's lookups would copy a padded table whole) a plain tensor.
fn table<B: Backend>(t: HostTensor, tied: bool, device: &B::Device) -> Param<Tensor<B, 2>> {
    if tied && iapt_kernels::accelerated::<B>() && iapt_kernels::looks_up_frozen_rows_in_place::<B>() {
        return Param::from_tensor(iapt_kernels::frozen_weight(t.data, t.shape[0], t.shape[1], device));
    }
    param(t, device)
}

/// A bias-free linear layer from a HF `[out, in]` matrix; burn's `Linear` holds `[in, out]`.
/// On the backends `iapt-kernels` accelerates, the `[out, in]` memory is kept and viewed
/// transposed: each output's weights are then contiguous, which is what few-row products
/// (decoding) stream fastest, and rows are stored a little apart (`frozen_weight`), which is
/// what many-row products need. Elsewhere the weight is stored `[in, out]`.
fn linear<B: Backend>(t: HostTensor, device: &B::Device) -> Linear<B> {
    if iapt_kernels::accelerated::<B>() {
        let weight: Tensor<B, 2> = iapt_kernels::frozen_weight(t.data, t.shape[0], t.shape[1], device);
        return Linear { weight: Param::from_tensor(weight.transpose()), bias: None };
    }
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut transposed = vec![0.0f32; t.data.len()];
    for r in 0..rows {
        for (c, v) in t.data[r * cols..(r + 1) * cols].iter().enumerate() {
            transposed[c * rows + r] = *v;
        }
    }
    let weight = HostTensor { shape: vec![cols, rows], data: transposed };
    Linear { weight: param(weight, device), bias: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::Llama;

    #[test]
    fn half_precision_is_refused_on_the_cpu_backends_naming_the_choice() {
        type Cpu = burn::backend::NdArray<f32>;
        let config = LlamaConfig::tiny();
        let model = Llama::<Cpu>::random(&config, &Default::default());
        for dtype in [FloatDType::F16, FloatDType::BF16] {
            let Err(err) = llama_from_weights_as::<Cpu>(&config, model.to_weights(), &Default::default(), dtype) else { panic!("{dtype:?} was not refused") };
            let err = err.to_string();
            assert!(err.contains(&format!("--dtype {}", dtype_name(dtype))) && err.contains("GPU backends"), "{err}");
        }
        let model = llama_from_weights_as::<Cpu>(&config, model.to_weights(), &Default::default(), FloatDType::F32).unwrap();
        assert_eq!(model.embedding_table().dtype(), DType::F32);
    }
}
