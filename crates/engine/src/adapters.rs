//! The engine's adapters: registered by name, loaded on first use, at most `limit` resident,
//! the least recently used idle one evicted to make room.
//!
//! Rows hold their adapter through an `Rc`, so an adapter in use by a running row is never
//! evicted, and unloading one only takes it out of the registry: rows already running with it
//! finish with it.

use burn::tensor::backend::Backend;
use iapt_model::LlamaConfig;
use iapt_tuners::Tuner;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

/// A registered adapter as listed to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    pub name: String,
    pub dir: PathBuf,
    /// The tuner kind (`"iapt"`, `"lora"`, ...).
    pub kind: String,
    pub resident: bool,
}

struct Registered<B: Backend> {
    dir: PathBuf,
    kind: String,
    resident: Option<Rc<Tuner<B>>>,
    /// Tick of its last use, for least-recently-used eviction.
    last_used: u64,
}

pub(crate) struct AdapterStore<B: Backend> {
    adapters: BTreeMap<String, Registered<B>>,
    limit: usize,
    tick: u64,
    base: LlamaConfig,
    device: B::Device,
}

/// An adapter could not be made resident now: every resident one is in use.
pub(crate) struct Busy;

impl<B: Backend> AdapterStore<B> {
    pub fn new(base: LlamaConfig, device: B::Device, limit: usize) -> Self {
        Self { adapters: BTreeMap::new(), limit: limit.max(1), tick: 0, base, device }
    }

    /// Register `name` for the adapter in `dir`, loading it to check it (it stays resident if
    /// there is room). Replaces an earlier registration of the same name.
    pub fn register(&mut self, name: &str, dir: PathBuf) -> Result<AdapterInfo, String> {
        let tuner = iapt_tuners::load_tuner::<B>(&dir, &self.base, &self.device).map_err(|e| e.to_string())?;
        let kind = tuner.name().to_string();
        self.tick += 1;
        self.adapters.insert(name.to_string(), Registered { dir: dir.clone(), kind: kind.clone(), resident: None, last_used: self.tick });
        let resident = self.make_room(name) && {
            self.adapters.get_mut(name).expect("just registered").resident = Some(Rc::new(tuner));
            true
        };
        Ok(AdapterInfo { name: name.to_string(), dir, kind, resident })
    }

    /// Forget `name`; false if it was not registered.
    pub fn unregister(&mut self, name: &str) -> bool {
        self.adapters.remove(name).is_some()
    }

    pub fn list(&self) -> Vec<AdapterInfo> {
        self.adapters
            .iter()
            .map(|(name, a)| AdapterInfo { name: name.clone(), dir: a.dir.clone(), kind: a.kind.clone(), resident: a.resident.is_some() })
            .collect()
    }

    /// The adapter `name`, loaded if it is not resident. `Ok(None)`: not registered.
    pub fn acquire(&mut self, name: &str) -> Result<Option<Rc<Tuner<B>>>, Result<Busy, String>> {
        self.tick += 1;
        let tick = self.tick;
        let Some(entry) = self.adapters.get_mut(name) else { return Ok(None) };
        entry.last_used = tick;
        if let Some(tuner) = &entry.resident {
            return Ok(Some(tuner.clone()));
        }
        let dir = entry.dir.clone();
        if !self.make_room(name) {
            return Err(Ok(Busy));
        }
        let tuner = Rc::new(iapt_tuners::load_tuner::<B>(&dir, &self.base, &self.device).map_err(|e| Err(e.to_string()))?);
        self.adapters.get_mut(name).expect("registered").resident = Some(tuner.clone());
        Ok(Some(tuner))
    }

    /// Make room for one more resident adapter besides `name`, evicting the least recently
    /// used idle one if the limit is reached; false if every resident adapter is in use.
    fn make_room(&mut self, name: &str) -> bool {
        let resident = self.adapters.values().filter(|a| a.resident.is_some()).count();
        if resident < self.limit {
            return true;
        }
        let idle = self
            .adapters
            .iter_mut()
            .filter(|(n, a)| n.as_str() != name && a.resident.as_ref().is_some_and(|t| Rc::strong_count(t) == 1))
            .min_by_key(|(_, a)| a.last_used);
        match idle {
            Some((_, a)) => {
                a.resident = None;
                true
            }
            None => false,
        }
    }
}
