//! `frozen_matmul` equals burn's own matmul on every CPU backend that runs the kernels, forward
//! and input gradient, over random shapes (odd sizes, 1-16 rows and up to 300), every weight layout.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use iapt_kernels::{accelerated, frozen_matmul, frozen_weight, kernel_products, ROW_PADDING};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `(m, k, n)`: decode-like rows 1-16, prefill/training-like rows up to 300, odd sizes throughout.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut shapes = vec![(1, 1, 1), (1, 576, 192), (8, 576, 1536), (16, 31, 65), (17, 33, 7), (300, 64, 96)];
    for _ in 0..12 {
        let m = if rng.random_bool(0.5) { rng.random_range(1..=16) } else { rng.random_range(17..=300) };
        shapes.push((m, rng.random_range(1..=200), rng.random_range(1..=200)));
    }
    shapes
}

fn max_relative_error<B: Backend>(got: Tensor<B, 2>, want: Tensor<B, 2>) -> f32 {
    let largest = |t: Tensor<B, 2>| t.abs().max().into_data().convert::<f32>().to_vec::<f32>().unwrap()[0];
    let scale = largest(want.clone());
    let diff = largest(got - want);
    diff / scale.max(1e-12)
}

/// How a weight `[k, n]` is stored.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// `[n, k]` memory viewed transposed.
    Transposed,
    /// The same with padded rows (`frozen_weight`): how the loader stores projections.
    PaddedTransposed,
    RowMajor,
}

fn weight<B: Backend>(k: usize, n: usize, layout: Layout, device: &B::Device) -> Tensor<B, 2> {
    match layout {
        Layout::Transposed => Tensor::<B, 2>::random([n, k], Distribution::Normal(0.0, 1.0), device).transpose(),
        Layout::PaddedTransposed => {
            let values = Tensor::<B, 2>::random([n, k], Distribution::Normal(0.0, 1.0), device).into_data().to_vec::<f32>().unwrap();
            frozen_weight::<B>(values, n, k, device).transpose()
        }
        Layout::RowMajor => Tensor::random([k, n], Distribution::Normal(0.0, 1.0), device),
    }
}

/// Every shape with every weight layout: `(x, w, what)`.
fn cases<B: Backend>(device: &B::Device) -> Vec<(Tensor<B, 2>, Tensor<B, 2>, String)> {
    let mut cases = Vec::new();
    for (m, k, n) in shapes() {
        for layout in [Layout::Transposed, Layout::PaddedTransposed, Layout::RowMajor] {
            let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
            cases.push((x, weight::<B>(k, n, layout, device), format!("[{m},{k}]x[{k},{n}] {layout:?}")));
        }
    }
    cases
}

/// `frozen_weight` holds the values it was given, in rows stored `ROW_PADDING` floats apart on
/// the inference backends (on autodiff the same values; the inner tensor is the same kind).
fn padded_weight_holds_its_values<B: Backend>(rows: usize, cols: usize) {
    let device = B::Device::default();
    let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
    let w = frozen_weight::<B>(values.clone(), rows, cols, &device);
    assert_eq!(w.dims(), [rows, cols]);
    assert_eq!(w.clone().into_data().to_vec::<f32>().unwrap(), values);
    assert_eq!(
        w.clone().transpose().into_data().to_vec::<f32>().unwrap(),
        Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(values, [rows, cols]), &device).transpose().into_data().to_vec::<f32>().unwrap()
    );
    if let Some(strides) = iapt_kernels::host::with_view(&w, |v| v.strides.clone()) {
        assert_eq!(strides, vec![cols + ROW_PADDING, 1], "{}", std::any::type_name::<B>());
    }
}

#[test]
fn padded_weights_hold_their_values_on_every_cpu_backend() {
    // Small, and large enough (1.2 MB) to be placed in 2 MB pages on Linux.
    for (rows, cols) in [(5, 37), (600, 501)] {
        padded_weight_holds_its_values::<NdArray>(rows, cols);
        padded_weight_holds_its_values::<Flex>(rows, cols);
        padded_weight_holds_its_values::<Autodiff<NdArray>>(rows, cols);
        padded_weight_holds_its_values::<Autodiff<Flex>>(rows, cols);
    }
    // The strides are checked where a view can be read: make sure that is the case for both.
    assert!(iapt_kernels::host::with_view(&frozen_weight::<NdArray>(vec![1.0; 4], 2, 2, &Default::default()), |v| v.strides.clone()).is_some());
    assert!(iapt_kernels::host::with_view(&frozen_weight::<Flex>(vec![1.0; 4], 2, 2, &Default::default()), |v| v.strides.clone()).is_some());
}

/// On Linux with 4 KB base pages (always so on x86-64) a weight of a megabyte or more starts on a
/// 2 MB boundary, the start of its huge pages.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn large_frozen_weights_start_on_a_huge_page() {
    assert!(
        !matches!(std::env::var("IAPT_HUGE_PAGES").as_deref(), Ok("off" | "0" | "false")),
        "this test checks the 2 MB placement that IAPT_HUGE_PAGES=off turns off: run it without that setting"
    );
    let on_huge_page = |address: Option<usize>| address.expect("a weight readable in place").is_multiple_of(2 << 20);
    let values = vec![0.25f32; 600 * 501];
    let ndarray = frozen_weight::<NdArray>(values.clone(), 600, 501, &Default::default());
    let flex = frozen_weight::<Flex>(values, 600, 501, &Default::default());
    assert!(on_huge_page(iapt_kernels::host::with_view(&ndarray, |v| v.data.as_ptr() as usize)), "ndarray");
    assert!(on_huge_page(iapt_kernels::host::with_view(&flex, |v| v.data.as_ptr() as usize)), "flex");
}

fn forward_matches<B: Backend>() {
    assert!(accelerated::<B>(), "{} should run the kernels", std::any::type_name::<B>());
    for (x, w, what) in cases::<B>(&B::Device::default()) {
        let (served, packed) = (kernel_products(), iapt_kernels::panels::products());
        let fast = frozen_matmul(x.clone(), w.clone());
        assert!(kernel_products() > served, "the kernels served {what}");
        // Many rows with a weight the loader stored run on its packed panels (AVX-512 CPUs).
        let on_panels = iapt_kernels::panels::available() && x.dims()[0] > 16 && what.ends_with("PaddedTransposed");
        assert_eq!(iapt_kernels::panels::products() > packed, on_panels, "panels used for {what}");
        let err = max_relative_error(fast, x.matmul(w));
        assert!(err <= 1e-5, "{what}: relative error {err}");
    }
}

fn input_gradient_matches<B: burn::tensor::backend::AutodiffBackend>() {
    assert!(accelerated::<B>(), "{} should run the kernels", std::any::type_name::<B>());
    let device = B::Device::default();
    for (x, w, what) in cases::<B>(&device) {
        let upstream = Tensor::<B, 2>::random([x.dims()[0], w.dims()[1]], Distribution::Normal(0.0, 1.0), &device);
        let grad_of = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let served = kernel_products();
            let y = if fast { frozen_matmul(x.clone(), w.clone()) } else { x.clone().matmul(w.clone()) };
            assert!(!fast || kernel_products() > served, "the kernels served the fast product");
            let grads = (y * upstream.clone()).sum().backward();
            (x.grad(&grads).expect("x has a gradient"), w.grad(&grads))
        };
        let ((fast, fast_w), (slow, _)) = (grad_of(true), grad_of(false));
        let err = max_relative_error(fast, slow);
        assert!(err <= 1e-5, "{what}: input-gradient relative error {err}");
        assert!(fast_w.is_none(), "a frozen weight gets no gradient");
    }
}

#[test]
fn ndarray_forward_matches_burn_matmul() {
    forward_matches::<NdArray>();
}

#[test]
fn flex_forward_matches_burn_matmul() {
    forward_matches::<Flex>();
}

#[test]
fn autodiff_ndarray_input_gradient_matches_burn_matmul() {
    forward_matches::<Autodiff<NdArray>>();
    input_gradient_matches::<Autodiff<NdArray>>();
}

#[test]
fn autodiff_flex_input_gradient_matches_burn_matmul() {
    forward_matches::<Autodiff<Flex>>();
    input_gradient_matches::<Autodiff<Flex>>();
}

/// A weight that requires a gradient is not frozen: it takes burn's matmul and gets its gradient.
#[test]
fn a_trainable_weight_keeps_its_gradient() {
    type B = Autodiff<NdArray>;
    let device = Default::default();
    let x = Tensor::<B, 2>::random([3, 5], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<B, 2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let grads = frozen_matmul(x.clone(), w.clone()).sum().backward();
    let got = w.grad(&grads).expect("a trainable weight gets its gradient");
    // d(sum(x w))/dw = xᵀ · 1.
    let want = x.inner().transpose().matmul(Tensor::ones([3, 4], &device));
    assert!(max_relative_error(got, want) <= 1e-6);
}
