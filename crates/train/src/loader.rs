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
use std::collections::BTreeMap;
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
    /// Batch examples of similar length together (see [`EpochLoader::with_length_grouping`]).
    group_by_length: bool,
    /// Spread classes evenly over batches (see [`EpochLoader::with_class_balance`]).
    balance_classes: bool,
    /// Every example's token count and class, read once: orders are computed from these.
    lengths: Arc<[usize]>,
    classes: Arc<[Option<usize>]>,
}

/// Length grouping sorts windows of this many batches of the shuffled order.
pub const LENGTH_WINDOW_BATCHES: usize = 16;

impl<B: Backend> EpochLoader<B> {
    /// A loader over all of `dataset`; with `seed`, each epoch is shuffled, and the first
    /// `iter()` serves epoch index `first_epoch` (0-based: a run resumed after 3 epochs passes 3).
    pub fn new(dataset: Arc<dyn Dataset<LmExample>>, batch_size: usize, batcher: LmBatcher, device: B::Device, seed: Option<u64>, first_epoch: usize) -> Self {
        let end = dataset.len();
        let (lengths, classes): (Vec<usize>, Vec<Option<usize>>) = dataset.iter().map(|e| (e.ids.len(), e.class)).unzip();
        Self {
            dataset,
            start: 0,
            end,
            batch_size: batch_size.max(1),
            batcher,
            device,
            seed,
            served: first_epoch.into(),
            group_by_length: false,
            balance_classes: false,
            lengths: lengths.into(),
            classes: classes.into(),
        }
    }

    /// Batch examples of similar length together, so little of each batch is padding: each
    /// epoch's shuffled order is cut into windows of [`LENGTH_WINDOW_BATCHES`] batches, each
    /// window is sorted by length and cut into batches, and those batches are served in a
    /// shuffled order (a last, partial batch stays last). Every batch is still a random draw
    /// from its window, and the order is still a function of `(seed, epoch)`. Only applies when
    /// shuffling.
    pub fn with_length_grouping(mut self, on: bool) -> Self {
        self.group_by_length = on;
        self
    }

    /// Spread each class evenly over the epoch, so that every batch holds the classes in about
    /// their overall proportions (a balanced two-class set gives batches of 4 a 2-2 split, where a
    /// plain shuffle gives 3-1 or 4-0 in 5 of 8 batches). With few examples per step, a batch's
    /// label mix otherwise moves the answer prior back and forth from step to step, and that
    /// noise swamps the gradient that makes the answer depend on the input. Within a class the
    /// shuffled order is kept; length grouping then sorts each class within a window. Applies
    /// only when shuffling and when every example has a class (classification tasks).
    pub fn with_class_balance(mut self, on: bool) -> Self {
        self.balance_classes = on;
        self
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
            group_by_length: self.group_by_length,
            balance_classes: self.balance_classes,
            lengths: self.lengths.clone(),
            classes: self.classes.clone(),
        }
    }

    /// The dataset indices of epoch `epoch` (0-based), in serving order.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (self.start..self.end).collect();
        if let Some(seed) = self.seed {
            let mut rng = SplitMix64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            rng.shuffle(&mut order);
            let balance = self.balance_classes && order.iter().all(|&i| self.classes[i].is_some());
            if balance {
                order = self.interleave_classes(&order);
            }
            if self.group_by_length {
                order = self.grouped_by_length(&order, balance, &mut rng);
            }
        }
        order
    }

    /// `items` with each class spread evenly, keeping the order within a class: the k-th of a
    /// class's n members goes to relative position (k + 1/2) / n (ties by class index).
    fn interleave_classes(&self, items: &[usize]) -> Vec<usize> {
        let mut by_class: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for &i in items {
            by_class.entry(self.classes[i]).or_default().push(i);
        }
        let mut keyed: Vec<(f64, usize)> = by_class
            .values()
            .flat_map(|members| {
                let n = members.len() as f64;
                members.iter().enumerate().map(move |(k, &i)| ((k as f64 + 0.5) / n, i))
            })
            .collect();
        // Stable: equal positions keep the class order of `by_class`.
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        keyed.into_iter().map(|(_, i)| i).collect()
    }

    fn grouped_by_length(&self, order: &[usize], balance: bool, rng: &mut SplitMix64) -> Vec<usize> {
        let mut grouped = Vec::with_capacity(order.len());
        let mut partial = Vec::new();
        // Windows are whole batches, so only the last window can end in a partial batch.
        for window in order.chunks(self.batch_size * LENGTH_WINDOW_BATCHES) {
            let mut window = window.to_vec();
            window.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            if balance {
                // Each class sorted by length, then spread again: a batch pairs similar lengths
                // across classes and keeps its class mix.
                window = self.interleave_classes(&window);
            }
            let mut batches: Vec<&[usize]> = window.chunks(self.batch_size).collect();
            if batches.last().is_some_and(|b| b.len() < self.batch_size) {
                partial = batches.pop().expect("just checked").to_vec();
            }
            rng.shuffle(&mut batches);
            grouped.extend(batches.into_iter().flatten());
        }
        grouped.extend(partial);
        grouped
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
        let items = self.order[self.next..end].iter().map(|&i| self.loader.dataset.get(i).unwrap_or_else(|| panic!("dataset has no item {i}"))).collect();
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

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
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
        EpochLoader::new(Arc::new(InMemDataset::new(items)), 4, LmBatcher::default(), Default::default(), Some(7), first_epoch)
    }

    fn epoch_ids(l: &dyn DataLoader<TestBackend, LmBatch<TestBackend>>) -> Vec<i64> {
        l.iter().flat_map(|b| b.ids.narrow(1, 1, 1).into_data().to_vec::<i64>().unwrap()).collect()
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference values of SplitMix64 with seed 0 (Vigna's splitmix64.c).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut v: Vec<u32> = (0..10).collect();
        SplitMix64(5).shuffle(&mut v);
        let mut w: Vec<u32> = (0..10).collect();
        SplitMix64(5).shuffle(&mut w);
        assert_eq!(v, w);
        assert_ne!(v, (0..10).collect::<Vec<_>>());
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

    /// 150 examples of lengths 2..=151 in a scrambled order, batches of 4 (the last one partial).
    fn varied_loader(group: bool) -> EpochLoader<TestBackend> {
        let items = (0..150).map(|i| LmExample::new(vec![1; 2 + (i * 37) % 150], 1).unwrap()).collect();
        EpochLoader::new(Arc::new(InMemDataset::new(items)), 4, LmBatcher::default(), Default::default(), Some(3), 0).with_length_grouping(group)
    }

    #[test]
    fn length_grouping_cuts_padding_and_keeps_a_permutation() {
        let lengths = |l: &EpochLoader<TestBackend>| -> Vec<Vec<usize>> {
            l.iter()
                .map(|b| b.ids.dims()[1])
                .zip(l.order(0).chunks(4).map(|c| c.to_vec()))
                .map(|(t, c)| {
                    assert!(c.iter().all(|&i| 2 + (i * 37) % 150 <= t), "a batch is as wide as its longest example");
                    c.iter().map(|&i| 2 + (i * 37) % 150).collect()
                })
                .collect()
        };
        let padded = |batches: &[Vec<usize>]| -> usize { batches.iter().map(|b| b.len() * b.iter().max().unwrap()).sum() };
        let (plain, grouped) = (varied_loader(false), varied_loader(true));
        let (plain_batches, grouped_batches) = (lengths(&plain), lengths(&grouped));
        let real: usize = (0..150).map(|i| 2 + (i * 37) % 150).sum();
        assert!(padded(&grouped_batches) < real + real / 10, "grouped: {} padded slots for {real} tokens", padded(&grouped_batches));
        assert!(padded(&plain_batches) > real + real / 4, "plain: {} padded slots for {real} tokens", padded(&plain_batches));
        // Still a permutation, a function of (seed, epoch), with the partial batch last.
        let mut order = grouped.order(0);
        assert_eq!(order, varied_loader(true).order(0));
        assert_ne!(order, grouped.order(1));
        assert_eq!(grouped_batches.last().unwrap().len(), 2);
        order.sort();
        assert_eq!(order, (0..150).collect::<Vec<_>>());
        // Batches come from windows of the shuffled order: the same items as the ungrouped order.
        let window = 4 * LENGTH_WINDOW_BATCHES;
        for (a, b) in plain.order(0).chunks(window).zip(grouped.order(0).chunks(window)) {
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
    }

    /// Class of example `i` of `classed_loader`: 0, 1, 2 in proportions 1/2 : 1/3 : 1/6.
    fn class(i: usize) -> usize {
        if i % 6 < 3 {
            0
        } else if i % 6 < 5 {
            1
        } else {
            2
        }
    }

    /// 150 examples with classes from `class`, lengths as in `varied_loader`.
    fn classed_loader(group: bool, balance: bool) -> EpochLoader<TestBackend> {
        let items = (0..150).map(|i| LmExample::new(vec![1; 2 + (i * 37) % 150], 1).unwrap().with_class(Some(class(i)))).collect();
        EpochLoader::new(Arc::new(InMemDataset::new(items)), 6, LmBatcher::default(), Default::default(), Some(5), 0)
            .with_length_grouping(group)
            .with_class_balance(balance)
    }

    #[test]
    fn class_balance_gives_every_batch_the_overall_class_mix() {
        // Per batch of 6: the largest deviation from the expected 3 / 2 / 1 of any class.
        let worst = |order: &[usize]| -> usize {
            order
                .chunks(6)
                .filter(|b| b.len() == 6)
                .map(|b| (0..3).map(|c| (b.iter().filter(|&&i| class(i) == c).count() as isize - [3, 2, 1][c]).unsigned_abs()).max().unwrap())
                .max()
                .unwrap()
        };
        for group in [false, true] {
            let balanced = classed_loader(group, true);
            let order = balanced.order(0);
            assert!(worst(&order) <= 1, "group={group}: balanced batches off by {}", worst(&order));
            if !group {
                assert!(worst(&classed_loader(false, false).order(0)) >= 2, "a plain shuffle should be visibly unbalanced");
            }
            // Still a permutation, a function of (seed, epoch).
            assert_eq!(order, classed_loader(group, true).order(0));
            assert_ne!(order, balanced.order(1));
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..150).collect::<Vec<_>>());
        }
        // Grouping still cuts padding with balance on.
        let padded = |order: &[usize]| -> usize { order.chunks(6).map(|b| b.len() * b.iter().map(|&i| 2 + (i * 37) % 150).max().unwrap()).sum() };
        let real: usize = (0..150).map(|i| 2 + (i * 37) % 150).sum();
        let grouped = padded(&classed_loader(true, true).order(0));
        assert!(grouped < real + real / 5, "balanced and grouped: {grouped} padded slots for {real} tokens");
        // Examples without a class (generation tasks) keep the plain order.
        let unclassed = varied_loader(true).with_class_balance(true);
        assert_eq!(unclassed.order(0), varied_loader(true).order(0));
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
