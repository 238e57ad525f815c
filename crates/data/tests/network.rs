//! Real data and the real tokenizer, fetched once into `$IAPT_HOME` (~130 MB; the BIG-bench
//! sdist, where it is available, another 358 MB). Ignored by plain `cargo test`;
//! `scripts/test.sh` runs them.

mod common;

use iapt_data::Encoding;
use iapt_data::{builtin_task, load_task, Answer, EncodeConfig, Encoder, Source, Split, BUILTIN_TASKS};
use std::time::Instant;

/// Built-in tasks, split by whether they read the BIG-bench sdist.
fn builtin_tasks(bigbench: bool) -> Vec<&'static str> {
    BUILTIN_TASKS.iter().copied().filter(|n| matches!(builtin_task(n).unwrap().source, Source::BigBench { .. }) == bigbench).collect()
}

/// Load a built-in task, check the number of examples read and that loading again gives the
/// identical split; returns the task.
fn load_with_recorded_count(name: &str, expected_read: usize) -> iapt_data::TaskData {
    let start = Instant::now();
    let data = load_task(&builtin_task(name).unwrap()).unwrap();
    let m = &data.manifest;
    eprintln!("{name}: loaded in {:?}\n{}", start.elapsed(), serde_json::to_string(&serde_json::json!({"counts": m.counts, "splits": m.splits})).unwrap());
    assert_eq!(m.counts.read, expected_read, "{name}");
    assert_eq!(m.splits.values().map(|r| r.size).sum::<usize>(), m.counts.kept);
    assert_eq!(load_task(&data.spec).unwrap().manifest, *m, "{name}: loading again gives the identical split");
    data
}

fn label_total(data: &iapt_data::TaskData, label: &str) -> usize {
    data.manifest.splits.values().map(|r| r.labels.get(label).copied().unwrap_or(0)).sum()
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn network_builtin_tasks_load_with_recorded_splits() {
    let names = builtin_tasks(false);
    assert_eq!(names, ["rotten_tomatoes", "boolq", "siqa", "piqa", "gsm8k"]);
    for name in names {
        let expected_read = match name {
            "rotten_tomatoes" => 13_891,
            "boolq" => 3_270,
            "siqa" => 1_954,
            "piqa" => 1_500,
            "gsm8k" => 1_319,
            _ => unreachable!(),
        };
        let data = load_with_recorded_count(name, expected_read);
        match name {
            "rotten_tomatoes" => {
                assert_eq!((label_total(&data, "fresh"), label_total(&data, "rotten")), (5_384, 5_384), "balanced");
                assert_eq!(label_total(&data, "plot"), 0, "plot summaries are not reviews");
            }
            "boolq" => assert_eq!((label_total(&data, "True"), label_total(&data, "False")), (2_033, 1_237)),
            "siqa" => assert!(["A", "B", "C"].iter().all(|l| label_total(&data, l) > 600)),
            "gsm8k" => {
                for e in data.train.iter().take(50) {
                    let Answer::Text(t) = &e.answer else { panic!() };
                    assert!(t.references[0].parse::<f64>().is_ok(), "{:?}", t.references);
                    assert!(e.answer.is_correct(&t.response), "the reference solution scores as correct");
                }
            }
            _ => {}
        }
    }
}

/// The BIG-bench tasks: they need the `bigbench==1.0.0` sdist, which `scripts/test.sh` checks for
/// (naming this test as not run when it is neither cached nor served).
#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn network_bigbench_tasks_load_with_recorded_splits() {
    let home = iapt_assets::data_dir();
    let start = Instant::now();
    let tasks = iapt_data::builtin_bigbench_tasks();
    let refs: Vec<&str> = tasks.iter().map(String::as_str).collect();
    iapt_data::bigbench::fetch_tasks(&home, &refs).unwrap();
    eprintln!("bigbench tasks cached in {:?}", start.elapsed());
    let gguf = iapt_assets::fetch_asset("smollm2").unwrap();
    let tok = iapt_model::load_tokenizer(&gguf).unwrap();
    for name in builtin_tasks(true) {
        let expected_read = match name {
            "multiemo" => 2531,
            "strategyqa" => 2290,
            "sports_understanding" => 1000,
            "presuppositions_as_nli" => 735,
            _ => unreachable!(),
        };
        let data = load_with_recorded_count(name, expected_read);
        if name == "multiemo" {
            assert_eq!((label_total(&data, "negative"), label_total(&data, "positive")), (460, 460), "balanced");
        }
        check_masks(&tok, name);
    }
}

/// Every example of a task encodes with the prompt and response exactly where the text puts
/// them, and tokenizing prompt and response apart equals tokenizing them together.
fn check_masks(tok: &iapt_model::Tokenizer, name: &str) {
    let spec = builtin_task(name).unwrap();
    let data = load_task(&spec).unwrap();
    let enc = Encoder::new(tok, &spec, EncodeConfig { max_len: 1024, ..EncodeConfig::default() });
    let (mut joint_differs, mut n, mut longest, mut prompt_total, mut dropped) = (0, 0, 0, 0, 0);
    for split in Split::ALL {
        for ex in data.split(split) {
            let Encoding::Kept(e) = enc.encode(ex).unwrap() else {
                dropped += 1;
                continue;
            };
            let prompt_text = enc.prompt_text(ex).unwrap();
            let response_text = enc.response_text(ex.answer.response());
            assert_eq!(tok.decode(e.prompt(), false).unwrap(), prompt_text);
            assert_eq!(tok.decode(e.response(), false).unwrap(), format!("{response_text}<|im_end|>"));
            assert_eq!(*e.response().last().unwrap(), tok.eos_id());
            // How often joint tokenization would have put the boundary elsewhere.
            let joint = tok.encode(&format!("{prompt_text}{response_text}<|im_end|>")).unwrap();
            joint_differs += usize::from(joint != e.ids);
            n += 1;
            longest = longest.max(e.len());
            prompt_total += e.prompt_len;
        }
    }
    eprintln!(
        "{name}: {n} examples, {dropped} longer than 1024 tokens, joint tokenization differs on {joint_differs}, mean prompt {:.1} tokens, longest {longest}",
        prompt_total as f64 / n as f64
    );
    assert_eq!(joint_differs, 0, "{name}");
    // Only BoolQ has passages long enough to pass 1024 tokens, and only a handful.
    assert!(dropped * 100 <= n, "{name}: {dropped} of {n} dropped");
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn network_real_tokenizer_masks_builtin_tasks() {
    let gguf = iapt_assets::fetch_asset("smollm2").unwrap();
    let tok = iapt_model::load_tokenizer(&gguf).unwrap();
    eprintln!("SmolLM2 chat template: {:?}", tok.chat_template());
    for name in builtin_tasks(false) {
        check_masks(&tok, name);
    }
    let report = iapt_data::show_task("rotten_tomatoes", &tok, Split::Train, 2, EncodeConfig::default()).unwrap();
    eprintln!("{report}");
    assert!(report.contains("[[") && report.contains("kept") && report.contains("fresh"));
    let report = iapt_data::show_task("siqa", &tok, Split::Dev, 1, EncodeConfig::default()).unwrap();
    eprintln!("{report}");
    // Cloze-style: the question alone; the class is a letter, the choices the example's own three options.
    assert!(report.contains("Question:") && !report.contains("Options:"), "{report}");
    let label = report.lines().find(|l| l.starts_with("label ")).expect("a label line");
    assert!(["label A ", "label B ", "label C "].iter().any(|p| label.starts_with(p)), "{label}");
    assert!(label.matches("\", \"").count() == 2 && !label.contains("[\"A\""), "{label}");
    let report = iapt_data::show_task("gsm8k", &tok, Split::Dev, 1, EncodeConfig::default()).unwrap();
    eprintln!("{report}");
}
