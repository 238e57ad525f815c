//! Products with frozen weights, `x · W`, fast on the CPU backends.
//!
//! The backbone is frozen, so every projection is a product with a constant matrix whose only
//! gradient is the input's. burn 0.21's CPU backends run such products far from the machine's
//! limit (burn-ndarray packs the whole weight on every call; `gemm` runs one-row products on one
//! thread). [`frozen_matmul`] sends them to kernels that stream the weight from where it lies,
//! split the output over all cores, and pick SIMD at run time:
//! - a few rows (decoding): [`cpu`]'s dot-product kernel over a weight stored output-major
//!   (`[d_out, d_in]`, the checkpoints' own layout), bandwidth-bound;
//! - many rows (prefill, training): on AVX-512 CPUs, a micro-kernel over the weight packed once
//!   at load into column panels ([`panels`]); elsewhere, and for weights not packed, `gemm` with
//!   explicit parallelism.
//!
//! [`fused`] adds one-pass RMSNorm, SwiGLU gating, rotary embedding and causal attention for
//! the CPU backends (ndarray, flex), with backward nodes of their own under autodiff (`grad`). All of them split their work over [`pool`], a
//! team whose workers spin between jobs, so the ~200 products of a decode step do not each
//! wait for a sleeping thread to wake.
//!
//! Every other backend, a weight that takes gradients, or a dtype other than f32 runs burn's own
//! `matmul`: the same generic model code serves the GPU backends unchanged. The choice is made at
//! run time from the backend's type (see [`backends`]) rather than through a trait bound, so
//! `Module` derives and every `B: Backend` bound in the project stay as burn writes them.

pub mod backends;
pub mod bandwidth;
pub mod cpu;
pub mod fused;
mod grad;
pub mod host;
mod huge_pages;
pub mod low_rank;
pub mod panels;
pub mod pool;
mod simd;

pub use backends::{frozen_weight, looks_up_frozen_rows_in_place, ROW_PADDING};
use burn::tensor::{backend::Backend, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// `x · w` for `x` `[m, k]` and a frozen `w` `[k, n]` (any strides; `[d_out, d_in]` storage viewed
/// transposed is the fast one for few rows). On autodiff backends only `x` gets a gradient, so a
/// `w` that requires one goes to burn's matmul instead.
pub fn frozen_matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let [m, k] = x.dims();
    let [k2, _n] = w.dims();
    assert_eq!(k, k2, "frozen_matmul: x is [{m}, {k}] but w has {k2} rows");
    if x.dtype() != w.dtype() {
        // A backbone stored in half precision: the product runs in the weight's type (burn's
        // backends do not mix types in one op), the result comes back in the input's.
        let dtype = burn::tensor::FloatDType::from(x.dtype());
        return x.cast(burn::tensor::FloatDType::from(w.dtype())).matmul(w).cast(dtype);
    }
    if w.is_require_grad() || !enabled() {
        return x.matmul(w);
    }
    match backends::matmul::<B>(x.clone(), w.clone()) {
        Some(out) => {
            KERNEL_PRODUCTS.fetch_add(1, Ordering::Relaxed);
            out
        }
        None => x.matmul(w),
    }
}

/// `x · w` for `x` `[m, k]` and `w` `[k, n]` where both may take gradients (a tuner's own
/// factors): on the autodiff CPU backends a node whose backward runs the kernels too
/// (`dx = dy · wᵀ`, `dw = xᵀ · dy`); a frozen `w` goes to [`frozen_matmul`]; elsewhere burn's
/// matmul.
pub fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    if !backends::tracked(&w) {
        return frozen_matmul(x, w);
    }
    if enabled() {
        if let Some(out) = grad::matmul(&x, &w) {
            KERNEL_PRODUCTS.fetch_add(1, Ordering::Relaxed);
            return out;
        }
    }
    x.matmul(w)
}

static KERNEL_PRODUCTS: AtomicU64 = AtomicU64::new(0);

/// How many [`frozen_matmul`] and [`matmul`] calls the kernels have served in this process (the
/// rest ran burn's matmul): lets tests and benchmarks show which path ran.
pub fn kernel_products() -> u64 {
    KERNEL_PRODUCTS.load(Ordering::Relaxed)
}

/// Make the calling thread worker 0 of rayon's global pool (call it first thing in `main`, on the
/// thread that runs the model), for the burn ops that use rayon: they then start on this thread
/// instead of the caller parking while a worker wakes. (The kernels themselves run on [`pool`].)
/// Does nothing if the pool already exists.
pub fn use_this_thread_in_pool() {
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
}

/// Whether `B` runs [`frozen_matmul`] on these kernels (f32 tensors, frozen weight).
pub fn accelerated<B: Backend>() -> bool {
    enabled() && backends::supported::<B>()
}

/// `IAPT_KERNELS=off` sends every product to burn's matmul (to compare, or to rule the kernels out).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !switched_off("IAPT_KERNELS"))
}

/// Whether the environment variable `name` says `off` (or `0`, `false`).
pub fn switched_off(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok("off" | "0" | "false"))
}
