//! Printable views of a task for `iapt data show`: preparation counts, split sizes and label
//! counts, and encoded examples with their masks visible.

use crate::encode::{EncodeConfig, EncodedExample, Encoder, Encoding};
use crate::error::DataError;
use crate::split::Split;
use crate::task::{load_task, resolve_task, Answer, TaskData};
use iapt_model::Tokenizer;
use std::fmt::Write;

/// Load a built-in task and show `n` encoded examples of `split` (see [`show`]).
pub fn show_task(name: &str, tokenizer: &Tokenizer, split: Split, n: usize, config: EncodeConfig) -> Result<String, DataError> {
    let spec = resolve_task(name)?;
    let data = load_task(&spec)?;
    show(&data, &Encoder::new(tokenizer, &spec, config), split, n)
}

/// A report: how the task was prepared, split sizes with label counts, encoding counts for
/// `split`, and its first `n` examples. In each example the prompt (instruction mask) is shown
/// plain and the response (loss mask) inside `[[ ]]`, first as text, then token by token
/// (tokens separated by `·`, newlines and tabs escaped).
pub fn show(data: &TaskData, encoder: &Encoder<'_>, split: Split, n: usize) -> Result<String, DataError> {
    let m = &data.manifest;
    let spec = &data.spec;
    let mut out = String::new();
    let kind = if data.split(split).first().is_some_and(|e| matches!(e.answer, Answer::Class { .. })) { "classification" } else { "generation" };
    let format = if spec.use_chat_template { "chat template" } else { "plain prompt" };
    let _ = writeln!(out, "task {}  source {}  ({kind}, {format})", m.task, m.source);
    let c = &m.counts;
    let _ = writeln!(
        out,
        "prepared: read {}, filtered by label {}, duplicates dropped {}, conflicting dropped {}, balanced away {}, kept {}",
        c.read, c.filtered_by_label, c.duplicates_dropped, c.conflicting_dropped, c.balanced_away, c.kept
    );
    let _ = writeln!(out, "split seed {} fractions {}/{}/{}", m.split.seed, m.split.train, m.split.dev, m.split.test);
    for (s, r) in &m.splits {
        let labels: Vec<String> =
            if r.labels.len() > 12 { vec![format!("{} distinct labels", r.labels.len())] } else { r.labels.iter().map(|(l, k)| format!("{l} {k}")).collect() };
        let _ = writeln!(out, "  {:<5} {:>6}  ids sha256 {}  {}", s.name(), r.size, &r.ids_sha256[..16], labels.join(", "));
    }

    let examples = data.split(split);
    let (_, stats) = encoder.encode_all(examples)?;
    let cfg = encoder.config();
    let mean = |x: usize| if stats.kept == 0 { 0.0 } else { x as f64 / stats.kept as f64 };
    let _ = writeln!(
        out,
        "encoding {split} (max_len {}, {:?}): kept {}, truncated {}, dropped {}; mean prompt {:.1} tokens, mean response {:.1}, longest {}",
        cfg.max_len,
        cfg.truncation,
        stats.kept,
        stats.truncated,
        stats.dropped,
        mean(stats.prompt_tokens),
        mean(stats.response_tokens),
        stats.longest
    );

    for (i, ex) in examples.iter().take(n).enumerate() {
        let _ = writeln!(out, "\n--- {split} #{i}  id {}  ({})", ex.id, ex.origin);
        match &ex.answer {
            Answer::Class { label, names, choices } => {
                let _ = writeln!(out, "label {} (index {label}); choices {:?}", names[*label], choices);
            }
            Answer::Text(t) => {
                let _ = writeln!(out, "references {:?} ({:?})", t.references, t.rule);
            }
        }
        match encoder.encode(ex)? {
            Encoding::Kept(e) => show_encoded(&mut out, encoder.tokenizer(), &e)?,
            Encoding::Dropped { prompt_tokens, response_tokens, .. } => {
                let _ = writeln!(out, "dropped: {prompt_tokens} prompt + {response_tokens} response tokens exceed max_len {}", cfg.max_len);
            }
        }
    }
    Ok(out)
}

fn show_encoded(out: &mut String, tokenizer: &Tokenizer, e: &EncodedExample) -> Result<(), DataError> {
    let decode = |ids: &[u32]| tokenizer.decode(ids, false).map_err(|reason| DataError::Encode { task: String::new(), id: e.id.clone(), reason });
    let _ = writeln!(
        out,
        "{} tokens = {} instruction + {} loss{}",
        e.len(),
        e.prompt_len,
        e.len() - e.prompt_len,
        if e.truncated > 0 { format!(" ({} prompt tokens cut from the left)", e.truncated) } else { String::new() }
    );
    let _ = writeln!(out, "{}[[{}]]", decode(e.prompt())?, decode(e.response())?);
    let pieces = |ids: &[u32]| -> Result<String, DataError> {
        let parts = ids.iter().map(|&id| decode(&[id]).map(|s| escape(&s))).collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join("·"))
    };
    let _ = writeln!(out, "tokens: {}·[[{}]]", pieces(e.prompt())?, pieces(e.response())?);
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n").replace('\t', "\\t")
}
