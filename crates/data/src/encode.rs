//! Examples -> token ids with an instruction mask (every prompt token, chat markers included) and
//! a loss mask (response tokens only, including the final EOS).
//!
//! The prompt and the response are tokenized **separately** and concatenated. That is exactly
//! what generation sees (the prompt is tokenized alone and the model continues it), so training
//! and inference agree, and the mask boundary is the text boundary by construction. (Tokenizing
//! `prompt + response` jointly can merge tokens across the boundary; chat templates end the
//! prompt with a newline and plain mode starts the response with a space, so with byte-level
//! BPE both ways agree on the prompt anyway.)
//!
//! Length: examples longer than `max_len` are never cut in the response. Policy `drop` (default)
//! drops them; `truncate_left` cuts prompt tokens from the left until they fit (dropping those
//! whose response alone leaves no room for a prompt token). Counts are reported in [`EncodeStats`].

use crate::error::DataError;
use crate::task::{Answer, Example, PromptFormat, TaskSpec};
use iapt_model::Tokenizer;
use serde::{Deserialize, Serialize};

/// What to do with examples longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Drop the example.
    #[default]
    Drop,
    /// Cut the instruction from the left (the response is always kept whole).
    TruncateLeft,
}

/// Encoding options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    /// Longest sequence (prompt + response + EOS), in tokens.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub truncation: Truncation,
    /// Plain mode only: start prompts with the tokenizer's BOS token (LLaMA-2 base models want
    /// it; chat templates write their own).
    #[serde(default)]
    pub add_bos: bool,
}

fn default_max_len() -> usize {
    512
}

impl Default for EncodeConfig {
    fn default() -> Self {
        Self { max_len: default_max_len(), truncation: Truncation::Drop, add_bos: false }
    }
}

/// One encoded example: `ids = prompt ++ response`, the response ending with EOS.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedExample {
    pub id: String,
    pub ids: Vec<u32>,
    /// Number of prompt (instruction) tokens at the start of `ids`.
    pub prompt_len: usize,
    /// Prompt tokens cut from the left to fit `max_len`.
    pub truncated: usize,
    pub answer: Answer,
    /// Classification: the response tokens (with EOS) of every choice, for rank classification.
    pub choice_ids: Vec<Vec<u32>>,
}

impl EncodedExample {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn prompt(&self) -> &[u32] {
        &self.ids[..self.prompt_len]
    }
    pub fn response(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }
    /// True on every prompt token.
    pub fn instruction_mask(&self) -> Vec<bool> {
        (0..self.ids.len()).map(|i| i < self.prompt_len).collect()
    }
    /// True on every response token (the tokens the loss is taken on), EOS included.
    pub fn loss_mask(&self) -> Vec<bool> {
        (0..self.ids.len()).map(|i| i >= self.prompt_len).collect()
    }
}

impl EncodedExample {
    /// Classification: one sequence per choice (`prompt ++ choice ++ EOS`), for scoring each
    /// choice's log-likelihood (rank classification). Empty for generation examples.
    pub fn choice_sequences(&self) -> Vec<EncodedExample> {
        self.choice_ids
            .iter()
            .map(|c| EncodedExample {
                id: self.id.clone(),
                ids: self.prompt().iter().chain(c).copied().collect(),
                prompt_len: self.prompt_len,
                truncated: self.truncated,
                answer: self.answer.clone(),
                choice_ids: Vec::new(),
            })
            .collect()
    }
}

/// The result of encoding one example.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    Kept(EncodedExample),
    /// Too long for `max_len` under the truncation policy.
    Dropped {
        id: String,
        prompt_tokens: usize,
        response_tokens: usize,
    },
}

/// Counts over an encoded set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EncodeStats {
    pub examples: usize,
    pub kept: usize,
    /// Kept after cutting prompt tokens.
    pub truncated: usize,
    /// Dropped as too long.
    pub dropped: usize,
    /// Over kept examples.
    pub prompt_tokens: usize,
    pub response_tokens: usize,
    pub longest: usize,
}

/// Renders and tokenizes a task's examples.
#[derive(Clone)]
pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    format: PromptFormat,
    config: EncodeConfig,
    task: String,
}

impl<'a> Encoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, spec: &TaskSpec, config: EncodeConfig) -> Self {
        Self { tokenizer, format: spec.format(), config, task: spec.name.clone() }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }
    pub fn config(&self) -> &EncodeConfig {
        &self.config
    }

    fn err(&self, ex: &Example, reason: String) -> DataError {
        DataError::Encode { task: self.task.clone(), id: format!("{} ({})", ex.id, ex.origin), reason }
    }

    /// The prompt as text: chat template with the generation prompt, or the plain rendering.
    pub fn prompt_text(&self, ex: &Example) -> Result<String, DataError> {
        match &self.format {
            PromptFormat::Chat => self.tokenizer.apply_chat_template(&ex.messages, true).map_err(|e| self.err(ex, e)),
            PromptFormat::Plain { suffix, .. } => {
                let body: Vec<&str> = ex.messages.iter().map(|m| m.content.as_str()).collect();
                Ok(format!("{}{suffix}", body.join("\n\n")))
            }
        }
    }

    /// The response as text (without EOS): the answer, after the plain-mode prefix if any.
    pub fn response_text(&self, answer: &str) -> String {
        match &self.format {
            PromptFormat::Chat => answer.to_string(),
            PromptFormat::Plain { answer_prefix, .. } => format!("{answer_prefix}{answer}"),
        }
    }

    /// Prompt token ids (untruncated).
    pub fn prompt_ids(&self, ex: &Example) -> Result<Vec<u32>, DataError> {
        let text = self.prompt_text(ex)?;
        let mut ids = Vec::new();
        if self.config.add_bos && matches!(self.format, PromptFormat::Plain { .. }) {
            ids.extend(self.tokenizer.bos_id());
        }
        ids.extend(self.tokenizer.encode(&text).map_err(|e| self.err(ex, e))?);
        Ok(ids)
    }

    /// Response token ids for an answer text, EOS appended.
    pub fn response_ids(&self, answer: &str) -> Result<Vec<u32>, String> {
        let mut ids = self.tokenizer.encode(&self.response_text(answer))?;
        ids.push(self.tokenizer.eos_id());
        Ok(ids)
    }

    /// Encode one example under the length policy.
    pub fn encode(&self, ex: &Example) -> Result<Encoding, DataError> {
        let mut prompt = self.prompt_ids(ex)?;
        if prompt.is_empty() {
            return Err(self.err(ex, "the prompt renders to no tokens".into()));
        }
        let response = self.response_ids(ex.answer.response()).map_err(|e| self.err(ex, e))?;
        let choice_ids = match &ex.answer {
            Answer::Class { choices, .. } => choices.iter().map(|c| self.response_ids(c).map_err(|e| self.err(ex, e))).collect::<Result<Vec<_>, _>>()?,
            Answer::Text(_) => Vec::new(),
        };
        // The longest continuation that will be scored or trained must fit.
        let room_needed = choice_ids.iter().map(Vec::len).chain([response.len()]).max().unwrap_or(0);
        let max_len = self.config.max_len;
        let mut truncated = 0;
        if prompt.len() + room_needed > max_len {
            let fits = self.config.truncation == Truncation::TruncateLeft && room_needed < max_len;
            if !fits {
                return Ok(Encoding::Dropped { id: ex.id.clone(), prompt_tokens: prompt.len(), response_tokens: response.len() });
            }
            truncated = prompt.len() + room_needed - max_len;
            prompt.drain(..truncated);
        }
        let prompt_len = prompt.len();
        prompt.extend(response);
        Ok(Encoding::Kept(EncodedExample { id: ex.id.clone(), ids: prompt, prompt_len, truncated, answer: ex.answer.clone(), choice_ids }))
    }

    /// Encode many examples; too-long ones are dropped or truncated and counted.
    pub fn encode_all(&self, examples: &[Example]) -> Result<(Vec<EncodedExample>, EncodeStats), DataError> {
        let mut stats = EncodeStats { examples: examples.len(), ..EncodeStats::default() };
        let mut out = Vec::with_capacity(examples.len());
        for ex in examples {
            match self.encode(ex)? {
                Encoding::Kept(e) => {
                    stats.kept += 1;
                    stats.truncated += usize::from(e.truncated > 0);
                    stats.prompt_tokens += e.prompt_len;
                    stats.response_tokens += e.len() - e.prompt_len;
                    stats.longest = stats.longest.max(e.len());
                    out.push(e);
                }
                Encoding::Dropped { .. } => stats.dropped += 1,
            }
        }
        Ok((out, stats))
    }
}
