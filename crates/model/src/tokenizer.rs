//! Text <-> token ids, special tokens, and the checkpoint's chat template.

use crate::error::LoadError;
use crate::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Load the tokenizer of a checkpoint: a `.gguf` file's metadata, or a HF directory's
/// `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    if path.is_dir() {
        Tokenizer::from_hf_dir(path)
    } else if path.file_name().is_some_and(|n| n == "tokenizer.json") {
        Tokenizer::from_hf_dir(path.parent().unwrap_or(Path::new(".")))
    } else {
        Tokenizer::from_gguf(&GgufFile::open(path)?)
    }
}

/// One turn of a conversation, as chat templates expect it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A tokenizer plus what generation needs to know about it: special ids and the chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: u32,
    pad_id: u32,
    bos_token: String,
    eos_token: String,
    /// The checkpoint's Jinja chat template, if it ships one.
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Wrap an already-built `tokenizers::Tokenizer`. `eos` must be a token of its vocabulary;
    /// `pad` defaults to `eos` (LLaMA-family checkpoints usually have no pad token).
    pub fn from_parts(inner: tokenizers::Tokenizer, bos: Option<&str>, eos: &str, pad: Option<&str>, chat_template: Option<String>) -> Result<Self, String> {
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| format!("special token `{t}` is not in the vocabulary"));
        let bos_id = bos.map(id).transpose()?;
        let eos_id = id(eos)?;
        let pad_id = pad.map(id).transpose()?.unwrap_or(eos_id);
        Ok(Self { bos_id, eos_id, pad_id, bos_token: bos.unwrap_or("").to_string(), eos_token: eos.to_string(), chat_template, inner })
    }

    /// Read a HF `tokenizer.json` (and, beside it, `tokenizer_config.json` for the special
    /// tokens and chat template when present).
    pub fn from_hf_dir(dir: &Path) -> Result<Self, LoadError> {
        let tok_path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| LoadError::format(&tok_path, "tokenizer.json", e.to_string()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| LoadError::format(&cfg_path, "JSON", e.to_string()))?,
            Err(_) => serde_json::Value::Null,
        };
        // Special tokens are either plain strings or `{"content": "..."}` objects.
        let token = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content")?.as_str().map(str::to_string),
            }
        };
        let eos = token("eos_token").unwrap_or_else(|| "</s>".to_string());
        let bos = token("bos_token");
        let pad = token("pad_token");
        let template = cfg.get("chat_template").and_then(|v| v.as_str()).map(str::to_string);
        Self::from_parts(inner, bos.as_deref(), &eos, pad.as_deref(), template)
            .map_err(|reason| LoadError::field(&cfg_path, "eos_token/bos_token/pad_token", reason))
    }

    /// Build the tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`, byte-level BPE):
    /// BPE(vocab, merges), pre-tokenizer `[Digits(individual), ByteLevel(no prefix space, regex)]`,
    /// ByteLevel decoder, and every control/user-defined token added as a special token.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, LoadError> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper};
        let path = &file.path;
        let field = |key: &str, reason: &str| LoadError::field(path, key, reason);
        let model = file.get_str("tokenizer.ggml.model")?.ok_or_else(|| field("tokenizer.ggml.model", "missing"))?;
        if model != "gpt2" {
            return Err(field("tokenizer.ggml.model", &format!("`{model}` tokenizers are not supported (only byte-level BPE, `gpt2`)")));
        }
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| field("tokenizer.ggml.tokens", "missing"))?;
        let merges = file.get_str_array("tokenizer.ggml.merges")?.ok_or_else(|| field("tokenizer.ggml.merges", "missing"))?;
        let types = file.get_int_array("tokenizer.ggml.token_type")?.unwrap_or_default();
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(field("tokenizer.ggml.token_type", &format!("has {} entries for {} tokens", types.len(), tokens.len())));
        }
        // `smollm`: every digit on its own, then the GPT-2 byte-level regex; `gpt-2`: the regex
        // alone. Older files have no `pre` key; they are read the SmolLM way.
        let split_digits = match file.get_str("tokenizer.ggml.pre")? {
            None | Some("smollm") => true,
            Some("gpt-2") | Some("gpt2") => false,
            Some(other) => return Err(field("tokenizer.ggml.pre", &format!("pre-tokenizer `{other}` is not supported (supported: smollm, gpt-2)"))),
        };
        // A token listed twice keeps its first id (later duplicates are unreachable anyway).
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.to_string()).or_insert(i as u32);
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| field("tokenizer.ggml.merges", &format!("entry {i} `{m}` is not two space-separated tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| field("tokenizer.ggml.merges", &e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true));
        inner.with_pre_tokenizer(Some(if split_digits {
            Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level])
        } else {
            Sequence::new(vec![byte_level])
        }));
        inner.with_decoder(Some(ByteLevel::default()));
        // Type 3 = control, 4 = user-defined: matched whole in text, never split by BPE.
        let special: Vec<tokenizers::AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == 3 || t == 4)
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(special).map_err(|e| field("tokenizer.ggml.token_type", &e.to_string()))?;
        let token = |key: &str| -> Result<Option<&str>, LoadError> {
            match file.get_u64(key)? {
                None => Ok(None),
                Some(id) => tokens.get(id as usize).copied().map(Some).ok_or_else(|| field(key, &format!("id {id} is outside the vocabulary"))),
            }
        };
        let eos = token("tokenizer.ggml.eos_token_id")?.ok_or_else(|| field("tokenizer.ggml.eos_token_id", "missing"))?;
        let bos = token("tokenizer.ggml.bos_token_id")?;
        let pad = token("tokenizer.ggml.padding_token_id")?;
        let template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
        Self::from_parts(inner, bos, eos, pad, template).map_err(|reason| field("tokenizer.ggml", &reason))
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) are parsed
    /// as their ids; no BOS is added (chat templates and callers add what they need).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// Text of `ids`; special tokens are kept when `skip_special` is false.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        self.inner.decode(ids, skip_special).map_err(|e| e.to_string())
    }

    /// Render `messages` with the checkpoint's chat template (a real Jinja engine).
    /// `add_generation_prompt` appends the assistant-turn header so the model answers next.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, String> {
        let template = self.chat_template.as_deref().ok_or("this tokenizer has no chat template")?;
        render_chat_template(template, messages, add_generation_prompt, &self.bos_token, &self.eos_token)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Render a HF-style Jinja chat template.
pub fn render_chat_template(template: &str, messages: &[ChatMessage], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    // HF templates call python-style string methods (`.strip()`, `.startswith()`).
    env.set_unknown_method_callback(minijinja_contrib_pycompat);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| format!("chat template does not parse: {e}"))?;
    let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| format!("chat template failed to render: {e}"))
}

/// The handful of Python `str` methods chat templates use, for minijinja.
fn minijinja_contrib_pycompat(
    _state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    use minijinja::{Error, ErrorKind, Value};
    let s = value.as_str().ok_or_else(|| Error::new(ErrorKind::UnknownMethod, format!("no method {method}")))?;
    let arg = |i: usize| args.get(i).and_then(|v| v.as_str()).unwrap_or("");
    Ok(match method {
        "strip" => Value::from(s.trim()),
        "lstrip" => Value::from(s.trim_start()),
        "rstrip" => Value::from(s.trim_end()),
        "startswith" => Value::from(s.starts_with(arg(0))),
        "endswith" => Value::from(s.ends_with(arg(0))),
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        _ => return Err(Error::new(ErrorKind::UnknownMethod, format!("str has no method {method}"))),
    })
}
