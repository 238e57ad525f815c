//! End-to-end checks of the `iapt` binary on the real SmolLM2-135M-Instruct checkpoint.
//! The checkpoint is fetched once into `$IAPT_HOME` (see `iapt fetch model smollm2`). These tests
//! need the network the first time, so plain `cargo test` lists them as ignored; the README's test
//! command (`scripts/test.sh`) runs them.

use serde_json::Value;
use std::process::Command;

/// Run `iapt ARGS --json` and parse its one JSON object.
fn iapt_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(args).arg("--json").output().expect("run iapt");
    assert!(out.status.success(), "iapt {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("iapt {args:?}: not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn ids(v: &Value) -> Vec<u64> {
    v["ids"].as_array().expect("ids array").iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn chat_answers_the_capital_of_germany() {
    let v = iapt_json(&["generate", "--model", "smollm2", "--chat", "--prompt", "What is the capital of Germany?", "--max-new-tokens", "16", "--greedy"]);
    assert_eq!(v["text"].as_str().unwrap().trim(), "The capital of Germany is Berlin.");
    assert_eq!(*ids(&v).last().unwrap(), 2, "generation should stop at <|im_end|>");
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn nll_separates_a_sentence_from_its_shuffle() {
    let plain = "The capital of France is Paris, and the river that flows through the city is called the Seine.";
    let shuffled = "river Seine. is the through and The called city France flows the capital of is that Paris, the";
    let a = iapt_json(&["score", "--model", "smollm2", "--text", plain]);
    let b = iapt_json(&["score", "--model", "smollm2", "--text", shuffled]);
    let (na, nb) = (a["mean_nll"].as_f64().unwrap(), b["mean_nll"].as_f64().unwrap());
    eprintln!("plain {na:.3} ({} tokens), shuffled {nb:.3}", a["n_tokens"]);
    assert!((1.0..3.5).contains(&na), "plain sentence NLL {na}");
    assert!(nb > 6.0, "shuffled NLL {nb}");
    assert_eq!(a["n_tokens"].as_u64().unwrap() as usize + 1, ids(&iapt_json(&["tokenize", "--model", "smollm2", "--text", plain])).len());
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn tokenizer_parses_special_tokens_and_splits_digits() {
    let v = iapt_json(&["tokenize", "--model", "smollm2", "--text", "<|im_start|>user\n12345<|im_end|>"]);
    let ids = ids(&v);
    assert_eq!(ids[0], 1, "<|im_start|> is id 1");
    assert_eq!(*ids.last().unwrap(), 2, "<|im_end|> is id 2");
    // "user", "\n", then five single digits
    assert_eq!(ids.len(), 1 + 2 + 5 + 1, "{ids:?}");
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn batched_generation_matches_one_prompt_at_a_time() {
    let prompts = ["The opposite of hot is", "One, two, three, four,", "Water is made of hydrogen and"];
    let mut args = vec!["generate", "--model", "smollm2", "--max-new-tokens", "6", "--greedy"];
    for p in &prompts {
        args.extend(["--prompt", p]);
    }
    let batched = iapt_json(&args);
    for (i, p) in prompts.iter().enumerate() {
        let alone = iapt_json(&["generate", "--model", "smollm2", "--max-new-tokens", "6", "--greedy", "--prompt", p]);
        assert_eq!(ids(&batched["outputs"][i]), ids(&alone), "prompt {p:?}");
    }
}

/// `iapt bench data`: every example encoded and batched once, and training's length grouping
/// pads less than a plain shuffle.
#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn data_benchmark_batches_every_example_with_less_padding() {
    let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["bench", "data", "rotten_tomatoes", "--n", "200"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["examples"].as_u64(), v["batch"]["rows"].as_u64(), v["batch"]["batches"].as_u64()), (Some(200), Some(200), Some(13)));
    let (grouped, plain) = (v["batch"]["padding_fraction_bucketed"].as_f64().unwrap(), v["batch"]["padding_fraction_unbucketed"].as_f64().unwrap());
    assert!(grouped < plain, "grouped {grouped} vs plain {plain}");
    assert!(v["encode"]["tokens_per_s"].as_f64().unwrap() > 0.0 && v["encode"]["examples_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_missing_model_path_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["score", "--model", "/no/such/model.gguf", "--text", "hi there"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/model.gguf"), "{err}");
}

/// `iapt train` end to end on real data, kept tiny: zero-shot eval, one epoch on 8 examples,
/// adapter saved, tuned eval; `iapt eval --adapter RUN` reproduces the tuned accuracy; running
/// the same command again resumes from the checkpoint instead of training again.
#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn train_then_eval_then_resume_on_real_data() {
    let run = std::env::temp_dir().join(format!("iapt-e2e-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let run_s = run.to_str().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/quickstart.toml");
    let sets =
        ["data.max_train_examples=8", "data.max_dev_examples=4", "train.epochs=1", "train.batch_size=4", "eval.max_examples=6", "train.dashboard=\"off\""];
    let train = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iapt"));
        cmd.args(["train", "--config", config, "--run-dir", run_s]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run iapt train");
        assert!(out.status.success(), "iapt train failed: {}", String::from_utf8_lossy(&out.stderr));
        let results: Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
        (results, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (results, _) = train();
    for key in ["zero_shot_accuracy", "tuned_accuracy", "majority_accuracy", "train_tokens_per_second"] {
        assert!(results[key].as_f64().is_some(), "results.json lacks {key}: {results}");
    }
    assert_eq!(results["examples"], 6);
    // The quickstart's generator: shared projections 2*576*64 + 64 + 576, plus per layer (30)
    // 4 pooler queries of width 64 and 10 rational coefficients.
    assert_eq!(results["trainable_params"], 2 * 576 * 64 + 64 + 576 + 30 * (64 * 4 + 10));
    for file in ["config.toml", "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "report.json"] {
        assert!(run.join(file).is_file(), "{file} missing from the run directory");
    }

    let eval = iapt_json(&["eval", "--adapter", run_s, "--split", "test", "--set", "eval.max_examples=6"]);
    assert_eq!(eval["accuracy"], results["tuned_accuracy"], "eval --adapter disagrees with the run's own evaluation");
    assert_eq!(eval["method"], "rank");

    let (again, log) = train();
    assert!(log.contains("resumed from the epoch 1 checkpoint"), "second run did not say it resumed: {log}");
    assert_eq!(again["tuned_accuracy"], results["tuned_accuracy"]);
    let report: Value = serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["resumed_from_epoch"], 1, "the second run should continue from epoch 1's checkpoint");
    assert!(again["train_tokens_per_second"].is_null(), "a session that trained nothing reports no rate: {again}");

    // Another task (or tuner) in the same directory is refused, and the finished run's files stay.
    let before = (std::fs::read(run.join("config.toml")).unwrap(), std::fs::read(run.join("results.json")).unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iapt"));
    cmd.args(["train", "--config", config, "--run-dir", run_s]);
    for s in sets.iter().chain(&["data.task=boolq", "tuner.bottleneck=8"]) {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("data.task") && stderr.contains("tuner.bottleneck"), "{stderr}");
    assert_eq!((std::fs::read(run.join("config.toml")).unwrap(), std::fs::read(run.join("results.json")).unwrap()), before);
    let _ = std::fs::remove_dir_all(&run);
}

/// Requests past the model's context, and sampling settings that mean nothing, are refused.
#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn generation_beyond_the_context_or_with_a_negative_temperature_is_refused() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["generate", "--model", "smollm2", "--prompt", "Hello"]).args(extra).output().unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--max-new-tokens", "1000000"]);
    assert!(err.contains("max_position_embeddings") && err.contains("8192"), "{err}");
    // Scoring a text longer than the context is refused up front, with both numbers.
    let long = "word ".repeat(9000);
    let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["score", "--model", "smollm2", "--text", &long]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--text is 90") && err.contains("context of 8192 tokens"), "{err}");
    assert!(run(&["--temperature=-1"]).contains("--temperature"));
    assert!(run(&["--top-p", "0"]).contains("--top-p"));
}

/// Ctrl-C during `iapt train` stops after the current batch: the adapter of the last finished
/// epoch is saved and evaluated, the results say why training stopped, and the exit code is 0.
#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn ctrl_c_during_training_stops_cleanly_and_keeps_the_finished_epochs() {
    let run = std::env::temp_dir().join(format!("iapt-e2e-ctrl-c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/quickstart.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iapt"));
    cmd.args(["train", "--config", config, "--run-dir", run.to_str().unwrap()]);
    for s in ["data.max_train_examples=8", "data.max_dev_examples=4", "train.epochs=200", "train.batch_size=4", "eval.max_examples=4", "eval.zero_shot=false"] {
        cmd.args(["--set", s]);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("start iapt train");
    // Wait for the first epoch's checkpoint (bounded), then press Ctrl-C.
    let first = run.join("checkpoint/model-1.mpk");
    let start = std::time::Instant::now();
    while !first.exists() {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!("iapt train ended before its first checkpoint: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        assert!(start.elapsed().as_secs() < 600, "no checkpoint after 10 minutes");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "iapt train after Ctrl-C: {:?}\n{stderr}", out.status);
    assert!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");
    let results: Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["stop"]["kind"], "interrupted", "{results}");
    let epochs = results["epochs"].as_u64().unwrap();
    assert!((1..200).contains(&epochs), "{results}");
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&run);
}

/// `iapt compare` end to end: two methods trained, evaluated and benchmarked as child runs, one
/// table with a row per method; run again, it reuses the finished runs and writes the same table.
#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn compare_trains_two_methods_and_tabulates_them() {
    let root = std::env::temp_dir().join(format!("iapt-e2e-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/quickstart.toml");
    let file = root.join("compare.toml");
    let text = format!(
        "[compare]\nbase_config = {quickstart:?}\nout_dir = \"out\"\nseeds = [0]\ndecode_tokens = 4\ndecode_repeats = 1\n\n\
         [base.data]\ntask = \"rotten_tomatoes\"\nmax_train_examples = 8\nmax_dev_examples = 4\n\
         [base.train]\nepochs = 1\nbatch_size = 4\ndashboard = \"off\"\n[base.eval]\nmax_examples = 4\nzero_shot = false\n\n\
         [[methods]]\nname = \"iapt\"\ntuner = {{ kind = \"iapt\", bottleneck = 16, pooler = \"mean\" }}\n\n\
         [[methods]]\nname = \"lora\"\ntuner = {{ kind = \"lora\", rank = 2 }}\n"
    );
    std::fs::write(&file, text).unwrap();
    let out_dir = root.join("out");
    let compare = || {
        let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["compare", "--config"]).arg(&file).arg("--out-dir").arg(&out_dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "iapt compare failed: {stderr}");
        (String::from_utf8_lossy(&out.stdout).to_string(), stderr)
    };
    let (markdown, _) = compare();
    let table: Value = serde_json::from_slice(&std::fs::read(out_dir.join("comparison.json")).unwrap()).unwrap();
    assert_eq!(table["task"], "rotten_tomatoes");
    let methods = table["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2, "{table}");
    for (row, (name, tuner)) in methods.iter().zip([("iapt", "iapt"), ("lora", "lora")]) {
        assert_eq!(row["method"], name, "{row}");
        let seed = &row["runs"][0];
        assert_eq!(seed["tuner"], tuner, "{row}");
        let accuracy = seed["test_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy) && (accuracy * 4.0).fract() == 0.0, "accuracy on 4 examples: {row}");
        assert!(seed["trainable_params"].as_u64().unwrap() > 0);
        assert!(seed["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
        let results: Value = serde_json::from_slice(&std::fs::read(out_dir.join(format!("{name}/seed-0/results.json"))).unwrap()).unwrap();
        assert_eq!(results["tuned_accuracy"].as_f64().unwrap(), accuracy, "the table reports the run's own result");
        assert!(markdown.contains(name), "{markdown}");
    }
    // LoRA rank 2 on q (576 -> 576) and v (576 -> 192): A is [2, in], B is [out, 2], in 30 layers.
    assert_eq!(methods[1]["trainable_params"], 30 * (2 * (576 + 576) + 2 * (576 + 192)));

    let (again, log) = compare();
    assert_eq!(log.matches("finished earlier").count(), 2, "{log}");
    assert_eq!(again, markdown, "a rerun tabulates the same runs");

    // A finished run whose recorded examples are not what its settings make now (a task
    // redefined under the same name) is refused, not tabulated.
    let inputs = out_dir.join("lora/seed-0/inputs.json");
    let mut recorded: Value = serde_json::from_slice(&std::fs::read(&inputs).unwrap()).unwrap();
    recorded["splits"]["test"]["sha256"] = Value::from("0".repeat(64));
    std::fs::write(&inputs, recorded.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["compare", "--config"]).arg(&file).arg("--out-dir").arg(&out_dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a run made from other examples was reused: {stderr}");
    assert!(stderr.contains("lora/seed-0") && stderr.contains("the test split") && stderr.contains("other inputs"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}
