//! Task accuracy of the backbone, with or without a tuner: rank classification over each
//! example's choices (the label verbalisations, or a multiple-choice example's own options), or
//! greedy generation judged by the task's exact-match rule (GSM8K: the final number).

use crate::run_config::EvalMethod;
use anyhow::{anyhow, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use iapt_data::{Answer, EncodedExample};
use iapt_model::{generate, GenerationConfig, KvCache, Llama, ModelHook, Padding, SamplingConfig, TokenBatch, Tokenizer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// One evaluated example.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: String,
    /// The chosen label's answer text, or the generated text.
    pub prediction: String,
    pub correct: bool,
    /// Rank classification: the log-likelihood of every choice's response tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice_log_likelihoods: Option<Vec<f64>>,
}

/// The accuracy of one model on one split.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub task: String,
    pub split: String,
    /// `rank` or `generate` (never `auto`).
    pub method: EvalMethod,
    /// The adapter evaluated; `None` = the bare backbone (zero-shot).
    pub adapter: Option<String>,
    pub examples: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Classification: the split's most frequent label and the accuracy of always answering it.
    pub majority_label: Option<String>,
    pub majority_accuracy: Option<f64>,
    pub seconds: f64,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

impl EvalReport {
    /// One line for people.
    pub fn summary(&self) -> String {
        let who = self.adapter.as_deref().map_or("zero-shot".to_string(), |a| format!("adapter {a}"));
        let majority = match (&self.majority_label, self.majority_accuracy) {
            (Some(label), Some(acc)) => format!(", majority class `{label}` {:.1}%", 100.0 * acc),
            _ => String::new(),
        };
        format!(
            "{} {} ({who}, {}): accuracy {:.1}% ({}/{}){majority} [{:.0}s]",
            self.task,
            self.split,
            self.method.name(),
            100.0 * self.accuracy,
            self.correct,
            self.examples,
            self.seconds
        )
    }
}

/// `auto` resolved for a set of examples: rank when they are classification examples.
pub fn resolve_method(method: EvalMethod, examples: &[EncodedExample]) -> Result<EvalMethod> {
    let classification = examples.iter().all(|e| matches!(e.answer, Answer::Class { .. }));
    match method {
        EvalMethod::Auto if classification => Ok(EvalMethod::Rank),
        EvalMethod::Auto => Ok(EvalMethod::Generate),
        EvalMethod::Rank if !classification => Err(anyhow!("rank evaluation needs a classification task")),
        other => Ok(other),
    }
}

/// What [`evaluate`] needs besides the model.
pub struct EvalRequest<'a> {
    pub task: &'a str,
    pub split: &'a str,
    pub method: EvalMethod,
    pub adapter: Option<String>,
    pub batch_size: usize,
    pub max_new_tokens: usize,
}

/// Evaluate `model` (+ `hook`) on `examples`.
pub fn evaluate<B: Backend>(
    model: &Llama<B>,
    hook: &dyn ModelHook<B>,
    tokenizer: &Tokenizer,
    examples: &[EncodedExample],
    request: EvalRequest<'_>,
) -> Result<EvalReport> {
    if examples.is_empty() {
        return Err(anyhow!("{} {}: no examples to evaluate", request.task, request.split));
    }
    let method = resolve_method(request.method, examples)?;
    let start = Instant::now();
    let predictions = match method {
        EvalMethod::Rank => rank_classify(model, hook, tokenizer.pad_id(), examples, request.batch_size),
        _ => generate_answers(model, hook, tokenizer, examples, request.batch_size, request.max_new_tokens)?,
    };
    let correct = predictions.iter().filter(|p| p.correct).count();
    let (majority_label, majority_accuracy) = majority(examples);
    Ok(EvalReport {
        task: request.task.to_string(),
        split: request.split.to_string(),
        method,
        adapter: request.adapter,
        examples: examples.len(),
        correct,
        accuracy: correct as f64 / examples.len() as f64,
        majority_label,
        majority_accuracy,
        seconds: start.elapsed().as_secs_f64(),
        predictions,
    })
}

/// The most frequent label and its share (ties: the first label name in order).
fn majority(examples: &[EncodedExample]) -> (Option<String>, Option<f64>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in examples {
        if let Some(label) = e.answer.label_name() {
            *counts.entry(label).or_default() += 1;
        }
    }
    let best = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
    match best {
        Some((label, &n)) => (Some(label.to_string()), Some(n as f64 / examples.len() as f64)),
        None => (None, None),
    }
}

/// Score `choice ++ EOS` after the prompt for every choice and pick the most likely.
///
/// Each prompt runs through the model once (batched, shortest first, left-padded); every choice
/// then continues from a copy of that prefill's KV cache, so a k-way task costs one prompt pass
/// plus k short continuations instead of k full sequences. The first response token is scored
/// from the prompt's last position, the others from the continuation (which feeds the choice
/// without its last token).
fn rank_classify<B: Backend>(model: &Llama<B>, hook: &dyn ModelHook<B>, pad_id: u32, examples: &[EncodedExample], batch_size: usize) -> Vec<Prediction> {
    let device = model.device();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].prompt_len);
    let mut scores: Vec<Vec<f64>> = examples.iter().map(|e| vec![0.0; e.choice_ids.len()]).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| examples[i].prompt().to_vec()).collect();
        let mut prefill = KvCache::new(model.num_layers());
        let hidden = model.forward(TokenBatch::padded(&prompts, pad_id, Padding::Left, &device), &mut prefill, hook);
        let t = hidden.dims()[1];
        let first = host_log_probs(model, hidden.narrow(1, t - 1, 1));
        let most_choices = chunk.iter().map(|&i| examples[i].choice_ids.len()).max().unwrap_or(0);
        for c in 0..most_choices {
            let choice = |i: usize| examples[i].choice_ids.get(c);
            // Every choice but its last token is fed; rows with nothing to feed (no c-th choice,
            // as BIG-bench examples carry their own choice lists, or a one-token choice) get a
            // padding token whose scores nobody reads.
            let rest = chunk.iter().any(|&i| choice(i).is_some_and(|ids| ids.len() > 1)).then(|| {
                let rows: Vec<Vec<u32>> =
                    chunk.iter().map(|&i| choice(i).map(|ids| &ids[..ids.len() - 1]).filter(|f| !f.is_empty()).map_or(vec![pad_id], <[u32]>::to_vec)).collect();
                let hidden = model.forward(TokenBatch::padded(&rows, pad_id, Padding::Right, &device), &mut prefill.clone(), hook);
                host_log_probs(model, hidden)
            });
            for (row, &i) in chunk.iter().enumerate() {
                let Some(ids) = choice(i) else { continue };
                let mut total = first.get(row, 0, ids[0]);
                for (j, &next) in ids.iter().enumerate().skip(1) {
                    total += rest.as_ref().expect("choices longer than one token were fed").get(row, j - 1, next);
                }
                *scores[i].get_mut(c).expect("one score per choice") = total;
            }
        }
    }

    examples
        .iter()
        .zip(scores)
        .map(|(e, s)| {
            let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap_or(0);
            let (label, choices) = match &e.answer {
                Answer::Class { label, choices, .. } => (*label, choices),
                Answer::Text(_) => unreachable!("rank evaluation is only resolved for classification"),
            };
            // By text: two options with the same text (five SIQa questions have them) score alike,
            // and picking either is the right answer, as generation would judge it.
            Prediction { id: e.id.clone(), prediction: choices[best].clone(), correct: choices[best] == choices[label], choice_log_likelihoods: Some(s) }
        })
        .collect()
}

/// Next-token log-probabilities `[b, t, vocab]` of final hidden states, on the host.
struct HostLogProbs {
    values: Vec<f32>,
    dims: [usize; 3],
}

impl HostLogProbs {
    fn get(&self, row: usize, position: usize, token: u32) -> f64 {
        let [_, t, vocab] = self.dims;
        self.values[(row * t + position) * vocab + token as usize] as f64
    }
}

fn host_log_probs<B: Backend>(model: &Llama<B>, hidden: Tensor<B, 3>) -> HostLogProbs {
    let log_probs = log_softmax(model.logits(hidden), 2);
    let dims = log_probs.dims();
    HostLogProbs { values: log_probs.into_data().convert::<f32>().to_vec::<f32>().expect("float data"), dims }
}

/// Greedy generation for every prompt (batched, shortest first), judged by the answer's rule.
fn generate_answers<B: Backend>(
    model: &Llama<B>,
    hook: &dyn ModelHook<B>,
    tokenizer: &Tokenizer,
    examples: &[EncodedExample],
    batch_size: usize,
    max_new_tokens: usize,
) -> Result<Vec<Prediction>> {
    let config = GenerationConfig { max_new_tokens, sampling: SamplingConfig::default() /* greedy */, stop_tokens: vec![tokenizer.eos_id()] };
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].prompt_len);
    let mut predictions: Vec<Option<Prediction>> = vec![None; examples.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| examples[i].prompt().to_vec()).collect();
        let out = generate(model, &prompts, tokenizer.pad_id(), &config, hook);
        for (&i, ids) in chunk.iter().zip(&out.tokens) {
            let text = tokenizer.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"))?;
            let correct = examples[i].answer.is_correct(&text);
            predictions[i] = Some(Prediction { id: examples[i].id.clone(), prediction: text, correct, choice_log_likelihoods: None });
        }
    }
    Ok(predictions.into_iter().map(|p| p.expect("every example predicted")).collect())
}

/// Write `report` (`<stem>.json`) and its predictions (`<stem>.predictions.jsonl`) into `dir`.
pub fn save_report(report: &EvalReport, dir: &std::path::Path, stem: &str) -> Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    write(&dir.join(format!("{stem}.json")), &json)?;
    let mut lines = Vec::new();
    for p in &report.predictions {
        lines.extend(serde_json::to_vec(p)?);
        lines.push(b'\n');
    }
    write(&dir.join(format!("{stem}.predictions.jsonl")), &lines)
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    iapt_assets::atomic::write_atomically(path, bytes).map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;
    use iapt_model::{LlamaConfig, NoHook};

    fn class_example(prompt: Vec<u32>, label: usize, choice_ids: Vec<Vec<u32>>) -> EncodedExample {
        let mut ids = prompt.clone();
        ids.extend(&choice_ids[label]);
        EncodedExample {
            id: format!("e{label}{}", prompt.len()),
            ids,
            prompt_len: prompt.len(),
            truncated: 0,
            answer: Answer::Class { label, names: vec!["a".into(), "b".into()], choices: vec!["A".into(), "B".into()] },
            choice_ids,
        }
    }

    /// Rank scores (one prompt pass, choices continued from its cache) equal a naive per-sequence
    /// sum of next-token log-probabilities from the full logits of `prompt ++ choice`, whatever
    /// the batching, padding, number and length of choices, with no tuner and with every kind.
    #[test]
    fn rank_scores_match_a_naive_recomputation() {
        use iapt_model::Projection;
        use iapt_tuners::{IaptConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TunerConfig};
        let device = Default::default();
        let config = LlamaConfig::tiny();
        let model = Llama::<NdArray>::random(&config, &device);
        let mut examples = vec![
            class_example(vec![5, 6, 7], 0, vec![vec![9, 2], vec![10, 11, 2]]),
            class_example(vec![12, 13, 14, 15, 16], 1, vec![vec![9, 2], vec![10, 11, 2]]),
            class_example(vec![20, 21], 1, vec![vec![9, 2], vec![2]]),
        ];
        // An example with its own, longer list of choices (as BIG-bench examples have).
        let abc = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        examples.push(EncodedExample {
            choice_ids: vec![vec![3, 2], vec![4, 5, 6, 2], vec![7, 2]],
            answer: Answer::Class { label: 0, names: abc("a b c"), choices: abc("A B C") },
            ..class_example(vec![8, 9, 10, 11], 0, vec![vec![3, 2]])
        });
        let tuners = [
            TunerConfig::Iapt(IaptConfig::new(8)),
            TunerConfig::Lora(LoraConfig::new().with_rank(2).with_targets(Projection::ALL.to_vec())),
            TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(3)),
            TunerConfig::PromptTuning(PromptTuningConfig::new().with_num_tokens(2)),
        ]
        .map(|c| c.init::<NdArray>(&config, &device).unwrap().jittered(7, 0.5, |_| true));
        let hooks: Vec<&dyn ModelHook<NdArray>> =
            std::iter::once(&NoHook as &dyn ModelHook<NdArray>).chain(tuners.iter().map(|t| t as &dyn ModelHook<NdArray>)).collect();
        for (h, hook) in hooks.into_iter().enumerate() {
            let predictions = rank_classify(&model, hook, 0, &examples, 3);
            for (e, p) in examples.iter().zip(&predictions) {
                let scores = p.choice_log_likelihoods.as_ref().unwrap();
                assert_eq!(scores.len(), e.choice_ids.len());
                for (c, seq) in e.choice_sequences().iter().enumerate() {
                    let prompt: Vec<bool> = (0..seq.ids.len()).map(|i| i < seq.prompt_len).collect();
                    let batch = TokenBatch::<NdArray>::padded(std::slice::from_ref(&seq.ids), 0, Padding::Right, &device)
                        .with_instruction(Tensor::from_data(TensorData::new(prompt, [1, seq.ids.len()]), &device));
                    let ids = batch.ids.clone();
                    let hidden = model.forward(batch, &mut KvCache::new(2), hook);
                    let t = seq.ids.len();
                    let hidden = hidden.clone().narrow(1, hidden.dims()[1] - t, t); // past prompt tuning's prefix
                    let nll = iapt_model::score::next_token_nll(model.logits(hidden), ids).to_data().to_vec::<f32>().unwrap();
                    let expected: f64 = -nll[seq.prompt_len - 1..].iter().map(|&v| v as f64).sum::<f64>();
                    assert!((scores[c] - expected).abs() < 1e-4, "hook {h}, example {}, choice {c}: {} vs {expected}", e.id, scores[c]);
                }
                let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
                assert_eq!(p.correct, matches!(e.answer, Answer::Class { label, .. } if label == best));
            }
        }
    }

    /// Two options with the same text score alike, and picking either is the right answer (rank
    /// evaluation would otherwise count the tie's other index as wrong).
    #[test]
    fn options_with_the_same_text_are_the_same_answer() {
        let device = Default::default();
        let model = Llama::<NdArray>::random(&LlamaConfig::tiny(), &device);
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The third option, six tokens long, is far less likely than the two-token twins.
        let example = |label: usize| EncodedExample {
            choice_ids: vec![vec![9, 2], vec![9, 2], vec![10, 11, 12, 13, 14, 2]],
            answer: Answer::Class { label, names: texts(&["A", "B", "C"]), choices: texts(&["same", "same", "other"]) },
            ..class_example(vec![5, 6, 7], 0, vec![vec![9, 2]])
        };
        for label in [0, 1] {
            let p = &rank_classify(&model, &NoHook, 0, &[example(label)], 1)[0];
            let s = p.choice_log_likelihoods.as_ref().unwrap();
            assert!(s[0] == s[1] && s[0] > s[2], "{s:?}");
            assert!(p.correct && p.prediction == "same", "label {label}: {p:?}");
        }
        let p = &rank_classify(&model, &NoHook, 0, &[example(2)], 1)[0];
        assert!(!p.correct);
    }

    /// A word-level tokenizer over the tiny model's vocabulary: token `i` is the word `t{i}`.
    fn word_tokenizer(vocab: usize) -> Tokenizer {
        let words: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": words, "unk_token": "t0"}
        });
        let inner: tokenizers::Tokenizer = json.to_string().parse().unwrap();
        Tokenizer::from_parts(inner, None, "t2", Some("t0"), None).unwrap()
    }

    /// Greedy decoding by full recomputation (no cache, no batching), up to EOS or `max_new`.
    fn greedy_by_recompute(model: &Llama<NdArray>, prompt: &[u32], eos: u32, max_new: usize) -> Vec<u32> {
        let mut ids = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < max_new {
            let batch = TokenBatch::<NdArray>::padded(std::slice::from_ref(&ids), 0, iapt_model::Padding::Right, &model.device());
            let logits: Vec<f32> = model.logits(model.forward(batch, &mut KvCache::new(2), &NoHook)).into_data().to_vec().unwrap();
            let vocab = model.config().vocab_size;
            let last = &logits[(ids.len() - 1) * vocab..ids.len() * vocab];
            let next = (0..vocab).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
            out.push(next);
            ids.push(next);
            if next == eos {
                break;
            }
        }
        out
    }

    /// Evaluation by generation: batched greedy answers (prompts of different lengths in one
    /// batch) equal unbatched greedy decoding, and each is judged by its own reference.
    #[test]
    fn generated_answers_equal_greedy_decoding_and_are_judged_by_the_reference() {
        let device = Default::default();
        <NdArray as Backend>::seed(&device, 3);
        let model = Llama::<NdArray>::random(&LlamaConfig::tiny(), &device);
        let tokenizer = word_tokenizer(model.config().vocab_size);
        let prompts: [Vec<u32>; 3] = [vec![5, 6, 7], vec![12, 13, 14, 15, 16, 17], vec![40, 41]];
        let max_new = 6;
        let expected: Vec<String> =
            prompts.iter().map(|p| tokenizer.decode(&greedy_by_recompute(&model, p, tokenizer.eos_id(), max_new), true).unwrap()).collect();
        // The first two references are the model's own answers; the third is not.
        let references = [expected[0].clone(), expected[1].clone(), format!("{} t1", expected[2])];
        let examples: Vec<EncodedExample> = prompts
            .iter()
            .zip(&references)
            .enumerate()
            .map(|(i, (prompt, reference))| EncodedExample {
                id: format!("g{i}"),
                ids: prompt.iter().copied().chain([9, 2]).collect(),
                prompt_len: prompt.len(),
                truncated: 0,
                answer: Answer::Text(iapt_data::TextTarget {
                    response: reference.clone(),
                    references: vec![reference.clone()],
                    rule: iapt_data::MatchRule::Exact,
                }),
                choice_ids: Vec::new(),
            })
            .collect();
        let request = EvalRequest { task: "toy", split: "test", method: EvalMethod::Auto, adapter: None, batch_size: 2, max_new_tokens: max_new };
        let report = evaluate(&model, &NoHook, &tokenizer, &examples, request).unwrap();
        assert_eq!(report.method, EvalMethod::Generate, "free-text answers are generated");
        let got: Vec<&str> = report.predictions.iter().map(|p| p.prediction.as_str()).collect();
        assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(report.predictions.iter().map(|p| p.correct).collect::<Vec<_>>(), [true, true, false]);
        assert_eq!((report.correct, report.examples), (2, 3));
        assert_eq!(report.majority_label, None);
    }

    #[test]
    fn majority_is_the_most_frequent_label() {
        let c = vec![vec![9, 2], vec![10, 2]];
        let examples = vec![class_example(vec![1], 1, c.clone()), class_example(vec![2], 1, c.clone()), class_example(vec![3], 0, c)];
        let (label, acc) = majority(&examples);
        assert_eq!(label.as_deref(), Some("b"));
        assert!((acc.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }
}
