//! Adapter directories: save/load round trip, and clear errors for everything that can be wrong.

use burn::tensor::backend::Backend;
use iapt_model::{KvCache, Llama, LlamaConfig, TokenBatch};
use iapt_tuners::{load_module, save_module, AdapterError, Iapt, IaptConfig, PoolerKind, TunerKind};
use iapt_tuners::{module_tensors, read_safetensors, write_safetensors, AdapterConfig, CONFIG_FILE, WEIGHTS_FILE};
use std::path::PathBuf;

type TB = burn::backend::NdArray;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iapt-adapter-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn setup(config: &IaptConfig, tag: &str) -> (Llama<TB>, Iapt<TB>, PathBuf) {
    let device = Default::default();
    TB::seed(&device, 5);
    let base = LlamaConfig::tiny();
    let model = Llama::random(&base, &device);
    let iapt = config.init(&base, &device).unwrap();
    let dir = temp_dir(tag);
    save_module(&dir, &iapt, "tiny-random").unwrap();
    (model, iapt, dir)
}

fn logits(model: &Llama<TB>, iapt: &Iapt<TB>) -> Vec<f32> {
    let batch = TokenBatch::padded(&[vec![5, 17, 42, 3, 88], vec![9, 8]], 0, iapt_model::Padding::Left, &Default::default());
    model.logits(model.forward(batch, &mut KvCache::new(model.num_layers()), iapt)).into_data().to_vec().unwrap()
}

#[test]
fn save_load_round_trip_gives_identical_outputs() {
    for (i, config) in
        [IaptConfig::new(8), IaptConfig::new(6).with_share_projections(false).with_pooler(PoolerKind::Max).with_num_soft_tokens(2)].iter().enumerate()
    {
        let (model, iapt, dir) = setup(config, &format!("roundtrip{i}"));
        let loaded = load_module::<TB, Iapt<TB>>(&dir, model.config(), &Default::default()).unwrap();
        assert_eq!(&loaded.config, config);
        assert_eq!(module_tensors(&loaded), module_tensors(&iapt));
        assert_eq!(logits(&model, &loaded), logits(&model, &iapt), "outputs changed across save/load");
        // A freshly initialised adapter differs (so the comparison above can fail).
        let fresh = config.init::<TB>(model.config(), &Default::default()).unwrap();
        assert_ne!(logits(&model, &fresh), logits(&model, &iapt));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(json["tuner"], "iapt");
        assert_eq!(json["base_model"]["name"], "tiny-random");
        assert_eq!(json["base_model"]["config"]["hidden_size"], 32);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_different_base_shape_is_refused_naming_the_field() {
    let (_, _, dir) = setup(&IaptConfig::new(8), "mismatch");
    for (field, change) in [
        ("hidden_size", &(|c: &mut LlamaConfig| c.hidden_size = 64) as &dyn Fn(&mut LlamaConfig)),
        ("num_layers", &|c| c.num_layers = 3),
        ("rope_theta", &|c| c.rope_theta = 500000.0),
    ] {
        let mut other = LlamaConfig::tiny();
        change(&mut other);
        let err = load_module::<TB, Iapt<TB>>(&dir, &other, &Default::default()).unwrap_err();
        assert!(matches!(&err, AdapterError::BaseMismatch { field: f, .. } if f == field), "{err}");
        let message = err.to_string();
        assert!(message.contains(field) && message.contains(CONFIG_FILE), "{message}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_weight_files_are_errors_naming_file_and_tensor() {
    let (model, _, dir) = setup(&IaptConfig::new(8), "damaged");
    let weights = dir.join(WEIGHTS_FILE);
    let original = read_safetensors(&weights).unwrap();
    let load = || load_module::<TB, Iapt<TB>>(&dir, model.config(), &Default::default());

    // Truncated file.
    let bytes = std::fs::read(&weights).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 1, 10, 3] {
        std::fs::write(&weights, &bytes[..keep]).unwrap();
        let err = load().unwrap_err();
        assert!(matches!(err, AdapterError::Weights { .. }), "truncated to {keep}: {err}");
        // In words a user can act on, not the safetensors library's variant names.
        assert!(err.to_string().contains(WEIGHTS_FILE) && err.to_string().contains("truncated"), "{err}");
    }

    // Missing tensor.
    let mut t = original.clone();
    t.remove("layers.1.pooler.queries");
    write_safetensors(&weights, &t).unwrap();
    let err = load().unwrap_err();
    assert!(matches!(&err, AdapterError::MissingTensor { tensor, .. } if tensor == "layers.1.pooler.queries"), "{err}");

    // Extra tensor.
    let mut t = original.clone();
    t.insert("layers.2.pooler.queries".into(), original["layers.1.pooler.queries"].clone());
    write_safetensors(&weights, &t).unwrap();
    let err = load().unwrap_err();
    assert!(matches!(&err, AdapterError::UnusedTensors { .. }) && err.to_string().contains("layers.2.pooler.queries"), "{err}");

    // Misshapen tensor.
    let mut t = original.clone();
    let q = t.get_mut("shared.down.weight").unwrap();
    q.shape = vec![q.shape[1], q.shape[0]];
    write_safetensors(&weights, &t).unwrap();
    let err = load().unwrap_err();
    assert!(matches!(&err, AdapterError::ShapeMismatch { tensor, .. } if tensor == "shared.down.weight"), "{err}");

    // Missing file.
    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(load().unwrap_err(), AdapterError::Io { .. }));

    // Broken or foreign config.
    write_safetensors(&weights, &original).unwrap();
    assert!(load().is_ok());
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(load().unwrap_err(), AdapterError::Config { .. }));
    std::fs::write(&config_path, text.replace("\"bottleneck\": 8", "\"bottleneck\": 8, \"bottle_neck\": 2")).unwrap();
    assert!(load().unwrap_err().to_string().contains("bottle_neck"));
    std::fs::write(&config_path, text.replace("\"bottleneck\": 8", "\"bottleneck\": 9")).unwrap();
    let err = load().unwrap_err();
    assert!(matches!(&err, AdapterError::ShapeMismatch { .. }), "config/weights disagreement: {err}");
    std::fs::write(&config_path, &text).unwrap();
    assert!(AdapterConfig::read(&dir).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

/// An adapter loaded on a backend without autodiff and then moved onto the autodiff backend (a
/// warm start from a saved adapter) trains: every parameter gets a gradient. (burn's own load
/// path drops the trainable flag there, so such a tuner would silently keep its values.)
#[test]
fn an_adapter_loaded_without_autodiff_trains_after_from_inner() {
    use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    use iapt_tuners::{load_tuner, save_tuner, LoraConfig, Tuner, TunerConfig};
    type AD = burn::backend::Autodiff<TB>;
    struct Gradients<'a> {
        grads: &'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients,
        with: usize,
        without: usize,
    }
    impl ModuleVisitor<AD> for Gradients<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            match param.grad(self.grads) {
                Some(_) => self.with += 1,
                None => self.without += 1,
            }
        }
    }
    let device = Default::default();
    TB::seed(&device, 9);
    let base = LlamaConfig::tiny();
    let model = Llama::<TB>::random(&base, &device);
    for (i, config) in [TunerConfig::Iapt(IaptConfig::new(8)), TunerConfig::Lora(LoraConfig::new())].into_iter().enumerate() {
        let dir = temp_dir(&format!("trainable{i}"));
        save_tuner(&dir, &config.init::<TB>(&base, &device).unwrap().jittered(1, 0.2, |_| true), "tiny-random").unwrap();
        let tuner = Tuner::<AD>::from_inner(load_tuner::<TB>(&dir, &base, &device).unwrap());
        let backbone = Llama::<AD>::from_inner(model.clone());
        let batch = TokenBatch::padded(&[vec![5, 17, 42, 3, 88]], 0, iapt_model::Padding::Right, &device);
        let loss = backbone.logits(backbone.forward(batch, &mut KvCache::new(backbone.num_layers()), &tuner)).powf_scalar(2.0).mean();
        let grads = loss.backward();
        let mut count = Gradients { grads: &grads, with: 0, without: 0 };
        tuner.visit(&mut count);
        assert!(
            count.with > 0 && count.without == 0,
            "{}: {} of {} loaded parameters get no gradient",
            config.name(),
            count.without,
            count.with + count.without
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
