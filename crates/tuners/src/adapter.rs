//! Adapter files, one layout for every tuner (HF PEFT style): a directory holding
//! `adapter_config.json` (`"tuner"` tag, the tuner's config, the base model's identity and full
//! shape) and `adapter_model.safetensors` (f32 tensors named by module path, e.g.
//! `layers.3.pooler.queries`, `shared.down.weight`). Files are written atomically. PEFT's own
//! layout (LoRA, prompt tuning) is read too, recognised by its `peft_type` (see [`crate::peft`]).

use crate::tuner::{Tuner, TunerConfig, TunerConfigError, TunerModule};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, FloatDType, Tensor, TensorData};
use iapt_model::{HostTensor, LlamaConfig};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// Name of the config file inside an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the weights file inside an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Version of this layout, written to the config; a reader refuses versions it does not know.
pub const FORMAT_VERSION: u64 = 1;

/// Anything wrong with an adapter directory. Every variant names the file, and the tensor or
/// field where there is one.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: adapter is for tuner `{found}`, expected `{expected}`")]
    WrongTuner { path: PathBuf, found: String, expected: String },
    #[error("{path}: adapter was trained on a base model with {field} = {adapter}, but this model has {field} = {model}")]
    BaseMismatch { path: PathBuf, field: String, adapter: String, model: String },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor(s) not used by the adapter: {tensors}")]
    UnusedTensors { path: PathBuf, tensors: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, tensor: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{path}: tensor `{tensor}` has type {dtype}, expected F32")]
    Dtype { path: PathBuf, tensor: String, dtype: String },
}

/// Which backbone an adapter belongs to: a free-form name/path (informative only: paths differ
/// between machines) and the full shape, which must match exactly to load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseModel {
    pub name: String,
    pub config: LlamaConfig,
}

impl BaseModel {
    /// `Err((field, adapter value, model value))` for the first field where `model` differs.
    pub fn compare(&self, model: &LlamaConfig) -> Result<(), (String, String, String)> {
        let ours = serde_json::to_value(&self.config).expect("LlamaConfig serialises");
        let theirs = serde_json::to_value(model).expect("LlamaConfig serialises");
        let (ours, theirs) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
        for (field, value) in ours {
            let other = theirs.get(field).cloned().unwrap_or(serde_json::Value::Null);
            if *value != other {
                return Err((field.clone(), value.to_string(), other.to_string()));
            }
        }
        Ok(())
    }
}

/// Contents of `adapter_config.json`:
/// `{"format_version": 1, "tuner": "iapt", "config": {...}, "base_model": {"name": ..., "config": {...}}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub tuner: TunerConfig,
    pub base_model: BaseModel,
}

impl AdapterConfig {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format_version": FORMAT_VERSION,
            "tuner": self.tuner.name(),
            "config": self.tuner.to_json(),
            "base_model": self.base_model,
        })
    }

    /// Parse; `path` only names the file in errors.
    pub fn from_json(value: &serde_json::Value, path: &Path) -> Result<Self, AdapterError> {
        let bad = |reason: String| AdapterError::Config { path: path.to_path_buf(), reason };
        let version = value.get("format_version").and_then(|v| v.as_u64()).ok_or_else(|| bad("missing or invalid `format_version`".into()))?;
        if version != FORMAT_VERSION {
            return Err(bad(format!("format_version {version} is not supported (this build reads {FORMAT_VERSION})")));
        }
        let tag = value.get("tuner").and_then(|v| v.as_str()).ok_or_else(|| bad("missing or invalid `tuner` tag".into()))?;
        let config = value.get("config").ok_or_else(|| bad("missing `config`".into()))?;
        let tuner = TunerConfig::from_json(tag, config).map_err(|e| match e {
            TunerConfigError::UnknownKind(_) => bad(e.to_string()),
            TunerConfigError::Invalid(reason) => bad(format!("config: {reason}")),
        })?;
        let base = value.get("base_model").ok_or_else(|| bad("missing `base_model`".into()))?;
        let base_model: BaseModel = serde_json::from_value(base.clone()).map_err(|e| bad(format!("base_model: {e}")))?;
        Ok(Self { tuner, base_model })
    }

    /// Read `dir/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<Self, AdapterError> {
        let path = dir.join(CONFIG_FILE);
        Self::from_json(&read_config_json(&path)?, &path)
    }

    /// Write `dir/adapter_config.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), AdapterError> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON value serialises");
        write_atomically(&dir.join(CONFIG_FILE), text.as_bytes())
    }

    /// Refuse a model whose shape differs from the one the adapter was trained on.
    pub fn check_base(&self, model: &LlamaConfig, path: &Path) -> Result<(), AdapterError> {
        self.base_model.compare(model).map_err(|(field, adapter, model)| AdapterError::BaseMismatch { path: path.to_path_buf(), field, adapter, model })
    }
}

/// `adapter_config.json` as JSON, errors naming it.
fn read_config_json(path: &Path) -> Result<serde_json::Value, AdapterError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdapterError::Io { path: path.to_path_buf(), error: source })?;
    serde_json::from_str(&text).map_err(|e| AdapterError::Config { path: path.to_path_buf(), reason: format!("invalid JSON: {e}") })
}

/// Save `tuner` into `dir` (created if needed). `base_name` identifies the backbone (a name or
/// path); its shape comes from the tuner itself.
pub fn save_tuner<B: Backend>(dir: &Path, tuner: &Tuner<B>, base_name: &str) -> Result<(), AdapterError> {
    save_parts(dir, &tuner.tensors(), tuner.config(), tuner.base(), base_name)
}

/// Save one tuner's own module (e.g. an `Iapt`); the same files as [`save_tuner`] on the enum.
pub fn save_module<B: Backend, M: TunerModule<B>>(dir: &Path, module: &M, base_name: &str) -> Result<(), AdapterError> {
    save_parts(dir, &module_tensors(module), module.tuner_config(), module.base(), base_name)
}

fn save_parts(dir: &Path, tensors: &BTreeMap<String, HostTensor>, tuner: TunerConfig, base: &LlamaConfig, base_name: &str) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io { path: dir.to_path_buf(), error: source })?;
    write_safetensors(&dir.join(WEIGHTS_FILE), tensors)?;
    let config = AdapterConfig { tuner, base_model: BaseModel { name: base_name.to_string(), config: base.clone() } };
    config.write(dir)
}

/// Load the adapter in `dir`, whatever its tuner, for a backbone of shape `base`: refuses
/// another base shape, and missing, extra or misshapen tensors.
pub fn load_tuner<B: Backend>(dir: &Path, base: &LlamaConfig, device: &B::Device) -> Result<Tuner<B>, AdapterError> {
    load_checked(dir, base, device, None)
}

/// Load the adapter in `dir` as tuner `M` (e.g. `Iapt<B>`); an adapter of another tuner is
/// refused (`WrongTuner`) before its weights are read.
pub fn load_module<B: Backend, M: TunerModule<B>>(dir: &Path, base: &LlamaConfig, device: &B::Device) -> Result<M, AdapterError> {
    let tuner = load_checked(dir, base, device, Some(M::NAME))?;
    M::from_tuner(tuner).map_err(|found| AdapterError::WrongTuner { path: dir.join(CONFIG_FILE), found: found.into(), expected: M::NAME.into() })
}

/// Read the config, check the tuner tag (when `expected`) and the base shape, then the weights.
fn load_checked<B: Backend>(dir: &Path, base: &LlamaConfig, device: &B::Device, expected: Option<&str>) -> Result<Tuner<B>, AdapterError> {
    let config_path = dir.join(CONFIG_FILE);
    let value = read_config_json(&config_path)?;
    if crate::peft::is_peft_config(&value) {
        let tuner = crate::peft::load_peft(dir, &value, &config_path, base, device)?;
        if let Some(expected) = expected.filter(|&e| e != tuner.name()) {
            return Err(AdapterError::WrongTuner { path: config_path, found: tuner.name().into(), expected: expected.into() });
        }
        return Ok(tuner);
    }
    let config = AdapterConfig::from_json(&value, &config_path)?;
    if let Some(expected) = expected.filter(|&e| e != config.tuner.name()) {
        return Err(AdapterError::WrongTuner { path: config_path, found: config.tuner.name().into(), expected: expected.into() });
    }
    config.check_base(base, &config_path)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = read_safetensors(&weights_path)?;
    let tuner = config.tuner.init::<B>(base, device).map_err(|reason| AdapterError::Config { path: config_path, reason })?;
    tuner.load_tensors(tensors, &weights_path)
}

/// Every float parameter of `module` as an f32 host tensor, keyed by its module path.
pub fn module_tensors<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, HostTensor> {
    struct Collect {
        path: Vec<String>,
        out: BTreeMap<String, HostTensor>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            let data = tensor.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
            self.out.insert(self.path.join("."), HostTensor { shape, data });
        }
    }
    let mut collect = Collect { path: Vec::new(), out: BTreeMap::new() };
    module.visit(&mut collect);
    collect.out
}

/// Replace every float parameter of `module` with the tensor of the same path from `tensors`
/// (read from `path`, named in errors). All tensors must be used, with matching shapes.
pub fn load_module_tensors<B: Backend, M: Module<B>>(module: M, mut tensors: BTreeMap<String, HostTensor>, path: &Path) -> Result<M, AdapterError> {
    struct Assign<'a> {
        path: Vec<String>,
        tensors: &'a mut BTreeMap<String, HostTensor>,
        file: &'a Path,
        error: Option<AdapterError>,
    }
    impl<B: Backend> ModuleMapper<B> for Assign<'_> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.error.is_some() {
                return param;
            }
            let name = self.path.join(".");
            let current = param.val();
            let expected = current.dims().to_vec();
            let Some(host) = self.tensors.remove(&name) else {
                self.error = Some(AdapterError::MissingTensor { path: self.file.to_path_buf(), tensor: name });
                return param;
            };
            if host.shape != expected {
                self.error = Some(AdapterError::ShapeMismatch { path: self.file.to_path_buf(), tensor: name, found: host.shape, expected });
                return param;
            }
            let device = current.device();
            let tensor = Tensor::<B, D>::from_data(TensorData::new(host.data, host.shape.clone()), &device).cast(FloatDType::from(current.dtype()));
            // Every tuner parameter is trained, so a loaded one stays trainable. burn's
            // `Param::transform_for_load` on a backend without autodiff records it as not
            // requiring gradients, which `from_inner` onto an autodiff backend then keeps: a
            // tuner loaded on the inner backend would silently never train. A lazily
            // initialised parameter carries the flag across.
            Param::uninitialized(param.id, move |_, trainable| tensor.clone().set_require_grad(trainable), device, true, host.shape.into())
        }
    }
    let mut assign = Assign { path: Vec::new(), tensors: &mut tensors, file: path, error: None };
    let module = module.map(&mut assign);
    if let Some(error) = assign.error {
        return Err(error);
    }
    if !tensors.is_empty() {
        let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        let shown = if names.len() > 8 { format!("{} ... ({} in all)", names[..8].join(", "), names.len()) } else { names.join(", ") };
        return Err(AdapterError::UnusedTensors { path: path.to_path_buf(), tensors: shown });
    }
    Ok(module)
}

/// Write named f32 tensors as safetensors, atomically.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<(), AdapterError> {
    let bytes: Vec<(&String, Vec<u8>, &Vec<usize>)> =
        tensors.iter().map(|(name, t)| (name, t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), &t.shape)).collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.to_vec(), data)
                    .map_err(|e| AdapterError::Weights { path: path.to_path_buf(), reason: format!("{name}: {e}") })?,
            ))
        })
        .collect::<Result<Vec<_>, AdapterError>>()?;
    let metadata: Option<HashMap<String, String>> = Some([("format".to_string(), "pt".to_string())].into());
    let out = safetensors::tensor::serialize(views, &metadata).map_err(|e| AdapterError::Weights { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomically(path, &out)
}

/// Read every tensor of a safetensors file; only F32 is accepted (adapters are saved in f32).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, AdapterError> {
    let bytes = std::fs::read(path).map_err(|source| AdapterError::Io { path: path.to_path_buf(), error: source })?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| AdapterError::Weights { path: path.to_path_buf(), reason: iapt_model::hf::describe_safetensors_error(&e) })?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(AdapterError::Dtype { path: path.to_path_buf(), tensor: name, dtype: format!("{:?}", view.dtype()) });
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.insert(name, HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// [`iapt_assets::atomic::write_atomically`], its error naming `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AdapterError> {
    iapt_assets::atomic::write_atomically(path, bytes).map_err(|source| AdapterError::Io { path: path.to_path_buf(), error: source })
}

/// Trainable vs total parameters, printed as `trainable 82.3K / total 134.6M (0.061%)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    pub trainable: usize,
    /// Backbone plus tuner.
    pub total: usize,
}

impl ParamCount {
    /// Counts for a tuner with `tuner` parameters on a frozen backbone with `backbone`.
    pub fn new(tuner: usize, backbone: usize) -> Self {
        Self { trainable: tuner, total: tuner + backbone }
    }

    /// Trainable share of the total, in percent.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        }
    }
}

/// `1234` -> `1.23K`, `6738415616` -> `6.74B`.
pub fn human_count(n: usize) -> String {
    let n = n as f64;
    for (scale, suffix) in [(1e9, "B"), (1e6, "M"), (1e3, "K")] {
        if n >= scale {
            return format!("{:.2}{suffix}", n / scale);
        }
    }
    format!("{n}")
}

impl fmt::Display for ParamCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trainable {} / total {} ({:.3}%)", human_count(self.trainable), human_count(self.total), self.percent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iapt::IaptConfig;
    use crate::kind::TunerKind;
    type TB = burn::backend::NdArray;

    #[test]
    fn tensor_names_follow_module_paths() {
        let base = LlamaConfig::tiny();
        let shared = module_tensors(&IaptConfig::new(8).init::<TB>(&base, &Default::default()).unwrap());
        let names: Vec<&str> = shared.keys().map(String::as_str).collect();
        for want in [
            "shared.down.weight",
            "shared.down.bias",
            "shared.up.weight",
            "shared.up.bias",
            "layers.1.pooler.queries",
            "layers.0.activation.rational.numerator",
            "layers.1.activation.rational.denominator",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        assert_eq!(shared["shared.down.weight"].shape, vec![32, 8]);
        assert_eq!(shared["layers.0.pooler.queries"].shape, vec![8, 4]);
        assert_eq!(names.len(), 4 + 2 * 3);
        let unshared = module_tensors(&IaptConfig::new(8).with_share_projections(false).init::<TB>(&base, &Default::default()).unwrap());
        assert!(unshared.contains_key("layers.1.projections.up.weight") && !unshared.keys().any(|k| k.starts_with("shared.")));
    }

    #[test]
    fn config_json_layout_round_trips() {
        let config = AdapterConfig {
            tuner: TunerConfig::Iapt(IaptConfig::new(16).with_num_soft_tokens(2)),
            base_model: BaseModel { name: "HuggingFaceTB/SmolLM2-135M-Instruct".into(), config: LlamaConfig::smollm2_135m() },
        };
        let json = config.to_json();
        assert_eq!(json["tuner"], "iapt");
        assert_eq!(json["config"]["num_soft_tokens"], 2);
        assert_eq!(json["base_model"]["config"]["hidden_size"], 576);
        let path = Path::new("x/adapter_config.json");
        assert_eq!(AdapterConfig::from_json(&json, path).unwrap(), config);
        let mut other = json.clone();
        other["tuner"] = "lora2".into();
        assert!(AdapterConfig::from_json(&other, path).unwrap_err().to_string().contains("unknown tuner `lora2`"));
        let mut other = json;
        other["format_version"] = 9.into();
        assert!(AdapterConfig::from_json(&other, path).unwrap_err().to_string().contains("format_version 9"));
    }

    #[test]
    fn param_count_prints() {
        let c = ParamCount::new(82_348, 134_515_008);
        assert_eq!(c.to_string(), "trainable 82.35K / total 134.60M (0.061%)");
        assert_eq!(human_count(999), "999");
    }
}
