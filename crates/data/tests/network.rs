//! Real data and the real tokenizer, fetched once into `$IAPT_HOME` (~500 MB free: the BIG-bench
//! sdist is 358 MB). Ignored by plain `cargo test`; `scripts/test.sh` runs them.

mod common;

use iapt_data::Encoding;
use iapt_data::{builtin_task, load_task, Answer, EncodeConfig, Encoder, Split, BUILTIN_TASKS};
use std::time::Instant;

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn network_builtin_tasks_load_with_recorded_splits() {
    let home = iapt_assets::data_dir();
    let start = Instant::now();
    let tasks = iapt_data::builtin_bigbench_tasks();
    let refs: Vec<&str> = tasks.iter().map(String::as_str).collect();
    iapt_data::bigbench::fetch_tasks(&home, &refs).unwrap();
    eprintln!("bigbench tasks cached in {:?}", start.elapsed());
    for name in BUILTIN_TASKS {
        let start = Instant::now();
        let data = load_task(&builtin_task(name).unwrap()).unwrap();
        let m = &data.manifest;
        eprintln!("{name}: loaded in {:?}\n{}", start.elapsed(), serde_json::to_string(&serde_json::json!({"counts": m.counts, "splits": m.splits})).unwrap());
        let expected_read = match *name {
            "multiemo" => 2531,
            "strategyqa" => 2290,
            "sports_understanding" => 1000,
            "presuppositions_as_nli" => 735,
            "gsm8k" => 1319,
            _ => unreachable!(),
        };
        assert_eq!(m.counts.read, expected_read, "{name}");
        assert_eq!(m.splits.values().map(|r| r.size).sum::<usize>(), m.counts.kept);
        // Loading again gives the identical split.
        assert_eq!(load_task(&data.spec).unwrap().manifest, *m);
        if *name == "multiemo" {
            let per_label: Vec<usize> =
                ["negative", "positive"].iter().map(|l| m.splits.values().map(|r| r.labels.get(*l).copied().unwrap_or(0)).sum()).collect();
            assert_eq!(per_label[0], per_label[1], "balanced");
            assert_eq!(per_label[0], 460);
        }
        if *name == "gsm8k" {
            for e in data.train.iter().take(50) {
                let Answer::Text(t) = &e.answer else { panic!() };
                assert!(t.references[0].parse::<f64>().is_ok(), "{:?}", t.references);
                assert!(e.answer.is_correct(&t.response), "the reference solution scores as correct");
            }
        }
    }
}

#[test]
#[ignore = "needs the network (fetches the real model and data once); scripts/test.sh runs it"]
fn network_real_tokenizer_masks_bench() {
    let gguf = iapt_assets::fetch_asset("smollm2").unwrap();
    let tok = iapt_model::load_tokenizer(&gguf).unwrap();
    eprintln!("SmolLM2 chat template: {:?}", tok.chat_template());
    for name in BUILTIN_TASKS {
        let spec = builtin_task(name).unwrap();
        let data = load_task(&spec).unwrap();
        let enc = Encoder::new(&tok, &spec, EncodeConfig { max_len: 1024, ..EncodeConfig::default() });
        let (mut joint_differs, mut n, mut longest, mut prompt_total) = (0, 0, 0, 0);
        for split in Split::ALL {
            for ex in data.split(split) {
                let Encoding::Kept(e) = enc.encode(ex).unwrap() else { panic!("{name}: {} dropped at 1024", ex.id) };
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
            "{name}: {n} examples, joint tokenization differs on {joint_differs}, mean prompt {:.1} tokens, longest {longest}",
            prompt_total as f64 / n as f64
        );
        assert_eq!(joint_differs, 0, "{name}");
    }

    let report = iapt_data::show_task("multiemo", &tok, Split::Train, 2, EncodeConfig::default()).unwrap();
    eprintln!("{report}");
    assert!(report.contains("[[") && report.contains("kept"));
    let report = iapt_data::show_task("gsm8k", &tok, Split::Dev, 1, EncodeConfig::default()).unwrap();
    eprintln!("{report}");
}
