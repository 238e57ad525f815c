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
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
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
            6 => MetaValue::Float(f32::from_bits(self.u32(key)?) as f64),
            7 => MetaValue::Bool(self.u8(key)? != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 if depth == 0 => {
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
            other => return Err(self.err(format!("metadata `{key}` has unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open and index a GGUF file.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: read-only mapping of a file we do not modify; a concurrent external writer
        // could change bytes under us, which would corrupt values but not memory safety of the
        // bounds-checked reads below.
        let data = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        let mut c = Cursor { bytes: &data, pos: 0, path };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.err("bad magic (not a GGUF file)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!("unsupported version {version} (2 and 3 are supported)")));
        }
        let n_tensors = c.count("tensor count", 8)?;
        let n_meta = c.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(c.err(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut shape = (0..n_dims).map(|_| c.u64(&name).map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
            shape.reverse();
            let ggml_type = c.u32(&name)?;
            let offset = c.u64(&name)? as usize;
            infos.push((name, shape, ggml_type, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(MetaValue::UInt(a)) if *a > 0 => *a as usize,
            _ => 32,
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, ggml_type, offset) in infos {
            let offset = data_start.checked_add(offset).ok_or_else(|| c.err(format!("tensor `{name}` offset overflows")))?;
            tensors.insert(name, TensorInfo { shape, ggml_type, offset });
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, data })
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
                    MetaValue::UInt(u) => Ok(*u as i64),
                    _ => Err(self.field_err(key, "expected an array of integers")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.field_err(key, "expected an array")),
        }
    }
    fn require_u64(&self, key: &str) -> Result<u64, LoadError> {
        self.get_u64(key)?.ok_or_else(|| self.field_err(key, "missing"))
    }

    /// Read and dequantise one tensor to f32 (row-major shape).
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, LoadError> {
        let info = self.tensors.get(name).ok_or_else(|| LoadError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let ty = GgmlType::from_id(info.ggml_type).ok_or_else(|| LoadError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: name.into(),
            dtype: format!("ggml type {}", info.ggml_type),
        })?;
        let n: usize = info.shape.iter().product();
        let (per_block, block_bytes) = ty.block();
        let bad = |reason: String| LoadError::format(&self.path, "GGUF", format!("tensor `{name}`: {reason}"));
        if n % per_block != 0 {
            return Err(bad(format!("{n} values is not a whole number of {per_block}-value blocks")));
        }
        let len = n / per_block * block_bytes;
        let bytes = info
            .offset
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .map(|end| &self.data[info.offset..end])
            .ok_or_else(|| bad(format!("data [{}, +{len}) lies past the end of the file ({} bytes)", info.offset, self.data.len())))?;
        Ok(HostTensor { shape: info.shape.clone(), data: dequantize(ty, bytes) })
    }
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
pub fn unpermute_rows(t: &HostTensor, n_heads: usize) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
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
fn hf_name(gguf: &str) -> Option<String> {
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
    let head_dim = file.get_u64(&key("attention.key_length"))?.map_or(hidden / heads.max(1), |v| v as usize);
    let vocab = match file.get_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => match file.get_str_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => file.tensors.get("token_embd.weight").map(|t| t.shape[0]).ok_or_else(|| file.field_err(&key("vocab_size"), "missing"))?,
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
    config.validate().map_err(|reason| file.field_err(&key("*"), &reason))?;
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
        let hf = hf_name(name).unwrap_or_else(|| name.clone());
        if hf.ends_with("q_proj.weight") && t.shape.len() == 2 {
            t = unpermute_rows(&t, config.num_heads);
        } else if hf.ends_with("k_proj.weight") && t.shape.len() == 2 {
            t = unpermute_rows(&t, config.num_kv_heads);
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

    #[test]
    fn q8_0_block_by_hand() {
        let mut blk = f16b(0.5).to_vec();
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &blk);
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[16], 0.0);
        assert_eq!(v[31], 7.5);
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
        let v = dequantize(GgmlType::F16, &[f16b(1.5), f16b(-3.0)].concat());
        assert_eq!(v, vec![1.5, -3.0]);
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        let (heads, hd, cols) = (3, 8, 2);
        let hf = HostTensor { shape: vec![heads * hd, cols], data: (0..heads * hd * cols).map(|v| v as f32).collect() };
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)
        let mut gguf = vec![0.0; hf.data.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let src = h * hd + i * hd / 2 + j;
                    let dst = h * hd + j * 2 + i;
                    gguf[dst * cols..(dst + 1) * cols].copy_from_slice(&hf.data[src * cols..(src + 1) * cols]);
                }
            }
        }
        let back = unpermute_rows(&HostTensor { shape: hf.shape.clone(), data: gguf }, heads);
        assert_eq!(back, hf);
    }

    /// A minimal GGUF writer for tests.
    fn write_gguf(meta: &[(&str, MetaValue)], tensors: &[(&str, Vec<usize>, u32, Vec<u8>)]) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend((v.len() as u64).to_le_bytes());
            out.extend(v.as_bytes());
        }
        fn val(out: &mut Vec<u8>, v: &MetaValue) {
            match v {
                MetaValue::UInt(u) => out.extend(u.to_le_bytes()),
                MetaValue::Str(x) => s(out, x),
                MetaValue::Float(f) => out.extend((*f as f32).to_le_bytes()),
                MetaValue::Array(items) => {
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|i| val(out, i));
                }
                _ => unimplemented!(),
            }
        }
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        for (k, v) in meta {
            s(&mut out, k);
            let kind: u32 = match v {
                MetaValue::UInt(_) => 10,
                MetaValue::Str(_) => 8,
                MetaValue::Float(_) => 6,
                MetaValue::Array(_) => 9,
                _ => unimplemented!(),
            };
            out.extend(kind.to_le_bytes());
            val(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, shape, ty, data) in tensors {
            s(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            shape.iter().rev().for_each(|d| out.extend((*d as u64).to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for (_, _, _, data) in tensors {
            out.extend(data);
            while out.len() % 32 != 0 {
                out.push(0);
            }
        }
        out
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
            &[("general.architecture", MetaValue::Str("llama".into())), ("x.list", MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("bc".into())]))],
            &[("w", vec![2, 3], 0, f32s), ("odd", vec![32], 6, vec![0; 20])],
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
        assert!(err.contains("odd") && err.contains("ggml type 6"), "{err}");
    }

    #[test]
    fn truncated_or_corrupt_files_are_errors_naming_the_file() {
        let bytes = sample();
        // The data section is the last 64 bytes: `w` (24 bytes, padded to 32), then `odd`.
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
        // a tensor count that cannot fit in the file
        let mut huge = sample();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::open(&temp_file("huge.gguf", &huge)).is_err());
    }

    #[test]
    fn a_non_llama_architecture_is_refused() {
        let bytes = write_gguf(&[("general.architecture", MetaValue::Str("gpt2".into()))], &[]);
        let err = load_llama_gguf(&temp_file("gpt2.gguf", &bytes)).err().unwrap().to_string();
        assert!(err.contains("general.architecture") && err.contains("gpt2"), "{err}");
    }
}
