//! Every source format, read from small files, prepared and encoded: masks line up with the
//! rendered text.

mod common;

use common::{temporaries, toy_tokenizer, TempDir};
use iapt_data::Encoding;
use iapt_data::{load_task_in, Answer, EncodeConfig, Encoder, MatchRule, Source, TaskData, TaskKind, TaskSpec};
use iapt_model::Tokenizer;
use std::io::Write;
use std::path::Path;

/// For every example of every split: ids = tokens(prompt text) ++ tokens(response text) ++ EOS,
/// the instruction mask covers exactly the prompt and the loss mask exactly the response.
fn assert_masks_line_up(data: &TaskData, tok: &Tokenizer, config: EncodeConfig) -> usize {
    let enc = Encoder::new(tok, &data.spec, config);
    let mut n = 0;
    for ex in data.train.iter().chain(&data.dev).chain(&data.test) {
        let Encoding::Kept(e) = enc.encode(ex).unwrap() else { panic!("dropped {}", ex.id) };
        let prompt_text = enc.prompt_text(ex).unwrap();
        let response_text = enc.response_text(ex.answer.response());
        let mut expected = tok.encode(&prompt_text).unwrap();
        if enc.config().add_bos && !data.spec.use_chat_template {
            expected.insert(0, tok.bos_id().unwrap());
        }
        let prompt_len = expected.len();
        expected.extend(tok.encode(&response_text).unwrap());
        expected.push(tok.eos_id());
        assert_eq!(e.ids, expected, "{}", ex.id);
        assert_eq!(e.prompt_len, prompt_len);
        let inst = e.instruction_mask();
        let loss = e.loss_mask();
        assert_eq!(inst.len(), e.len());
        assert!(inst.iter().zip(&loss).all(|(a, b)| a != b), "masks are complements");
        let masked = |m: &[bool]| -> Vec<u32> { e.ids.iter().zip(m).filter(|(_, &k)| k).map(|(&t, _)| t).collect() };
        // Decoded masked tokens give back the rendered text exactly.
        let bos = if enc.config().add_bos && !data.spec.use_chat_template { "<|im_start|>" } else { "" };
        assert_eq!(tok.decode(&masked(&inst), false).unwrap(), format!("{bos}{prompt_text}"));
        assert_eq!(tok.decode(&masked(&loss), false).unwrap(), format!("{response_text}<|im_end|>"));
        assert!(*loss.last().unwrap(), "EOS is a loss token");
        n += 1;
    }
    n
}

#[test]
fn instruction_jsonl_prepares_and_encodes() {
    let t = TempDir::new("jsonl");
    let path = t.write(
        "train.jsonl",
        "{\"instruction\": \"Translate to French.\", \"input\": \"the cat\", \"output\": \"le chat\"}\n\
         \n\
         {\"instruction\": \"Say hello.\", \"output\": \"Hello!\"}\n\
         {\"instruction\": \"Add.\", \"input\": \"2 + 2\", \"output\": \" 4 \"}\n",
    );
    let spec = TaskSpec::new("toy", Source::InstructionJsonl(path.clone()));
    let data = load_task_in(t.path(), &spec).unwrap();
    assert_eq!(data.manifest.counts.read, 3);
    let all: Vec<_> = data.train.iter().chain(&data.dev).chain(&data.test).collect();
    let hello = all.iter().find(|e| e.messages[0].content == "Say hello.").expect("empty input: instruction only");
    assert_eq!(hello.messages.len(), 1);
    assert_eq!(hello.messages[0].role, "user");
    assert!(hello.origin.ends_with("train.jsonl: line 3"), "{}", hello.origin);
    let add = all.iter().find(|e| e.messages[0].content == "Add.\n\n2 + 2").unwrap();
    assert_eq!(add.answer.response(), "4", "responses are trimmed");
    match &add.answer {
        Answer::Text(t) => assert_eq!((t.references.clone(), t.rule), (vec!["4".to_string()], MatchRule::Exact)),
        other => panic!("{other:?}"),
    }
    let tok = toy_tokenizer();
    assert_eq!(assert_masks_line_up(&data, &tok, EncodeConfig::default()), 3);

    // The chat rendering is exactly the ChatML text with the generation prompt.
    let enc = Encoder::new(&tok, &spec, EncodeConfig::default());
    assert_eq!(enc.prompt_text(hello).unwrap(), "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn alpaca_json_with_system_prompt() {
    let t = TempDir::new("alpaca");
    let path = t.write(
        "alpaca.json",
        r#"[
  {"instruction": "Name a colour.", "input": "", "output": "Blue"},
  {"instruction": "Reverse the word.", "input": "abc", "output": "cba"}
]"#,
    );
    let spec = TaskSpec { system: Some("Be brief.".into()), ..TaskSpec::new("alp", Source::Alpaca(path)) };
    let data = load_task_in(t.path(), &spec).unwrap();
    let tok = toy_tokenizer();
    assert_eq!(assert_masks_line_up(&data, &tok, EncodeConfig::default()), 2);
    let ex = data.train.iter().chain(&data.dev).chain(&data.test).find(|e| e.answer.response() == "cba").unwrap();
    assert!(ex.origin.ends_with("alpaca.json: item[1] (line 3)"), "{}", ex.origin);
    let enc = Encoder::new(&tok, &spec, EncodeConfig::default());
    assert_eq!(
        enc.prompt_text(ex).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nReverse the word.\n\nabc<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn chat_jsonl_uses_last_assistant_message() {
    let t = TempDir::new("chat");
    let path = t.write(
        "chat.jsonl",
        r#"{"messages": [{"role": "system", "content": "You count."}, {"role": "user", "content": "1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "and then?"}, {"role": "assistant", "content": "3"}]}
{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
"#,
    );
    let spec =
        TaskSpec { template: Some("{input} (answer briefly)".into()), system: Some("Default system.".into()), ..TaskSpec::new("chat", Source::Chat(path)) };
    let data = load_task_in(t.path(), &spec).unwrap();
    let all: Vec<_> = data.train.iter().chain(&data.dev).chain(&data.test).collect();
    let counted = all.iter().find(|e| e.answer.response() == "3").unwrap();
    let roles: Vec<&str> = counted.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "the file's own system message wins");
    assert_eq!(counted.messages[1].content, "1?", "only the last user message gets the template");
    assert_eq!(counted.messages[3].content, "and then? (answer briefly)");
    let hi = all.iter().find(|e| e.answer.response() == "Hello").unwrap();
    assert_eq!(hi.messages[0].content, "Default system.");
    let tok = toy_tokenizer();
    assert_eq!(assert_masks_line_up(&data, &tok, EncodeConfig::default()), 2);

    // Chat sources cannot be rendered without a chat template.
    let plain = TaskSpec { use_chat_template: false, ..spec };
    let msg = load_task_in(t.path(), &plain).unwrap_err().to_string();
    assert!(msg.contains("chat") && msg.contains("use_chat_template"), "{msg}");
}

#[test]
fn classification_jsonl_with_verbalizer_and_plain_mode() {
    let t = TempDir::new("cls");
    let mut text = String::new();
    for i in 0..20 {
        let label = if i % 3 == 0 { "\"neg\"".to_string() } else { "1".to_string() }; // names or indices
        text.push_str(&format!("{{\"text\": \"review number {i}\", \"label\": {label}}}\n"));
    }
    let path = t.write("cls.jsonl", &text);
    let spec = TaskSpec {
        template: Some("Review: {input}".into()),
        use_chat_template: false,
        labels: Some(vec!["neg".into(), "pos".into()]),
        verbalizer: [("neg".to_string(), "negative".to_string()), ("pos".to_string(), "positive".to_string())].into(),
        ..TaskSpec::new("cls", Source::Classification(path))
    };
    let data = load_task_in(t.path(), &spec).unwrap();
    let counts = &data.manifest.counts;
    assert_eq!((counts.read, counts.kept), (20, 20));
    let total: usize = data.manifest.splits.values().map(|r| r.labels.values().sum::<usize>()).sum();
    assert_eq!(total, 20);
    let ex = &data.train[0];
    match &ex.answer {
        Answer::Class { label, names, choices } => {
            assert_eq!(names, &["neg", "pos"]);
            assert_eq!(choices, &["negative", "positive"]);
            assert_eq!(ex.answer.response(), choices[*label]);
        }
        other => panic!("{other:?}"),
    }
    let tok = toy_tokenizer();
    for add_bos in [false, true] {
        assert_eq!(assert_masks_line_up(&data, &tok, EncodeConfig { add_bos, ..EncodeConfig::default() }), 20);
    }
    let enc = Encoder::new(&tok, &spec, EncodeConfig::default());
    assert_eq!(enc.prompt_text(ex).unwrap(), format!("{}\nAnswer:", ex.messages[0].content));
    assert!(enc.response_text("positive") == " positive");
    let Encoding::Kept(e) = enc.encode(ex).unwrap() else { panic!() };
    assert_eq!(e.choice_ids.len(), 2);
    assert_eq!(
        e.response(),
        e.choice_ids[match &ex.answer {
            Answer::Class { label, .. } => *label,
            _ => unreachable!(),
        }]
        .as_slice()
    );
    for (c, seq) in e.choice_sequences().iter().enumerate() {
        assert_eq!(seq.prompt(), e.prompt());
        assert_eq!(seq.response(), e.choice_ids[c].as_slice());
    }

    // Balancing downsamples the majority to the minority, deterministically.
    let balanced = TaskSpec { balance: true, ..spec.clone() };
    let a = load_task_in(t.path(), &balanced).unwrap();
    let b = load_task_in(t.path(), &balanced).unwrap();
    assert_eq!(a.manifest, b.manifest);
    assert_eq!((a.manifest.counts.kept, a.manifest.counts.balanced_away), (14, 6));
    let mut per_label = std::collections::BTreeMap::new();
    for r in a.manifest.splits.values() {
        for (l, n) in &r.labels {
            *per_label.entry(l.clone()).or_insert(0) += n;
        }
    }
    assert_eq!(per_label, [("neg".to_string(), 7), ("pos".to_string(), 7)].into());
}

/// A toy BIG-bench task: labels from `target_scores`, `task_prefix`, `target` lists.
const TOY_TASK: &str = r#"{
  "name": "toy",
  "task_prefix": "Decide.\n\n",
  "examples": [
    {"input": "good film ", "target_scores": {"positive": 1, "negative": 0, "neutral": 0}},
    {"input": "bad film", "target_scores": {"positive": 0, "negative": 1, "neutral": 0}, "target": "negative"},
    {"input": "a film", "target_scores": {"positive": 0, "negative": 0, "neutral": 1}},
    {"input": "good film", "target_scores": {"positive": 1, "negative": 0, "neutral": 0}},
    {"input": "great film", "target_scores": {"positive": 1, "negative": 0, "neutral": 0}}
  ]
}"#;

fn write_fake_bigbench(home: &Path, members: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = home.join("packages/bigbench-1.0.0");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bigbench-1.0.0.tar.gz");
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, content) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, content.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

#[test]
fn bigbench_tasks_stream_from_the_archive_once_then_come_from_the_cache() {
    let t = TempDir::new("bigbench");
    let member = "bigbench-1.0.0/bigbench/benchmark_tasks/toy/sub/task.json";
    let archive = write_fake_bigbench(
        t.path(),
        &[("bigbench-1.0.0/setup.py", "pass"), (member, TOY_TASK), ("bigbench-1.0.0/bigbench/benchmark_tasks/other/task.json", "{}")],
    );
    let spec = TaskSpec {
        keep_labels: Some(vec!["positive".into(), "negative".into()]),
        verbalizer: [("positive".to_string(), "yes".to_string())].into(),
        ..TaskSpec::new("toy", Source::BigBench { task: "toy/sub".into() })
    };
    let data = load_task_in(t.path(), &spec).unwrap();
    let cached = t.path().join("data/bigbench/toy/sub/task.json");
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), TOY_TASK);
    assert!(temporaries(t.path()).is_empty());
    let c = &data.manifest.counts;
    assert_eq!((c.read, c.filtered_by_label, c.duplicates_dropped, c.kept), (5, 1, 1, 3));
    let all: Vec<_> = data.train.iter().chain(&data.dev).chain(&data.test).collect();
    let bad = all.iter().find(|e| e.answer.label_name() == Some("negative")).unwrap();
    assert_eq!(bad.messages[0].content, "Decide.\nbad film", "task_prefix + trimmed input");
    match &bad.answer {
        Answer::Class { label, names, choices } => {
            assert_eq!(names, &["positive", "negative"], "keep_labels order");
            assert_eq!(choices, &["yes", "negative"]);
            assert_eq!(*label, 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(bad.origin.contains("examples[1] (line 6)"), "{}", bad.origin);

    // The archive is not needed any more.
    std::fs::remove_file(&archive).unwrap();
    let again = load_task_in(t.path(), &spec).unwrap();
    assert_eq!(again.manifest, data.manifest);

    // Generation from `target` and no task prefix.
    let gen_spec = TaskSpec { kind: TaskKind::Generation, use_task_prefix: false, ..TaskSpec::new("g", spec.source.clone()) };
    let msg = load_task_in(t.path(), &gen_spec).unwrap_err().to_string();
    assert!(msg.contains("examples[0] (line 5)") && msg.contains("`target`"), "{msg}");
}

#[test]
fn bigbench_generation_targets_accept_every_reference() {
    let t = TempDir::new("bbgen");
    let task = r#"{"examples": [
        {"input": "2+2", "target": ["4", "four"]},
        {"input": "3+3", "target": "6"}
    ]}"#;
    t.write("data/bigbench/arith/task.json", task);
    let spec = TaskSpec::new("arith", Source::BigBench { task: "arith".into() });
    let data = load_task_in(t.path(), &spec).unwrap();
    let all: Vec<_> = data.train.iter().chain(&data.dev).chain(&data.test).collect();
    let four = all.iter().find(|e| e.messages[0].content == "2+2").unwrap();
    assert_eq!(four.answer.response(), "4");
    assert!(four.answer.is_correct("four") && four.answer.is_correct(" 4\n") && !four.answer.is_correct("5"));
    assert_eq!(assert_masks_line_up(&data, &toy_tokenizer(), EncodeConfig::default()), 2);
}

#[test]
fn gsm8k_format_strips_annotations_and_scores_the_final_number() {
    let t = TempDir::new("gsm");
    let path = t.write(
        "gsm.jsonl",
        r#####"{"question": "Natalia sold 48 clips in April and half as many in May. How many in total?", "answer": "In May she sold 48/2 = <<48/2=24>>24.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"}
{"question": "Big?", "answer": "#### 1,234"}
"#####,
    );
    let raw = iapt_data::gsm8k::read_file(&path).unwrap();
    let spec = iapt_data::builtin_task("gsm8k").unwrap();
    let data = iapt_data::prepare(&spec, raw).unwrap();
    let all: Vec<_> = data.train.iter().chain(&data.dev).chain(&data.test).collect();
    let nat = all.iter().find(|e| e.answer.response().contains("Natalia") || e.messages[0].content.contains("Natalia")).unwrap();
    assert_eq!(nat.answer.response(), "In May she sold 48/2 = 24.\nTotal 48+24 = 72.\n#### 72");
    assert!(nat.messages[0].content.ends_with("give the final answer after ####."));
    assert!(nat.answer.is_correct("so #### 72") && !nat.answer.is_correct("#### 7"));
    let big = all.iter().find(|e| e.messages[0].content.starts_with("Big?")).unwrap();
    assert!(big.answer.is_correct("The answer is 1,234.") && big.answer.is_correct("#### 1234"));
    assert_eq!(assert_masks_line_up(&data, &toy_tokenizer(), EncodeConfig::default()), 2);
}

#[test]
fn truncation_never_cuts_the_response() {
    let t = TempDir::new("trunc");
    let long_input = "word ".repeat(40);
    let path = t.write(
        "t.jsonl",
        &format!(
            "{{\"instruction\": \"Short.\", \"output\": \"ok\"}}\n{{\"instruction\": \"Long.\", \"input\": \"{long_input}\", \"output\": \"fine\"}}\n{{\"instruction\": \"Long answer.\", \"output\": \"{long_input}\"}}\n"
        ),
    );
    let spec = TaskSpec { split: iapt_data::SplitSpec { train: 1.0, dev: 0.0, test: 0.0, seed: 1 }, ..TaskSpec::new("t", Source::InstructionJsonl(path)) };
    let data = load_task_in(t.path(), &spec).unwrap();
    let tok = toy_tokenizer();
    let max_len = 60;
    let short = data.train.iter().find(|e| e.answer.response() == "ok").unwrap();
    let long = data.train.iter().find(|e| e.answer.response() == "fine").unwrap();

    let drop = Encoder::new(&tok, &spec, EncodeConfig { max_len, ..EncodeConfig::default() });
    let (kept, stats) = drop.encode_all(&data.train).unwrap();
    assert_eq!((stats.examples, stats.kept, stats.dropped, stats.truncated), (3, 1, 2, 0));
    assert_eq!(kept[0].id, short.id);

    let left = Encoder::new(&tok, &spec, EncodeConfig { max_len, truncation: iapt_data::Truncation::TruncateLeft, ..EncodeConfig::default() });
    let (kept, stats) = left.encode_all(&data.train).unwrap();
    assert_eq!((stats.kept, stats.dropped, stats.truncated), (2, 1, 1), "the long answer alone exceeds max_len: dropped");
    let cut = kept.iter().find(|e| e.id == long.id).unwrap();
    assert_eq!(cut.len(), max_len);
    assert!(cut.truncated > 0);
    let full = drop.prompt_ids(long).unwrap();
    assert_eq!(cut.prompt(), &full[cut.truncated..], "cut from the left");
    assert_eq!(tok.decode(cut.response(), false).unwrap(), "fine<|im_end|>", "response whole");
}

#[test]
fn show_report_makes_masks_visible() {
    let t = TempDir::new("show");
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&format!("{{\"text\": \"item {i}\", \"label\": \"{}\"}}\n", if i % 2 == 0 { "a" } else { "b" }));
    }
    let path = t.write("s.jsonl", &text);
    let spec = TaskSpec {
        template: Some("Classify: {input}".into()),
        labels: Some(vec!["a".into(), "b".into()]),
        ..TaskSpec::new("show", Source::Classification(path))
    };
    let data = load_task_in(t.path(), &spec).unwrap();
    let tok = toy_tokenizer();
    let report = iapt_data::show(&data, &Encoder::new(&tok, &spec, EncodeConfig::default()), iapt_data::Split::Train, 2).unwrap();
    println!("{report}");
    assert!(report.contains("task show"), "{report}");
    assert!(report.contains("kept 30"), "{report}");
    assert!(report.contains("train") && report.contains("dev") && report.contains("test"));
    // Each split's line lists its label counts, as counted here from the split itself.
    for (name, split) in [("train", &data.train), ("dev", &data.dev), ("test", &data.test)] {
        let count = |label: &str| split.iter().filter(|e| e.answer.label_name() == Some(label)).count();
        let line = report.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("no {name} line: {report}"));
        assert!(line.contains(&format!("a {}, b {}", count("a"), count("b"))), "{name} label counts: {line}");
        assert_eq!(count("a") + count("b"), split.len());
    }
    let first = &data.train[0];
    let answer = first.answer.response();
    assert!(report.contains(&format!("<|im_start|>assistant\n[[{answer}<|im_end|>]]")), "{report}");
    assert!(report.contains("·[[") && report.contains("<|im_end|>]]"), "{report}");
    assert_eq!(report.matches("--- train #").count(), 2);
}
