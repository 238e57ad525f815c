//! Frozen weights packed once into column panels, for products with many rows (prefill,
//! training forward passes) on CPUs with AVX-512.
//!
//! `gemm` packs its right-hand operand again on every call, and with 128 rows a weight is used
//! too few times to hide that: the 210 products of a SmolLM2 prefill ran at 160–170 GFLOP/s on
//! two cores whose multiply-add peak is 227. A weight registered here ([`register`], called by
//! [`crate::frozen_weight`] at load) is copied once into panels of [`WIDTH`] output columns, each
//! `[k][WIDTH]`, so a panel is one sequential stream; the micro-kernel keeps a block of up to
//! [`ROWS`] input rows × [`WIDTH`] columns of sums in registers, broadcasting one input value at
//! a time against the panel's two vectors.
//!
//! The registry holds a clone of the weight's tensor, so the weight's memory cannot be freed and
//! reused while its entry exists (its address is the key), and drops an entry once that clone is
//! the last holder (the model that loaded the weight is gone). It costs a second copy of every
//! registered weight; CPUs without AVX-512 keep `gemm` and register nothing.

use crate::cpu::MatRef;
use crate::pool;
use burn_flex::FlexTensor;
use burn_ndarray::NdArrayTensor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Output columns per panel: two AVX-512 vectors.
pub const WIDTH: usize = 32;

/// Input rows per micro-kernel call: 12 × 2 accumulators, 2 weight vectors and a broadcast
/// fill 27 of the 32 vector registers.
pub const ROWS: usize = 12;

/// How many steps along `k` ahead the micro-kernel asks for its panel's next lines (16 steps:
/// 2 KB).
const PREFETCH_STEPS: usize = 16;

/// A `[k, n]` weight as `n.div_ceil(WIDTH)` panels of `[k][WIDTH]` (the last one zero-padded).
pub(crate) struct Panels {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl Panels {
    fn pack(w: &MatRef<'_>) -> Self {
        let (k, n) = (w.rows(), w.cols());
        let mut data = vec![0.0f32; n.div_ceil(WIDTH) * k * WIDTH];
        for (panel, out) in data.chunks_exact_mut(k * WIDTH).enumerate() {
            for j in 0..WIDTH.min(n - panel * WIDTH) {
                let col = panel * WIDTH + j;
                for p in 0..k {
                    out[p * WIDTH + j] = w.get(p, col);
                }
            }
        }
        Self { data, k, n }
    }
}

/// What keeps a registered weight's memory alive: a clone of its tensor.
enum Holder {
    NdArray(NdArrayTensor),
    Flex(FlexTensor),
}

impl Holder {
    /// Whether anything besides this clone still holds the weight.
    fn in_use(&self) -> bool {
        match self {
            Holder::NdArray(NdArrayTensor::F32(storage)) => !storage.is_unique(),
            Holder::NdArray(_) => false,
            Holder::Flex(t) => !t.is_unique(),
        }
    }
}

/// A weight view's identity: first element's address, shape and strides.
type Key = (usize, usize, usize, usize, usize);

fn key(w: &MatRef<'_>) -> Key {
    let (address, row_stride, col_stride) = w.identity();
    (address, w.rows(), w.cols(), row_stride, col_stride)
}

/// Every registered weight: what keeps it alive, and its panels.
type Registry = Mutex<HashMap<Key, (Holder, Arc<Panels>)>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Whether weights are packed and the panel kernel runs: on CPUs with AVX-512, unless
/// `IAPT_PANELS=off` (which saves the second copy of the weights; products then run on `gemm`).
pub fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let wanted = !crate::switched_off("IAPT_PANELS");
        #[cfg(target_arch = "x86_64")]
        {
            wanted && std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = wanted;
            false
        }
    })
}

/// Pack the frozen weight `tensor` (an `NdArrayTensor` or a `FlexTensor`) whose `[k, n]` view is
/// `view`, and drop the entries of weights nobody holds any more. The caller has checked
/// [`available`].
pub(crate) fn register(tensor: &dyn std::any::Any, view: &MatRef<'_>) {
    let holder = if let Some(t) = tensor.downcast_ref::<NdArrayTensor>() {
        Holder::NdArray(t.clone())
    } else if let Some(t) = tensor.downcast_ref::<FlexTensor>() {
        Holder::Flex(t.clone())
    } else {
        return;
    };
    let panels = Arc::new(Panels::pack(view));
    let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|_, (holder, _)| holder.in_use());
    registry.insert(key(view), (holder, panels));
}

/// The panels of `w`, if `w` is a registered weight viewed as it was registered.
pub(crate) fn find(w: &MatRef<'_>) -> Option<Arc<Panels>> {
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry.get(&key(w)).map(|(_, panels)| panels.clone())
}

thread_local! {
    static PRODUCTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many products this thread has run on packed panels (tests: per thread, so tests running
/// beside each other do not count each other's).
pub fn products() -> u64 {
    PRODUCTS.get()
}

/// `a · w` into the row-major `[a.rows, w.n]` at `out` (room for `len` floats, written, never
/// read: it may be uninitialised), over `w`'s panels, split over the pool.
pub(crate) fn matmul(a: MatRef<'_>, w: &Panels, out: pool::SendPtr<f32>, len: usize) {
    let (m, k, n) = (a.rows(), w.k, w.n);
    assert!(a.cols() == k && len == m * n, "panels: [{m}, {}] · [{k}, {n}] into {len}", a.cols());
    PRODUCTS.set(PRODUCTS.get() + 1);
    // The kernel reads rows of a contiguously.
    let (a_data, lda) = a.contiguous_rows();
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no weight is packed without AVX-512 ({a_data:?}, {lda})");
    #[cfg(target_arch = "x86_64")]
    {
        let panels = n.div_ceil(WIDTH);
        let per_task = panels.div_ceil(panels.min(pool::team_size() * 4));
        let out_ptr = out;
        pool::run(panels.div_ceil(per_task), &|t| {
            #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
            let out_ptr = out_ptr;
            for panel in t * per_task..((t + 1) * per_task).min(panels) {
                // SAFETY: each panel writes its own columns of `out`, which is m x n row-major;
                // the rows of a lie within `a_data` (checked by MatRef), the panel within `w.data`.
                unsafe { x86::panel_avx512(a_data.as_ptr(), lda, m, &w.data[panel * k * WIDTH..][..k * WIDTH], k, out_ptr.0, n, panel * WIDTH, n) };
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PREFETCH_STEPS, ROWS, WIDTH};
    use std::arch::x86_64::*;

    /// `R` rows of `a` (from `a`, `lda` apart) times one panel, stored from the registers to
    /// the `R` rows of `out` (`ldo` apart), the columns in `mask` only.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(a: *const f32, lda: usize, panel: &[f32], k: usize, out: *mut f32, ldo: usize, mask: [__mmask16; 2]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let w = panel.as_ptr();
        for p in 0..k {
            // The panel streams from L2 (a 576-deep one is 72 KB); without this the loop waited
            // on its first load in ~12% of a prefill's samples (perf annotate).
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((p + PREFETCH_STEPS) * WIDTH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((p + PREFETCH_STEPS) * WIDTH + 16) as *const i8);
            let w0 = _mm512_loadu_ps(w.add(p * WIDTH));
            let w1 = _mm512_loadu_ps(w.add(p * WIDTH + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + p));
                acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
            }
        }
        // Straight from the registers (a copy through the stack cost a `memcpy` call per row:
        // 1.7% of a training step's samples).
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * ldo), mask[0], acc[0]);
            _mm512_mask_storeu_ps(out.add(r * ldo + 16), mask[1], acc[1]);
        }
    }

    /// Every row of `a` (`m` rows, `lda` apart, `k` long) times one panel, written to columns
    /// `j0..min(j0 + WIDTH, n)` of the row-major `out` (`ldo` wide).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panel_avx512(a: *const f32, lda: usize, m: usize, panel: &[f32], k: usize, out: *mut f32, ldo: usize, j0: usize, n: usize) {
        // The panel's columns that exist (the last panel of an `n` not a multiple of WIDTH has fewer).
        let cols = WIDTH.min(n - j0);
        let bits = |c: usize| if c >= 16 { 0xffff } else { ((1u32 << c) - 1) as __mmask16 };
        let mask = [bits(cols), bits(cols.saturating_sub(16))];
        let mut i = 0;
        while i < m {
            let rows = ROWS.min(m - i);
            let (a, out) = (a.add(i * lda), out.add(i * ldo + j0));
            match rows {
                12 => tile::<12>(a, lda, panel, k, out, ldo, mask),
                11 => tile::<11>(a, lda, panel, k, out, ldo, mask),
                10 => tile::<10>(a, lda, panel, k, out, ldo, mask),
                9 => tile::<9>(a, lda, panel, k, out, ldo, mask),
                8 => tile::<8>(a, lda, panel, k, out, ldo, mask),
                7 => tile::<7>(a, lda, panel, k, out, ldo, mask),
                6 => tile::<6>(a, lda, panel, k, out, ldo, mask),
                5 => tile::<5>(a, lda, panel, k, out, ldo, mask),
                4 => tile::<4>(a, lda, panel, k, out, ldo, mask),
                3 => tile::<3>(a, lda, panel, k, out, ldo, mask),
                2 => tile::<2>(a, lda, panel, k, out, ldo, mask),
                _ => tile::<1>(a, lda, panel, k, out, ldo, mask),
            }
            i += rows;
        }
    }
}
