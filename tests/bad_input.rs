//! Bad input, as a user meets it: every case runs the `iapt` binary on it and checks the exit code
//! is not 0 and the message says what the README's "Bad input" table says it does. The table is
//! this file's case list: a test fails when the two differ, so the README stays true.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One kind of bad input: what it is, what the user reads (parts of the message, in order,
/// separated by ` … `; `{dir}` stands for the scratch directory), and the command that meets it.
struct Case {
    input: &'static str,
    shown: &'static str,
    /// Writes the input into the scratch directory and returns the `iapt` arguments.
    args: fn(&Path) -> Vec<String>,
}

/// Cases that need no model.
const OFFLINE: &[Case] = &[
    Case {
        input: "a model path that does not exist",
        shown: "--model {dir}/missing.gguf: no such file or directory, and not a known model name (known: smollm2",
        args: |dir| tokenize(&dir.join("missing.gguf")),
    },
    Case { input: "an empty model file", shown: "{dir}/empty.gguf: not a valid GGUF file", args: |dir| tokenize(&write(dir, "empty.gguf", b"")) },
    Case {
        input: "a file that is not GGUF",
        shown: "{dir}/random.gguf: not a valid GGUF file: bad magic",
        args: |dir| tokenize(&write(dir, "random.gguf", &[0xAB; 4096])),
    },
    Case {
        input: "a GGUF file cut short in its header",
        shown: "{dir}/cut.gguf: not a valid GGUF file",
        args: |dir| {
            let mut bytes = b"GGUF".to_vec();
            bytes.extend(3u32.to_le_bytes()); // version
            bytes.extend(1u64.to_le_bytes()); // tensors
            bytes.extend(5u64.to_le_bytes()); // metadata entries, then nothing
            tokenize(&write(dir, "cut.gguf", &bytes))
        },
    },
    Case {
        input: "a HF checkpoint directory without `config.json`",
        shown: "{dir}/hf/config.json: No such file or directory (os error 2)",
        args: |dir| {
            std::fs::create_dir_all(dir.join("hf")).unwrap();
            write(dir, "hf/tokenizer.json", TOKENIZER_JSON);
            score(&dir.join("hf"))
        },
    },
    Case {
        input: "a `config.json` that is not JSON",
        shown: "{dir}/hf-json/config.json: not a valid JSON file: expected value at line 1 column 1",
        args: |dir| {
            std::fs::create_dir_all(dir.join("hf-json")).unwrap();
            write(dir, "hf-json/tokenizer.json", TOKENIZER_JSON);
            write(dir, "hf-json/config.json", b"hidden_size = 576");
            score(&dir.join("hf-json"))
        },
    },
    Case {
        input: "an unknown key in a run config",
        shown: "{dir}/typo.toml: TOML parse error at line 3, column 1 … unknown field `learnin_rate`, expected one of `epochs`",
        args: |dir| config(&write(dir, "typo.toml", b"[train]\nepochs = 2\nlearnin_rate = 1e-3\n"), &[]),
    },
    Case {
        input: "a value of the wrong type in `--set`",
        shown: "--set train.epochs=many: invalid type: string \"many\", expected usize",
        args: |dir| config(&write(dir, "empty.toml", b""), &["train.epochs=many"]),
    },
    Case {
        input: "`null` for a setting that can be switched off",
        shown: "invalid value: string \"null\", expected a number, or \"off\" to switch it off",
        args: |dir| config(&write(dir, "empty.toml", b""), &["train.patience=null"]),
    },
    Case {
        input: "a value out of range",
        shown: "train: learning_rate must be positive, got -1",
        args: |dir| config(&write(dir, "empty.toml", b""), &["train.learning_rate=-1"]),
    },
    Case {
        input: "an unknown tuner kind",
        shown: "tuner.kind: unknown tuner `lora2` (known: iapt, prompt_tuning, p_tuning_v2, lora)",
        args: |dir| config(&write(dir, "empty.toml", b""), &["tuner.kind=lora2"]),
    },
    Case {
        input: "a key of another tuner kind",
        shown: "tuner (lora): unknown field `bottleneck`",
        args: |dir| config(&write(dir, "lora.toml", b"[tuner]\nkind = \"lora\"\nbottleneck = 8\n"), &[]),
    },
    Case {
        input: "a negative temperature",
        shown: "--temperature -1: must be a finite number >= 0 (0 = greedy)",
        args: |dir| strings(&["generate", "--model", &dir.join("missing.gguf").display().to_string(), "--prompt", "Hi", "--temperature=-1"]),
    },
];

/// A valid two-word `tokenizer.json`, so that a HF directory gets as far as its `config.json`.
const TOKENIZER_JSON: &[u8] = br#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
  "post_processor": null, "decoder": null, "model": {"type": "WordLevel", "vocab": {"</s>": 0, "Hello": 1}, "unk_token": "</s>"}}"#;

/// Cases on the real checkpoint (fetched once).
const ON_THE_MODEL: &[Case] = &[
    Case {
        input: "a prompt plus `--max-new-tokens` beyond the context",
        shown: "a prompt of 1 token(s) plus --max-new-tokens 1000000 = 1000001 exceeds the model's context of 8192 tokens (max_position_embeddings)",
        args: |_| strings(&["generate", "--model", "smollm2", "--prompt", "Hello", "--max-new-tokens", "1000000"]),
    },
    Case {
        input: "a half-precision backbone on a CPU backend",
        shown: "--dtype f16: the CPU backends run the backbone in f32 (their kernels are f32); half precision is for the GPU backends (wgpu, cuda)",
        args: |_| strings(&["generate", "--model", "smollm2", "--prompt", "Hello", "--dtype", "f16"]),
    },
    Case {
        input: "a text to score beyond the context",
        shown: "--text is … tokens, more than the model's context of 8192 tokens (max_position_embeddings)",
        args: |_| strings(&["score", "--model", "smollm2", "--text", &"word ".repeat(9000)]),
    },
    Case {
        input: "a task file that does not exist",
        shown: "{dir}/missing-task.toml: no such task file",
        args: |dir| strings(&["data", "show", &dir.join("missing-task.toml").display().to_string()]),
    },
    Case {
        input: "a data file given where a task is expected",
        shown: "data.task = {dir}/reviews.jsonl: a .jsonl file holds examples, not a task",
        args: |dir| strings(&["data", "show", &write(dir, "reviews.jsonl", b"{\"text\": \"good\", \"label\": \"positive\"}\n").display().to_string()]),
    },
    Case {
        input: "a malformed line in a task's JSONL file",
        shown: "{dir}/broken.jsonl: line 2: malformed JSON",
        args: |dir| {
            let data = write(dir, "broken.jsonl", b"{\"text\": \"good\", \"label\": \"a\"}\n{\"text\": \"bad\", \"label\": \n");
            let task = format!(
                "name = \"broken\"\nsource = \"classification:{}\"\nkind = \"classification\"\ntemplate = \"{{input}}\"\nlabels = [\"a\", \"b\"]\n",
                data.display()
            );
            strings(&["data", "show", &write(dir, "broken.toml", task.as_bytes()).display().to_string()])
        },
    },
    Case {
        input: "a damaged adapter weight file",
        shown: "{dir}/adapter/adapter_model.safetensors: not a valid safetensors file",
        args: |dir| {
            // A LoRA adapter saved by Hugging Face PEFT for this model, its weights cut in half.
            let adapter = dir.join("adapter");
            std::fs::create_dir_all(&adapter).unwrap();
            let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/peft/lora"));
            std::fs::copy(fixture.join("adapter_config.json"), adapter.join("adapter_config.json")).unwrap();
            let weights = std::fs::read(fixture.join("adapter_model.safetensors")).unwrap();
            write(dir, "adapter/adapter_model.safetensors", &weights[..weights.len() / 2]);
            strings(&["generate", "--model", "smollm2", "--prompt", "Hi", "--adapter", &adapter.display().to_string()])
        },
    },
    Case {
        input: "a checkpoint whose weights are not finite numbers",
        shown: "{dir}/nan.gguf: tensor `model.layers. … non-finite value(s) (NaN or infinity): a damaged or wrongly decoded checkpoint",
        args: |dir| {
            // The real file with a run of NaN bit patterns written over the middle of its tensor data.
            let mut bytes = std::fs::read(real_model()).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle..middle + 4096].fill(0xFF);
            score(&write(dir, "nan.gguf", &bytes))
        },
    },
];

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn tokenize(model: &Path) -> Vec<String> {
    strings(&["tokenize", "--model", &model.display().to_string(), "--text", "Hello"])
}

fn score(model: &Path) -> Vec<String> {
    strings(&["score", "--model", &model.display().to_string(), "--text", "Hello there"])
}

fn config(file: &Path, sets: &[&str]) -> Vec<String> {
    let mut args = strings(&["config", "--config", &file.display().to_string()]);
    for set in sets {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The real checkpoint's path, fetched on first use.
fn real_model() -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args(["fetch", "model", "smollm2"]).output().unwrap();
    assert!(out.status.success(), "fetching the model: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text.lines().last().and_then(|l| l.split_whitespace().last()).map(PathBuf::from).expect("a path");
    assert!(path.is_file(), "`iapt fetch model smollm2` printed {text}");
    path
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iapt-bad-input-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `text` holds every part of `shown` (parts separated by ` … `), in that order.
fn contains_in_order(text: &str, shown: &str) -> bool {
    let mut rest = text;
    shown.split(" … ").all(|part| match rest.find(part) {
        Some(at) => {
            rest = &rest[at + part.len()..];
            true
        }
        None => false,
    })
}

/// Run every case; each must fail with its message.
fn check(cases: &[Case], tag: &str) {
    let dir = scratch(tag);
    let mut wrong = Vec::new();
    for case in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_iapt")).args((case.args)(&dir)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let shown = case.shown.replace("{dir}", &dir.display().to_string());
        if out.status.code() != Some(1) || !contains_in_order(&stderr, &shown) || stderr.contains("panicked") {
            wrong.push(format!("{}: exit {:?}, expected `{shown}` in:\n{stderr}", case.input, out.status.code()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn bad_input_without_a_model_is_refused_with_its_message() {
    check(OFFLINE, "offline");
}

#[test]
#[ignore = "needs the network (fetches the real model once); scripts/test.sh runs it"]
fn bad_input_on_the_real_model_is_refused_with_its_message() {
    check(ON_THE_MODEL, "model");
}

/// The README's table, as the cases say it (`{dir}` shown as `...`).
fn table() -> String {
    let mut out = String::from("| input | `iapt` says (exit code 1) |\n|---|---|\n");
    for case in OFFLINE.iter().chain(ON_THE_MODEL) {
        let shown = case.shown.replace("{dir}", "...").replace('|', "\\|");
        let code = if shown.contains('`') { format!("`` {shown} ``") } else { format!("`{shown}`") };
        out.push_str(&format!("| {} | {code} |\n", case.input));
    }
    out
}

#[test]
fn the_readme_table_is_the_case_list() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let expected = table();
    assert!(readme.contains(&expected), "README.md's bad-input table should read:\n\n{expected}");
}
