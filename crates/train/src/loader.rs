//! A burn [`DataLoader`] whose shuffle order is a pure function of `(seed, epoch)`.
//!
//! burn's `DataLoaderBuilder::shuffle` draws each epoch's order from one RNG that advances with
//! every `iter()` call, so a run resumed at epoch `k` would see epoch 1's order again. Here the
//! loader counts the epochs it has served, starting from the epoch a resumed run continues at,
//! and derives the permutation from the seed and that count: an interrupted-and-resumed run
//! sees exactly the batches of an uninterrupted one.

use crate::batch::{LmBatch, LmBatcher, LmExample};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Serves `LmBatch`es of `batch_size` examples (the last one may be smaller).
pub struct EpochLoader<B: Backend> {
    dataset: Arc<dyn Dataset<LmExample>>,
    /// The slice of the dataset this loader serves (burn slices loaders across devices).
    start: usize,
    end: usize,
    batch_size: usize,
    batcher: LmBatcher,
    device: B::Device,
    /// `None` = dataset order (evaluation).
    seed: Option<u64>,
    /// Epochs served so far; the next `iter()` serves epoch `served` (0-based).
    served: AtomicUsize,
}

impl<B: Backend> EpochLoader<B> {
    /// A loader over all of `dataset`; with `seed`, each epoch is shuffled, and the first
    /// `iter()` serves epoch index `first_epoch` (0-based: a run resumed after 3 epochs passes 3).
    pub fn new(
        dataset: Arc<dyn Dataset<LmExample>>,
        batch_size: usize,
        batcher: LmBatcher,
        device: B::Device,
        seed: Option<u64>,
        first_epoch: usize,
    ) -> Self {
        let end = dataset.len();
        Self {
            dataset,
            start: 0,
            end,
            batch_size: batch_size.max(1),
            batcher,
            device,
            seed,
            served: first_epoch.into(),
        }
    }

    fn derived(&self, start: usize, end: usize, device: B::Device) -> Self {
        Self {
            dataset: self.dataset.clone(),
            start,
            end,
            batch_size: self.batch_size,
            batcher: self.batcher,
            device,
            seed: self.seed,
            served: self.served.load(Ordering::SeqCst).into(),
        }
    }

    /// The dataset indices of epoch `epoch` (0-based), in serving order.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (self.start..self.end).collect();
        if let Some(seed) = self.seed {
            let mut rng = SplitMix64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..order.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }
}

impl<B: Backend> DataLoader<B, LmBatch<B>> for EpochLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch<B>> + 'a> {
        let epoch = self.served.fetch_add(1, Ordering::SeqCst);
        Box::new(EpochIter { loader: self, order: self.order(epoch), next: 0 })
    }

    fn num_items(&self) -> usize {
        self.end - self.start
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        Arc::new(self.derived(self.start, self.end, device.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        let end = (self.start + end).min(self.end);
        Arc::new(self.derived((self.start + start).min(end), end, self.device.clone()))
    }
}

struct EpochIter<'a, B: Backend> {
    loader: &'a EpochLoader<B>,
    order: Vec<usize>,
    next: usize,
}

impl<B: Backend> Iterator for EpochIter<'_, B> {
    type Item = LmBatch<B>;

    fn next(&mut self) -> Option<LmBatch<B>> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.loader.batch_size).min(self.order.len());
        let items = self.order[self.next..end]
            .iter()
            .map(|&i| self.loader.dataset.get(i).unwrap_or_else(|| panic!("dataset has no item {i}")))
            .collect();
        self.next = end;
        Some(self.loader.batcher.batch(items, &self.loader.device))
    }
}

impl<B: Backend> DataLoaderIterator<LmBatch<B>> for EpochIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.next, self.order.len())
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): fully specified, so orders are the same everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`, by rejection.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::data::dataset::InMemDataset;

    type TestBackend = burn::backend::NdArray;

    fn loader(first_epoch: usize) -> EpochLoader<TestBackend> {
        let items = (0..10).map(|i| LmExample::new(vec![1, 2 + i], 1).unwrap()).collect();
        EpochLoader::new(
            Arc::new(InMemDataset::new(items)),
            4,
            LmBatcher::default(),
            Default::default(),
            Some(7),
            first_epoch,
        )
    }

    fn epoch_ids(l: &dyn DataLoader<TestBackend, LmBatch<TestBackend>>) -> Vec<i64> {
        l.iter().flat_map(|b| b.ids.narrow(1, 1, 1).into_data().to_vec::<i64>().unwrap()).collect()
    }

    #[test]
    fn orders_depend_on_seed_and_epoch_only() {
        let fresh = loader(0);
        let first = epoch_ids(&fresh);
        let second = epoch_ids(&fresh);
        assert_ne!(first, second, "each epoch reshuffles");
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (2..12).collect::<Vec<_>>(), "an epoch is a permutation");
        assert_eq!(epoch_ids(&loader(1)), second, "a loader resumed at epoch 1 serves epoch 1's order");
        assert_eq!(epoch_ids(&*fresh.to_device(&Default::default())), epoch_ids(&loader(2)));
    }

    #[test]
    fn slices_cover_their_range_in_batches() {
        let l = loader(0);
        let part = l.slice(5, 10);
        assert_eq!(part.num_items(), 5);
        let mut it = part.iter();
        assert_eq!(it.next().unwrap().ids.dims()[0], 4);
        assert_eq!(it.next().unwrap().ids.dims()[0], 1);
        assert!(it.next().is_none());
        assert_eq!(it.progress().items_processed, 5);
    }
}
