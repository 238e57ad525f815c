//! GGUF (v2/v3) reader: metadata, tensor directory, and dequantisation to f32.
//!
//! Every length and offset read from the file is checked against the file size before it is
//! used, so a truncated or corrupt file is an error naming the file, never a panic or a huge
//! allocation.

use crate::config::LlamaConfig;
use crate::error::LoadError;
use crate::weights::{HostTensor, WeightMap};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// Nesting limit for arrays of arrays (the format allows them; nobody nests deeply).
const MAX_ARRAY_DEPTH: usize = 4;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: usize = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

/// The ggml tensor types this reader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }
    /// (values per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// The ggml name of a type id (`Q6_K`, ...), for messages; `?` for ids ggml does not define.
pub fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("?")
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Row-major shape (GGUF stores the fastest-varying dimension first; this is reversed).
    pub shape: Vec<usize>,
    /// The raw ggml type id, kept so an unsupported type can be named when it is read.
    pub ggml_type: u32,
    /// Absolute offset of the data in the file.
    pub offset: usize,
}

/// An opened GGUF file: metadata and tensor directory; tensor data is read on demand.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data: memmap2::Mmap,
}

/// An f32 metadata value as the f64 with the same shortest decimal form, so a converter's
/// `1e-5` (stored as f32 0.0000099999997) reads back as `1e-5`, not `9.999999747378752e-6`.
fn widen_f32(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> LoadError {
        LoadError::format(self.path, "GGUF", reason)
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], LoadError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.err(format!("file ends inside {what} (offset {}, {} bytes wanted)", self.pos, n)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, LoadError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A count that must be satisfiable by the bytes left, at `min_size` bytes per element.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, LoadError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(self.err(format!("{what} claims {n} elements but only {left} bytes remain")));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<MetaValue, LoadError> {
        Ok(match kind {
            0 => MetaValue::UInt(self.u8(key)? as u64),
            1 => MetaValue::Int(self.u8(key)? as i8 as i64),
            2 => MetaValue::UInt(self.u16(key)? as u64),
            3 => MetaValue::Int(self.u16(key)? as i16 as i64),
            4 => MetaValue::UInt(self.u32(key)? as u64),
            5 => MetaValue::Int(self.u32(key)? as i32 as i64),
            6 => MetaValue::Float(widen_f32(f32::from_bits(self.u32(key)?))),
            7 => MetaValue::Bool(self.u8(key)? != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 if depth < MAX_ARRAY_DEPTH => {
                let elem = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64(key)?),
            11 => MetaValue::Int(self.u64(key)? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64(key)?)),
            9 => return Err(self.err(format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"))),
            other => return Err(self.err(format!("metadata `{key}` has unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open and index a GGUF file (v2 or v3, little-endian). Every tensor's data range is
    /// checked to lie inside the file here; the data itself is read by [`GgufFile::tensor_f32`].
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
        if file.metadata().map_err(|e| LoadError::io(path, e))?.is_dir() {
            return Err(LoadError::format(path, "GGUF", "is a directory, not a GGUF file"));
        }
        // SAFETY: read-only mapping, read only through bounds-checked slices. As with any mmap,
        // another process truncating the file while it is mapped would fault (SIGBUS);
        // checkpoints are not rewritten while being loaded.
        let data = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        let mut c = Cursor { bytes: &data, pos: 0, path };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(c.err(format!("bad magic {:?} (not a GGUF file)", String::from_utf8_lossy(magic))));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            let reason = if version == 1 {
                "unsupported version 1 (32-bit lengths; re-convert the model)".to_string()
            } else if (2..=3).contains(&version.swap_bytes()) {
                "big-endian GGUF files are not supported".to_string()
            } else {
                format!("unsupported version {version} (2 and 3 are supported)")
            };
            return Err(c.err(reason));
        }
        // Minimum encoded sizes: a tensor info is name length + n_dims + type + offset; a
        // metadata entry is key length + value type + one byte of value.
        let n_tensors = c.count("tensor count", 8 + 4 + 4 + 8)?;
        let n_meta = c.count("metadata count", 8 + 4 + 1)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(LoadError::field(path, &key, "duplicate metadata key"));
            }
        }
        let mut infos = Vec::with_capacity(n_tensors);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let what = format!("tensor `{name}`");
            let n_dims = c.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(c.err(format!("{what} has {n_dims} dimensions (at most {MAX_DIMS})")));
            }
            let mut shape = Vec::with_capacity(n_dims);
            let mut n_elems: u64 = 1;
            for _ in 0..n_dims {
                let d = c.u64(&what)?;
                n_elems = n_elems
                    .checked_mul(d)
                    .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
                    .ok_or_else(|| c.err(format!("{what}: element count overflows (dims {shape:?} then {d})")))?;
                shape.push(d as usize);
            }
            shape.reverse();
            let ggml_type = c.u32(&what)?;
            let offset = c.u64(&what)?;
            if !seen.insert(name.clone()) {
                return Err(c.err(format!("{what} appears twice")));
            }
            infos.push((name, shape, ggml_type, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(MetaValue::UInt(a)) if a.is_power_of_two() && *a <= 1 << 30 => *a as usize,
            Some(v) => return Err(LoadError::field(path, "general.alignment", format!("must be a power of two, found {v:?}"))),
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, ggml_type, offset) in infos {
            let offset = usize::try_from(offset).ok().and_then(|o| data_start.checked_add(o)).filter(|&o| o <= data.len()).ok_or_else(|| {
                c.err(format!("tensor `{name}`: data offset {offset} (data section at {data_start}) points past the end of the file ({} bytes)", data.len()))
            })?;
            tensors.insert(name, TensorInfo { shape, ggml_type, offset });
        }
        let file = Self { path: path.to_path_buf(), version, metadata, tensors, data };
        for (name, info) in &file.tensors {
            if let Some(ty) = GgmlType::from_id(info.ggml_type) {
                file.data_range(name, info, ty)?;
            }
        }
        Ok(file)
    }

    /// The byte range of a tensor of a supported type, checked to lie inside the file.
    fn data_range(&self, name: &str, info: &TensorInfo, ty: GgmlType) -> Result<std::ops::Range<usize>, LoadError> {
        let bad = |reason: String| LoadError::format(&self.path, "GGUF", format!("tensor `{name}`: {reason}"));
        let (per_block, block_bytes) = ty.block();
        // Blocks run along the fastest-varying (last row-major) dimension.
        let row = info.shape.last().copied().unwrap_or(1);
        if row % per_block != 0 {
            return Err(bad(format!("rows of {row} values are not a whole number of {per_block}-value {ty:?} blocks")));
        }
        let n: usize = info.shape.iter().product();
        let len = (n / per_block).checked_mul(block_bytes).ok_or_else(|| bad("data size overflows".into()))?;
        info.offset
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .map(|end| info.offset..end)
            .ok_or_else(|| bad(format!("{ty:?} data [{}, +{len}) lies past the end of the file ({} bytes; truncated?)", info.offset, self.data.len())))
    }

    fn field_err(&self, key: &str, reason: &str) -> LoadError {
        LoadError::field(&self.path, key, reason)
    }
    /// An integer metadata value of any width.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::UInt(v)) => Ok(Some(*v)),
            Some(MetaValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(_) => Err(self.field_err(key, "expected a non-negative integer")),
        }
    }
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Float(v)) => Ok(Some(*v)),
            Some(MetaValue::UInt(v)) => Ok(Some(*v as f64)),
            Some(MetaValue::Int(v)) => Ok(Some(*v as f64)),
            Some(_) => Err(self.field_err(key, "expected a number")),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Str(s)) => Ok(Some(s)),
            Some(_) => Err(self.field_err(key, "expected a string")),
        }
    }
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    MetaValue::Str(s) => Ok(s.as_str()),
                    _ => Err(self.field_err(key, "expected an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.field_err(key, "expected an array")),
        }
    }
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .map(|v| match v {
                    MetaValue::Int(i) => Ok(*i),
                    MetaValue::UInt(u) => i64::try_from(*u).map_err(|_| self.field_err(key, "integer too large")),
                    _ => Err(self.field_err(key, "expected an array of integers")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.field_err(key, "expected an array")),
        }
    }
    /// An integer metadata value of any width that fits an i64.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Int(v)) => Ok(Some(*v)),
            Some(MetaValue::UInt(v)) => i64::try_from(*v).map(Some).map_err(|_| self.field_err(key, "integer too large")),
            Some(_) => Err(self.field_err(key, "expected an integer")),
        }
    }
    /// Same as [`GgufFile::get_int_array`].
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, LoadError> {
        self.get_int_array(key)
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.field_err(key, "expected a bool")),
        }
    }
    fn require_u64(&self, key: &str) -> Result<u64, LoadError> {
        self.get_u64(key)?.ok_or_else(|| self.field_err(key, "missing"))
    }

    /// Read and dequantise one tensor to f32. The shape is row-major (the GGUF dims reversed, so
    /// a GGUF `[in, out]` projection comes back `[out, in]`); no row permutation is applied.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, LoadError> {
        let info = self.tensors.get(name).ok_or_else(|| LoadError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let ty = GgmlType::from_id(info.ggml_type).ok_or_else(|| LoadError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: name.into(),
            dtype: format!("ggml type {} ({}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)", info.ggml_type, ggml_type_name(info.ggml_type)),
        })?;
        let range = self.data_range(name, info, ty)?;
        Ok(HostTensor { shape: info.shape.clone(), data: dequantize(ty, &self.data[range]) })
    }
}

/// Open a GGUF file: same as [`GgufFile::open`].
pub fn read_gguf(path: &Path) -> Result<GgufFile, LoadError> {
    GgufFile::open(path)
}

/// Dequantise whole blocks of `ty` to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(h).collect(),
        GgmlType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|blk| {
                let d = h(&blk[0..2]);
                blk[2..34].iter().map(move |&q| d * (q as i8) as f32)
            })
            .collect(),
        // Low nibbles hold values 0..16 of the block, high nibbles values 16..32.
        GgmlType::Q4_0 => bytes
            .chunks_exact(18)
            .flat_map(|blk| {
                let d = h(&blk[0..2]);
                let q = &blk[2..18];
                let lo = q.iter().map(move |&b| d * ((b & 0x0F) as i32 - 8) as f32);
                let hi = q.iter().map(move |&b| d * ((b >> 4) as i32 - 8) as f32);
                lo.chain(hi)
            })
            .collect(),
        GgmlType::Q4_1 => bytes
            .chunks_exact(20)
            .flat_map(|blk| {
                let (d, m) = (h(&blk[0..2]), h(&blk[2..4]));
                let q = &blk[4..20];
                let lo = q.iter().map(move |&b| d * (b & 0x0F) as f32 + m);
                let hi = q.iter().map(move |&b| d * (b >> 4) as f32 + m);
                lo.chain(hi)
            })
            .collect(),
    }
}

/// Undo llama.cpp's Q/K row permutation so RoPE rotates halves (HF convention). The converter
/// mapped HF row `(head, i, j)` (i in 0..2, j in 0..hd/2) to GGUF row `(head, j, i)`.
///
/// Panics unless `t` is 2-D with `n_heads * hd` rows, `hd` even (callers check the shape).
pub fn unpermute_rows(t: &HostTensor, n_heads: usize) -> HostTensor {
    assert_eq!(t.shape.len(), 2, "unpermute_rows: expected a 2-D tensor");
    let (rows, cols) = (t.shape[0], t.shape[1]);
    assert!(
        n_heads > 0 && rows.is_multiple_of(n_heads) && (rows / n_heads).is_multiple_of(2),
        "unpermute_rows: {rows} rows do not split into {n_heads} heads of even size"
    );
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut data = vec![0.0f32; t.data.len()];
    for head in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = head * hd + i * half + j;
                let gguf_row = head * hd + j * 2 + i;
                data[hf_row * cols..(hf_row + 1) * cols].copy_from_slice(&t.data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    HostTensor { shape: t.shape.clone(), data }
}

/// HF name of a llama.cpp tensor name, if it is one the model knows.
pub fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    })
}

/// The model shape from GGUF metadata.
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig, LoadError> {
    let arch = file.get_str("general.architecture")?.ok_or_else(|| file.field_err("general.architecture", "missing"))?;
    if arch != "llama" {
        return Err(file.field_err("general.architecture", &format!("`{arch}` is not a LLaMA-architecture model")));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.require_u64(&key("embedding_length"))? as usize;
    let heads = file.require_u64(&key("attention.head_count"))? as usize;
    let kv_heads = file.get_u64(&key("attention.head_count_kv"))?.map_or(heads, |v| v as usize);
    if heads == 0 {
        return Err(file.field_err(&key("attention.head_count"), "must be positive"));
    }
    if let Some(kind) = file.get_str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(file.field_err(&key("rope.scaling.type"), &format!("RoPE scaling `{kind}` is not supported")));
        }
    }
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(v) => v as usize,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(file.field_err(&key("attention.key_length"), &format!("missing, and embedding_length {hidden} is not a multiple of head_count {heads}")))
        }
    };
    let vocab = match file.get_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => match file.get_str_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => file
                .tensors
                .get("token_embd.weight")
                .filter(|t| t.shape.len() == 2)
                .map(|t| t.shape[0])
                .ok_or_else(|| file.field_err(&key("vocab_size"), "missing (and no tokenizer.ggml.tokens or 2-D token_embd.weight to infer it from)"))?,
        },
    };
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.require_u64(&key("feed_forward_length"))? as usize,
        num_layers: file.require_u64(&key("block_count"))? as usize,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: file.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
        max_position_embeddings: file.get_u64(&key("context_length"))?.unwrap_or(4096) as usize,
        tie_word_embeddings: !file.tensors.contains_key("output.weight"),
    };
    config.validate().map_err(|reason| LoadError::format(&file.path, "GGUF", format!("inconsistent `{arch}` hyper-parameters: {reason}")))?;
    Ok(config)
}

/// Read a LLaMA GGUF into its config and f32 weights with HF names and HF Q/K row order.
/// Tensors the model does not know keep their GGUF names, so the loader reports them unused.
pub fn load_llama_gguf(path: &Path) -> Result<(LlamaConfig, WeightMap), LoadError> {
    let file = GgufFile::open(path)?;
    let config = llama_config(&file)?;
    let mut tensors = BTreeMap::new();
    for name in file.tensors.keys() {
        let mut t = file.tensor_f32(name)?;
        let mapped = hf_name(name);
        let heads = match mapped.as_deref() {
            Some(h) if h.ends_with(".q_proj.weight") => Some(config.num_heads),
            Some(h) if h.ends_with(".k_proj.weight") => Some(config.num_kv_heads),
            _ => None,
        };
        let hf = mapped.unwrap_or_else(|| name.clone());
        if let Some(heads) = heads {
            // The un-permutation needs the exact shape; a wrong one would scramble silently.
            let expected = vec![heads * config.head_dim, config.hidden_size];
            if t.shape != expected {
                return Err(LoadError::ShapeMismatch { path: path.to_path_buf(), tensor: hf, found: t.shape, expected });
            }
            t = unpermute_rows(&t, heads);
        }
        if tensors.contains_key(&hf) {
            return Err(LoadError::format(path, "GGUF", format!("tensor `{name}` maps to `{hf}`, which another tensor already has")));
        }
        tensors.insert(hf, t);
    }
    Ok((config, WeightMap { source: path.to_path_buf(), tensors }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut blk = f16b(0.5).to_vec();
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &blk);
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[16], 0.0);
        assert_eq!(v[31], 7.5);
        // The i8 extremes, and two blocks in a row.
        let mut two = f16b(0.25).to_vec();
        two.extend([127u8, 0x80]);
        two.extend([0u8; 30]);
        two.extend(f16b(-2.0));
        two.extend([3u8; 32]);
        let v = dequantize(GgmlType::Q8_0, &two);
        assert_eq!((v.len(), v[0], v[1], v[2], v[32], v[63]), (64, 31.75, -32.0, 0.0, -6.0, -6.0));
    }

    #[test]
    fn q4_1_and_q4_0_blocks_by_hand() {
        // byte j = low nibble j%16, high nibble 15-j%16
        let q: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut blk = f16b(2.0).to_vec();
        blk.extend(f16b(-1.0));
        blk.extend(&q);
        let v = dequantize(GgmlType::Q4_1, &blk);
        assert_eq!(v[0], -1.0); // 2*0 - 1
        assert_eq!(v[5], 9.0); // 2*5 - 1
        assert_eq!(v[16], 29.0); // 2*15 - 1
        assert_eq!(v[31], -1.0); // 2*0 - 1
        let mut blk0 = f16b(0.25).to_vec();
        blk0.extend(&q);
        let v = dequantize(GgmlType::Q4_0, &blk0);
        assert_eq!(v[0], -2.0); // 0.25*(0-8)
        assert_eq!(v[16], 1.75); // 0.25*(15-8)
        for j in 0..16 {
            assert_eq!(v[j], 0.25 * (j as f32 - 8.0));
            assert_eq!(v[j + 16], 0.25 * (7.0 - j as f32));
        }
        let v = dequantize(GgmlType::F16, &[f16b(1.5), f16b(-3.0), f16b(65504.0)].concat());
        assert_eq!(v, vec![1.5, -3.0, 65504.0]);
    }

    #[test]
    fn bf16_and_f32_by_hand() {
        // bf16 is the top half of the f32 bits: 1.0 = 0x3F80, -2.0 = 0xC000, 3.140625 = 0x4049.
        let b: Vec<u8> = [0x3F80u16, 0xC000, 0x4049].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::BF16, &b), vec![1.0, -2.0, 3.140625]);
        assert_eq!(dequantize(GgmlType::F32, &f32_bytes(&[1.5, -7.0])), vec![1.5, -7.0]);
    }

    /// llama.cpp's `permute`: `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(w.shape)`,
    /// written with explicit 4-D indices: source `[n_head, 2, hd/2, cols]`, destination
    /// `[n_head, hd/2, 2, cols]`.
    fn llama_cpp_permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
        let hd = w.len() / cols / n_head;
        let half = hd / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for i in 0..2 {
                for j in 0..half {
                    for c in 0..cols {
                        out[((h * half + j) * 2 + i) * cols + c] = w[((h * 2 + i) * half + j) * cols + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // By hand: one head, hd = 4, one column: HF rows [0,1,2,3] are stored as [0,2,1,3];
        // hd = 8 interleaves the halves 0..4 and 4..8.
        assert_eq!(llama_cpp_permute(&[0.0, 1.0, 2.0, 3.0], 1, 1), vec![0.0, 2.0, 1.0, 3.0]);
        let back = unpermute_rows(&HostTensor { shape: vec![4, 1], data: vec![0.0, 2.0, 1.0, 3.0] }, 1);
        assert_eq!(back.data, vec![0.0, 1.0, 2.0, 3.0]);
        let eight: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(llama_cpp_permute(&eight, 1, 1), vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
        for (heads, hd, cols) in [(3, 8, 2), (9, 64, 3), (3, 64, 5), (2, 2, 1)] {
            let hf = HostTensor { shape: vec![heads * hd, cols], data: (0..heads * hd * cols).map(|v| v as f32).collect() };
            let gguf = llama_cpp_permute(&hf.data, heads, cols);
            assert!(hd == 2 || gguf != hf.data, "hd > 2 moves rows");
            let back = unpermute_rows(&HostTensor { shape: hf.shape.clone(), data: gguf }, heads);
            assert_eq!(back, hf, "heads {heads} hd {hd} cols {cols}");
        }
    }

    /// Encode one metadata value; integers are written as u64/i64, floats as f32.
    fn encode(v: &MetaValue) -> (u32, Vec<u8>) {
        match v {
            MetaValue::UInt(u) => (10, u.to_le_bytes().to_vec()),
            MetaValue::Int(i) => (11, i.to_le_bytes().to_vec()),
            MetaValue::Float(f) => (6, (*f as f32).to_le_bytes().to_vec()),
            MetaValue::Bool(b) => (7, vec![*b as u8]),
            MetaValue::Str(x) => (8, enc_str(x)),
            MetaValue::Array(items) => {
                let elem = items.first().map_or(8, |i| encode(i).0);
                let mut out = elem.to_le_bytes().to_vec();
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| out.extend(encode(i).1));
                (9, out)
            }
        }
    }

    fn enc_str(v: &str) -> Vec<u8> {
        let mut out = (v.len() as u64).to_le_bytes().to_vec();
        out.extend(v.as_bytes());
        out
    }

    type RawTensor<'a> = (&'a str, Vec<usize>, u32, Vec<u8>);

    /// A minimal GGUF v3 writer for tests: metadata as (key, value type, encoded value);
    /// tensors as (name, row-major shape, ggml type, bytes). Each tensor starts on an
    /// `alignment` boundary; nothing follows the last one.
    fn write_raw(meta: &[(&str, u32, Vec<u8>)], tensors: &[RawTensor], alignment: usize) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        for (k, kind, v) in meta {
            out.extend(enc_str(k));
            out.extend(kind.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0usize;
        let mut offsets = vec![];
        for (name, shape, ty, data) in tensors {
            out.extend(enc_str(name));
            out.extend((shape.len() as u32).to_le_bytes());
            shape.iter().rev().for_each(|d| out.extend((*d as u64).to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(alignment) * alignment;
        }
        let start = out.len().div_ceil(alignment) * alignment;
        for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
            out.resize(start + off, 0);
            out.extend(data);
        }
        out.resize(out.len().max(start), 0);
        out
    }

    fn write_gguf(meta: &[(&str, MetaValue)], tensors: &[RawTensor]) -> Vec<u8> {
        let meta: Vec<_> = meta
            .iter()
            .map(|(k, v)| {
                let (kind, bytes) = encode(v);
                (*k, kind, bytes)
            })
            .collect();
        write_raw(&meta, tensors, 32)
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iapt-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn sample() -> Vec<u8> {
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_gguf(
            &[
                ("general.architecture", MetaValue::Str("llama".into())),
                ("x.list", MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("bc".into())])),
            ],
            &[("w", vec![2, 3], 0, f32s), ("odd", vec![32], 6, vec![0; 22])],
        )
    }

    #[test]
    fn written_file_round_trips() {
        let p = temp_file("ok.gguf", &sample());
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(f.get_str_array("x.list").unwrap(), Some(vec!["a", "bc"]));
        let w = f.tensor_f32("w").unwrap();
        assert_eq!(w.shape, vec![2, 3]);
        assert_eq!(w.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let err = f.tensor_f32("odd").unwrap_err().to_string();
        assert!(err.contains("odd") && err.contains("ggml type 6") && err.contains("Q5_0"), "{err}");
        assert!(matches!(f.tensor_f32("nope"), Err(LoadError::MissingTensor { .. })));
    }

    #[test]
    fn metadata_of_every_type_round_trips() {
        let le = |b: &[u8]| b.to_vec();
        let arr = |elem: u32, items: &[Vec<u8>]| {
            let mut out = elem.to_le_bytes().to_vec();
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| out.extend(i));
            out
        };
        let meta = vec![
            ("t.u8", 0, vec![200u8]),
            ("t.i8", 1, le(&(-5i8).to_le_bytes())),
            ("t.u16", 2, le(&60000u16.to_le_bytes())),
            ("t.i16", 3, le(&(-300i16).to_le_bytes())),
            ("t.u32", 4, le(&4_000_000_000u32.to_le_bytes())),
            ("t.i32", 5, le(&(-7i32).to_le_bytes())),
            ("t.f32", 6, le(&1e-5f32.to_le_bytes())),
            ("t.bool", 7, vec![1]),
            ("t.str", 8, enc_str("héllo wörld")),
            ("t.ints", 9, arr(5, &[le(&3i32.to_le_bytes()), le(&(-1i32).to_le_bytes())])),
            ("t.strs", 9, arr(8, &[enc_str("a b"), enc_str("")])),
            ("t.nested", 9, arr(9, &[arr(0, &[vec![1]]), arr(0, &[vec![2]])])),
            ("t.empty", 9, arr(4, &[])),
            ("t.u64", 10, le(&(1u64 << 40).to_le_bytes())),
            ("t.i64", 11, le(&(-(1i64 << 40)).to_le_bytes())),
            ("t.f64", 12, le(&0.125f64.to_le_bytes())),
        ];
        let f = GgufFile::open(&temp_file("types.gguf", &write_raw(&meta, &[], 32))).unwrap();
        use MetaValue::*;
        let m = &f.metadata;
        assert_eq!(m.len(), meta.len());
        assert_eq!(m["t.u8"], UInt(200));
        assert_eq!(m["t.i8"], Int(-5));
        assert_eq!(m["t.u16"], UInt(60000));
        assert_eq!(m["t.i16"], Int(-300));
        assert_eq!(m["t.u32"], UInt(4_000_000_000));
        assert_eq!(m["t.i32"], Int(-7));
        assert_eq!(m["t.f32"], Float(1e-5), "f32 widened via its shortest decimal");
        assert_eq!(m["t.bool"], Bool(true));
        assert_eq!(m["t.str"], Str("héllo wörld".into()));
        assert_eq!(m["t.nested"], Array(vec![Array(vec![UInt(1)]), Array(vec![UInt(2)])]));
        assert_eq!(m["t.empty"], Array(vec![]));
        assert_eq!(m["t.u64"], UInt(1 << 40));
        assert_eq!(m["t.i64"], Int(-(1 << 40)));
        assert_eq!(m["t.f64"], Float(0.125));
        // Getters accept any integer width; wrong types are errors naming the key.
        assert_eq!(f.get_u64("t.u8").unwrap(), Some(200));
        assert_eq!(f.get_u64("t.u32").unwrap(), Some(4_000_000_000));
        assert_eq!(f.get_i64("t.i16").unwrap(), Some(-300));
        assert!(f.get_u64("t.i32").is_err(), "a negative value is not a u64");
        assert_eq!(f.get_f64("t.f32").unwrap(), Some(1e-5));
        assert_eq!(f.get_f64("t.u16").unwrap(), Some(60000.0));
        assert_eq!(f.get_bool("t.bool").unwrap(), Some(true));
        assert_eq!(f.get_i64_array("t.ints").unwrap(), Some(vec![3, -1]));
        assert_eq!(f.get_str_array("t.strs").unwrap(), Some(vec!["a b", ""]));
        assert_eq!(f.get_u64("absent").unwrap(), None);
        let e = f.get_str("t.u8").unwrap_err().to_string();
        assert!(e.contains("types.gguf") && e.contains("t.u8"), "{e}");
        assert!(f.get_str_array("t.ints").is_err());
    }

    /// Tensors of every supported type.
    fn all_types() -> Vec<u8> {
        let mut q8 = f16b(1.0).to_vec();
        q8.extend((0..32).map(|i| i as u8));
        let mut q40 = f16b(1.0).to_vec();
        q40.extend([0x98u8; 16]); // lo 8 -> 0, hi 9 -> 1
        let mut q41 = f16b(1.0).to_vec();
        q41.extend(f16b(10.0));
        q41.extend([0x21u8; 16]); // lo 1 -> 11, hi 2 -> 12
        let bf: Vec<u8> = [0x3F80u16, 0xC000].iter().flat_map(|x| x.to_le_bytes()).collect();
        write_gguf(
            &[("general.architecture", MetaValue::Str("test".into()))],
            &[
                ("a.f32", vec![2, 3], 0, f32_bytes(&[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])),
                ("b.f16", vec![3], 1, [f16b(0.5), f16b(1.5), f16b(-3.0)].concat()),
                ("c.bf16", vec![2], 30, bf),
                ("d.q8", vec![1, 32], 8, q8),
                ("e.q40", vec![32], 2, q40),
                ("f.q41", vec![1, 32], 3, q41),
            ],
        )
    }

    #[test]
    fn tensors_of_every_supported_type_round_trip() {
        let f = GgufFile::open(&temp_file("types-t.gguf", &all_types())).unwrap();
        assert_eq!(f.tensor_f32("a.f32").unwrap(), HostTensor { shape: vec![2, 3], data: vec![-2.5, -1.5, -0.5, 0.5, 1.5, 2.5] });
        assert_eq!(f.tensor_f32("b.f16").unwrap().data, vec![0.5, 1.5, -3.0]);
        assert_eq!(f.tensor_f32("c.bf16").unwrap().data, vec![1.0, -2.0]);
        let q8 = f.tensor_f32("d.q8").unwrap();
        assert_eq!((q8.shape, q8.data[31]), (vec![1, 32], 31.0));
        let q40 = f.tensor_f32("e.q40").unwrap().data;
        assert_eq!((&q40[..16], &q40[16..]), (&[0.0; 16][..], &[1.0; 16][..]));
        let q41 = f.tensor_f32("f.q41").unwrap().data;
        assert_eq!((&q41[..16], &q41[16..]), (&[11.0; 16][..], &[12.0; 16][..]));
        // A non-default alignment is honoured.
        let meta = [("general.alignment", 4u32, 64u32.to_le_bytes().to_vec())];
        let bytes = write_raw(&meta, &[("x", vec![3], 0, f32_bytes(&[1.0, 2.0, 3.0])), ("y", vec![1], 0, f32_bytes(&[4.0]))], 64);
        let f = GgufFile::open(&temp_file("align64.gguf", &bytes)).unwrap();
        assert_eq!(f.tensor_f32("y").unwrap().data, vec![4.0]);
        assert_eq!(f.tensors["x"].offset % 64, 0);
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file() {
        let bytes = all_types();
        for cut in 0..bytes.len() {
            let p = temp_file("cut.gguf", &bytes[..cut]);
            let err = match GgufFile::open(&p) {
                Err(e) => e.to_string(),
                Ok(f) => panic!("cut at {cut} of {} was accepted: {:?}", bytes.len(), f.tensors.keys().collect::<Vec<_>>()),
            };
            assert!(err.contains("cut.gguf"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn truncated_or_corrupt_files_are_errors_naming_the_file() {
        let bytes = sample();
        for cut in [0, 3, 10, 30, 60, bytes.len() - 64, bytes.len() - 50] {
            let p = temp_file(&format!("cut{cut}.gguf"), &bytes[..cut]);
            let result = GgufFile::open(&p).and_then(|f| f.tensor_f32("w"));
            let err = result.err().unwrap_or_else(|| panic!("cut at {cut} was accepted")).to_string();
            assert!(err.contains(&format!("cut{cut}.gguf")), "{err}");
        }
        let mut bad = sample();
        bad[0] = b'X';
        let err = GgufFile::open(&temp_file("magic.gguf", &bad)).err().unwrap().to_string();
        assert!(err.contains("magic.gguf") && err.contains("magic"), "{err}");
        let mut v1 = sample();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        let err = GgufFile::open(&temp_file("v1.gguf", &v1)).err().unwrap().to_string();
        assert!(err.contains("v1.gguf") && err.contains("version 1"), "{err}");
        // a tensor count that cannot fit in the file
        let mut huge = sample();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::open(&temp_file("huge.gguf", &huge)).is_err());
        let err = GgufFile::open(&std::env::temp_dir().join("iapt-no-such-file.gguf")).err().unwrap().to_string();
        assert!(err.contains("iapt-no-such-file.gguf"), "{err}");
    }

    #[test]
    fn corrupt_lengths_are_errors_not_allocations() {
        // The first key's length is u64::MAX.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend([0u8; 16]);
        let e = GgufFile::open(&temp_file("keylen.gguf", &b)).err().unwrap().to_string();
        assert!(e.contains("keylen.gguf"), "{e}");
        // An array claiming 2^60 u64 elements.
        let mut arr = 10u32.to_le_bytes().to_vec();
        arr.extend((1u64 << 60).to_le_bytes());
        arr.extend(7u64.to_le_bytes());
        let e = GgufFile::open(&temp_file("arr.gguf", &write_raw(&[("big.array", 9, arr)], &[], 32))).err().unwrap().to_string();
        assert!(e.contains("arr.gguf") && e.contains("big.array"), "{e}");
        // Dims whose product overflows, and dims that fit but need far more data than the file has.
        let e = GgufFile::open(&temp_file("dims.gguf", &write_raw(&[], &[("huge", vec![1 << 40, 1 << 40], 0, vec![])], 32))).err().unwrap().to_string();
        assert!(e.contains("`huge`") && e.contains("overflows"), "{e}");
        let e = GgufFile::open(&temp_file("big.gguf", &write_raw(&[], &[("big", vec![1 << 20, 1 << 20], 0, vec![0; 64])], 32))).err().unwrap().to_string();
        assert!(e.contains("`big`") && e.contains("past the end"), "{e}");
        // A bad alignment and a duplicate key.
        let e =
            GgufFile::open(&temp_file("al.gguf", &write_raw(&[("general.alignment", 4, 24u32.to_le_bytes().to_vec())], &[], 32))).err().unwrap().to_string();
        assert!(e.contains("general.alignment"), "{e}");
        let dup = [("k", 4u32, 1u32.to_le_bytes().to_vec()), ("k", 4u32, 2u32.to_le_bytes().to_vec())];
        let e = GgufFile::open(&temp_file("dup.gguf", &write_raw(&dup, &[], 32))).err().unwrap().to_string();
        assert!(e.contains("`k`") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn a_tensor_offset_past_eof_names_the_tensor() {
        let mut bytes = all_types();
        // The offset field of `d.q8`: after its name, n_dims, two dims and the type.
        let at = bytes.windows(4).position(|w| w == b"d.q8").unwrap() + 4 + 4 + 2 * 8 + 4;
        bytes[at..at + 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
        let e = GgufFile::open(&temp_file("pastend.gguf", &bytes)).err().unwrap().to_string();
        assert!(e.contains("pastend.gguf") && e.contains("`d.q8`") && e.contains("past the end"), "{e}");
        // Starting inside the file but running past its end.
        let bytes = all_types();
        let e = GgufFile::open(&temp_file("short.gguf", &bytes[..bytes.len() - 1])).err().unwrap().to_string();
        assert!(e.contains("`f.q41`") && e.contains("past the end"), "{e}");
    }

    #[test]
    fn an_unsupported_type_names_the_tensor() {
        let f = GgufFile::open(&temp_file("q6k.gguf", &write_raw(&[], &[("blk.0.attn_q.weight", vec![2, 256], 14, vec![0; 420])], 32))).unwrap();
        match f.tensor_f32("blk.0.attn_q.weight").unwrap_err() {
            LoadError::UnsupportedDtype { path, tensor, dtype } => {
                assert!(path.ends_with("q6k.gguf"));
                assert_eq!(tensor, "blk.0.attn_q.weight");
                assert!(dtype.contains("Q6_K"), "{dtype}");
            }
            other => panic!("expected UnsupportedDtype, got {other}"),
        }
        // A quantised tensor whose rows are not whole blocks.
        let e = GgufFile::open(&temp_file("ragged.gguf", &write_raw(&[], &[("ragged", vec![2, 16], 8, vec![0; 34])], 32))).err().unwrap().to_string();
        assert!(e.contains("`ragged`") && e.contains("block"), "{e}");
    }

    #[test]
    fn hf_names() {
        let cases = [
            ("token_embd.weight", Some("model.embed_tokens.weight")),
            ("output_norm.weight", Some("model.norm.weight")),
            ("output.weight", Some("lm_head.weight")),
            ("blk.0.attn_norm.weight", Some("model.layers.0.input_layernorm.weight")),
            ("blk.12.attn_q.weight", Some("model.layers.12.self_attn.q_proj.weight")),
            ("blk.3.attn_k.weight", Some("model.layers.3.self_attn.k_proj.weight")),
            ("blk.3.attn_v.weight", Some("model.layers.3.self_attn.v_proj.weight")),
            ("blk.3.attn_output.weight", Some("model.layers.3.self_attn.o_proj.weight")),
            ("blk.29.ffn_norm.weight", Some("model.layers.29.post_attention_layernorm.weight")),
            ("blk.1.ffn_gate.weight", Some("model.layers.1.mlp.gate_proj.weight")),
            ("blk.1.ffn_up.weight", Some("model.layers.1.mlp.up_proj.weight")),
            ("blk.1.ffn_down.weight", Some("model.layers.1.mlp.down_proj.weight")),
            ("rope_freqs.weight", None),
            ("blk.x.attn_q.weight", None),
        ];
        for (g, hf) in cases {
            assert_eq!(hf_name(g).as_deref(), hf, "{g}");
        }
    }

    /// A tiny llama GGUF with `LlamaConfig::tiny()` shapes; Q/K stored with llama.cpp's
    /// permutation of the returned HF-order matrices.
    fn tiny_llama(tied: bool, extra: &[(&str, MetaValue)]) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let c = LlamaConfig::tiny();
        let u = |v: usize| MetaValue::UInt(v as u64);
        let mut meta = vec![
            ("general.architecture", MetaValue::Str("llama".into())),
            ("llama.block_count", u(c.num_layers)),
            ("llama.embedding_length", u(c.hidden_size)),
            ("llama.feed_forward_length", u(c.intermediate_size)),
            ("llama.attention.head_count", u(c.num_heads)),
            ("llama.attention.head_count_kv", u(c.num_kv_heads)),
            ("llama.attention.layer_norm_rms_epsilon", MetaValue::Float(1e-5)),
            ("llama.context_length", u(c.max_position_embeddings)),
            ("llama.vocab_size", u(c.vocab_size)),
        ];
        meta.extend(extra.iter().cloned());
        let d = c.hidden_size;
        let (q_rows, k_rows, ff) = (c.num_heads * c.head_dim, c.kv_dim(), c.intermediate_size);
        let hf_q: Vec<f32> = (0..q_rows * d).map(|x| x as f32).collect();
        let hf_k: Vec<f32> = (0..k_rows * d).map(|x| -(x as f32)).collect();
        let f = |shape: Vec<usize>| {
            let n: usize = shape.iter().product();
            (shape, 0u32, f32_bytes(&(0..n).map(|x| x as f32 * 0.5).collect::<Vec<_>>()))
        };
        let mut names = vec![];
        let mut tensors = vec![];
        let mut push = |name: String, (shape, ty, data): (Vec<usize>, u32, Vec<u8>)| {
            names.push(name);
            tensors.push((shape, ty, data));
        };
        push("token_embd.weight".into(), f(vec![c.vocab_size, d]));
        for l in 0..c.num_layers {
            push(format!("blk.{l}.attn_q.weight"), (vec![q_rows, d], 0, f32_bytes(&llama_cpp_permute(&hf_q, c.num_heads, d))));
            push(format!("blk.{l}.attn_k.weight"), (vec![k_rows, d], 0, f32_bytes(&llama_cpp_permute(&hf_k, c.num_kv_heads, d))));
            push(format!("blk.{l}.attn_v.weight"), f(vec![k_rows, d]));
            push(format!("blk.{l}.attn_output.weight"), f(vec![d, q_rows]));
            push(format!("blk.{l}.attn_norm.weight"), f(vec![d]));
            push(format!("blk.{l}.ffn_norm.weight"), f(vec![d]));
            push(format!("blk.{l}.ffn_gate.weight"), f(vec![ff, d]));
            push(format!("blk.{l}.ffn_up.weight"), f(vec![ff, d]));
            push(format!("blk.{l}.ffn_down.weight"), f(vec![d, ff]));
        }
        push("output_norm.weight".into(), f(vec![d]));
        if !tied {
            push("output.weight".into(), f(vec![c.vocab_size, d]));
        }
        push("rope_freqs.weight".into(), f(vec![c.head_dim / 2]));
        let raw: Vec<RawTensor> = names.iter().zip(tensors).map(|(n, (s, t, b))| (n.as_str(), s, t, b)).collect();
        (write_gguf(&meta, &raw), hf_q, hf_k)
    }

    #[test]
    fn loads_a_tiny_llama_in_hf_naming_and_order() {
        let (bytes, hf_q, hf_k) = tiny_llama(false, &[]);
        let (config, mut w) = load_llama_gguf(&temp_file("tiny.gguf", &bytes)).unwrap();
        let c = LlamaConfig::tiny();
        assert_eq!(config, c);
        let d = c.hidden_size;
        for l in 0..c.num_layers {
            assert_eq!(w.take(&format!("model.layers.{l}.self_attn.q_proj.weight"), &[c.num_heads * c.head_dim, d]).unwrap().data, hf_q);
            assert_eq!(w.take(&format!("model.layers.{l}.self_attn.k_proj.weight"), &[c.kv_dim(), d]).unwrap().data, hf_k);
            w.take(&format!("model.layers.{l}.self_attn.v_proj.weight"), &[c.kv_dim(), d]).unwrap();
            w.take(&format!("model.layers.{l}.self_attn.o_proj.weight"), &[d, c.num_heads * c.head_dim]).unwrap();
            w.take(&format!("model.layers.{l}.input_layernorm.weight"), &[d]).unwrap();
            w.take(&format!("model.layers.{l}.post_attention_layernorm.weight"), &[d]).unwrap();
            w.take(&format!("model.layers.{l}.mlp.gate_proj.weight"), &[c.intermediate_size, d]).unwrap();
            w.take(&format!("model.layers.{l}.mlp.up_proj.weight"), &[c.intermediate_size, d]).unwrap();
            w.take(&format!("model.layers.{l}.mlp.down_proj.weight"), &[d, c.intermediate_size]).unwrap();
        }
        let emb = w.take("model.embed_tokens.weight", &[c.vocab_size, d]).unwrap();
        assert_eq!(emb.data[d + 1], (d + 1) as f32 * 0.5, "row-major [vocab, hidden]");
        w.take("lm_head.weight", &[c.vocab_size, d]).unwrap();
        w.take("model.norm.weight", &[d]).unwrap();
        // Unknown names are kept as they are, so the model loader reports them.
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("rope_freqs.weight"), "{err}");

        // Tied embeddings; head_count_kv / rope base / head_dim defaults.
        let (bytes, _, _) = tiny_llama(true, &[]);
        let f = GgufFile::open(&temp_file("tied.gguf", &bytes)).unwrap();
        let cfg = llama_config(&f).unwrap();
        assert!(cfg.tie_word_embeddings);
        assert_eq!((cfg.rope_theta, cfg.head_dim), (10000.0, 8));
    }

    #[test]
    fn llama_config_errors_are_clear() {
        let bytes = write_gguf(&[("general.architecture", MetaValue::Str("gpt2".into()))], &[]);
        let err = load_llama_gguf(&temp_file("gpt2.gguf", &bytes)).err().unwrap().to_string();
        assert!(err.contains("gpt2.gguf") && err.contains("general.architecture") && err.contains("gpt2"), "{err}");
        let (bytes, _, _) = tiny_llama(false, &[("llama.rope.scaling.type", MetaValue::Str("yarn".into()))]);
        let err = load_llama_gguf(&temp_file("yarn.gguf", &bytes)).err().unwrap().to_string();
        assert!(err.contains("rope.scaling.type") && err.contains("yarn"), "{err}");
        // 4 query heads cannot share 3 KV heads.
        let (bytes, _, _) = tiny_llama(false, &[("llama.attention.key_length", MetaValue::UInt(7))]);
        let err = load_llama_gguf(&temp_file("hd.gguf", &bytes)).err().unwrap().to_string();
        assert!(err.contains("hd.gguf") && err.contains("head_dim"), "{err}");
    }

    #[test]
    fn a_projection_of_the_wrong_shape_is_refused_before_unpermuting() {
        // head_dim 4 instead of 8: K (visited first) should have 2*4 rows but has 16.
        let c = LlamaConfig::tiny();
        let (bytes, _, _) = tiny_llama(false, &[("llama.attention.key_length", MetaValue::UInt(4))]);
        match load_llama_gguf(&temp_file("kshape.gguf", &bytes)).err().unwrap() {
            LoadError::ShapeMismatch { tensor, found, expected, .. } => {
                assert_eq!(tensor, "model.layers.0.self_attn.k_proj.weight");
                assert_eq!(found, vec![c.kv_dim(), c.hidden_size]);
                assert_eq!(expected, vec![c.num_kv_heads * 4, c.hidden_size]);
            }
            other => panic!("expected ShapeMismatch, got {other}"),
        }
    }

    #[test]
    fn tokenizer_from_a_tiny_gpt2_gguf() {
        use crate::tokenizer::{ChatMessage, Tokenizer};
        // Specials first, then the 256 byte-level symbols, then three merge results.
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        tokens.extend(alphabet.iter().map(|c| c.to_string()));
        tokens.extend(["he", "hel", "Ġw", "12"].map(String::from));
        let merges = ["h e", "he l", "Ġ w", "1 2"];
        let mut types = vec![MetaValue::Int(3); 3];
        types.extend(std::iter::repeat_n(MetaValue::Int(1), tokens.len() - 3));
        let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        let meta = vec![
            ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::Str("smollm".into())),
            ("tokenizer.ggml.tokens", MetaValue::Array(tokens.iter().map(|t| MetaValue::Str(t.clone())).collect())),
            ("tokenizer.ggml.merges", MetaValue::Array(merges.iter().map(|m| MetaValue::Str(m.to_string())).collect())),
            ("tokenizer.ggml.token_type", MetaValue::Array(types)),
            ("tokenizer.ggml.bos_token_id", MetaValue::UInt(1)),
            ("tokenizer.ggml.eos_token_id", MetaValue::UInt(2)),
            ("tokenizer.chat_template", MetaValue::Str(template.into())),
        ];
        let path = temp_file("tok.gguf", &write_gguf(&meta, &[]));
        let tok = crate::tokenizer::load_tokenizer(&path).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(1), 2, 2));
        let id = |t: &str| tok.token_to_id(t).unwrap();
        assert_eq!(tok.encode("<|im_start|>hello w").unwrap(), vec![1, id("hel"), id("l"), id("o"), id("Ġw")]);
        // Digits are split one by one, so the "12" merge never applies.
        assert_eq!(tok.encode("a12").unwrap(), vec![id("a"), id("1"), id("2")]);
        let text = "hello, wörld 42!<|im_end|>";
        let ids = tok.encode(text).unwrap();
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello, wörld 42!");
        let chat = tok.apply_chat_template(&[ChatMessage::new("user", "hi")], false).unwrap();
        assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n");

        // `gpt-2` pre-tokenisation keeps digit runs together; unknown ones are refused.
        let mut gpt2 = meta.clone();
        gpt2[1].1 = MetaValue::Str("gpt-2".into());
        let tok = crate::tokenizer::load_tokenizer(&temp_file("tok-gpt2.gguf", &write_gguf(&gpt2, &[]))).unwrap();
        assert_eq!(tok.encode("a12").unwrap(), vec![id("a"), id("12")]);
        gpt2[1].1 = MetaValue::Str("llama-bpe".into());
        let e = crate::tokenizer::load_tokenizer(&temp_file("tok-pre.gguf", &write_gguf(&gpt2, &[]))).err().unwrap().to_string();
        assert!(e.contains("tokenizer.ggml.pre") && e.contains("llama-bpe"), "{e}");

        // Anything but gpt2 is a clear error naming the key.
        let mut other = meta.clone();
        other[0].1 = MetaValue::Str("llama".into());
        let f = GgufFile::open(&temp_file("tok-llama.gguf", &write_gguf(&other, &[]))).unwrap();
        let e = Tokenizer::from_gguf(&f).err().unwrap().to_string();
        assert!(e.contains("tok-llama.gguf") && e.contains("tokenizer.ggml.model") && e.contains("llama"), "{e}");
    }
}
