//! Which backends run [`crate::cpu`]'s kernels, and the glue to their tensor types.
//!
//! burn-ndarray and burn-flex keep f32 tensors in host memory that can be read in place; their
//! autodiff wrappers get a backward node whose only gradient is the input's, `dy · wᵀ` (run on the
//! same kernels), and the fused kernels' nodes of [`crate::grad`] through [`on_autodiff`]. A
//! backend is recognised by its tensor type at run time: the generic model code calls one
//! function on every backend, and only these four take the fast path.

use crate::cpu::{self, MatRef};
use crate::host::{self, HostView};
use burn::tensor::backend::BackendTypes;
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};
use burn_ndarray::{NdArray, NdArrayTensor};
use std::any::{Any, TypeId};

/// The inner backends, and the autodiff backends over them that training uses.
type NdArrayCpu = NdArray<f32>;
type NdArrayAutodiff = Autodiff<NdArrayCpu>;
type FlexAutodiff = Autodiff<Flex>;

/// A tensor primitive of the autodiff backend over `I`.
pub(crate) type AutodiffPrimitive<I> = <Autodiff<I> as BackendTypes>::FloatTensorPrimitive;

/// Whether `B` is one of the autodiff CPU backends (the ones [`on_autodiff`] runs).
pub(crate) fn autodiff<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>() || TypeId::of::<B>() == TypeId::of::<FlexAutodiff>()
}

/// Whether `tensor` is on an autodiff CPU backend and in the graph: a parameter that takes
/// gradients or anything computed from one (`is_require_grad` is true for the first only).
pub(crate) fn tracked<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    let primitive = tensor.clone().into_primitive().tensor();
    if TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>() {
        cast::<_, AutodiffPrimitive<NdArrayCpu>>(primitive).is_some_and(|p| p.is_tracked())
    } else if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        cast::<_, AutodiffPrimitive<Flex>>(primitive).is_some_and(|p| p.is_tracked())
    } else {
        false
    }
}

/// Whether `tensor` is on an autodiff CPU backend and its values can be read on the host (f32,
/// no negative strides): for ops that consume their input and so cannot fall back afterwards.
pub(crate) fn readable_on_autodiff<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    let primitive = tensor.clone().into_primitive().tensor();
    let readable = |inner: &dyn Any| host::with_primitive_view(inner, |_| ()).is_some();
    if TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>() {
        cast::<_, AutodiffPrimitive<NdArrayCpu>>(primitive).is_some_and(|p| readable(&p.primitive))
    } else if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        cast::<_, AutodiffPrimitive<Flex>>(primitive).is_some_and(|p| readable(&p.primitive))
    } else {
        false
    }
}

/// An operation with its own backward node on the autodiff backend over any inner CPU backend
/// `I`: `None` when it cannot take these inputs (the caller then runs burn's ops).
pub(crate) trait HostOp<const N: usize> {
    fn run<I: Backend>(self, inputs: [AutodiffPrimitive<I>; N]) -> Option<AutodiffPrimitive<I>>;
}

/// `op` on `inputs` when `B` is an autodiff CPU backend; `None` elsewhere.
pub(crate) fn on_autodiff<B: Backend, const N: usize, O: HostOp<N>>(op: O, inputs: [B::FloatTensorPrimitive; N]) -> Option<B::FloatTensorPrimitive> {
    if TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>() {
        cast(op.run::<NdArrayCpu>(cast(inputs)?)?)
    } else if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        cast(op.run::<Flex>(cast(inputs)?)?)
    } else {
        None
    }
}

/// A product on one inner backend's primitives: `None` when the kernels cannot take it (a dtype
/// other than f32, negative strides), so the caller falls back to burn's matmul.
type InnerMatmul<I> =
    fn(<I as BackendTypes>::FloatTensorPrimitive, <I as BackendTypes>::FloatTensorPrimitive) -> Option<<I as BackendTypes>::FloatTensorPrimitive>;

/// Whether [`matmul`] handles `B` (for f32 tensors).
pub fn supported<B: Backend>() -> bool {
    let float = TypeId::of::<B::FloatTensorPrimitive>();
    float == TypeId::of::<NdArrayTensor>()
        || float == TypeId::of::<FlexTensor>()
        || TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>()
        || TypeId::of::<B>() == TypeId::of::<FlexAutodiff>()
}

/// Whether `B` looks rows of a [`frozen_weight`] up in place: burn-ndarray's `select` (burn's
/// `embedding`) copies only the rows it picks, and so does its autodiff wrapper; flex's first
/// makes the whole strided tensor contiguous, a copy of all of it per lookup.
pub fn looks_up_frozen_rows_in_place<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<NdArrayTensor>() || TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>()
}

/// `x · w` on the kernels when `B` is one of the supported backends and the tensors suit them.
pub fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let x = x.into_primitive().tensor();
    let w = w.into_primitive().tensor();
    let float = TypeId::of::<B::FloatTensorPrimitive>();
    let out: B::FloatTensorPrimitive = if float == TypeId::of::<NdArrayTensor>() {
        cast(host_matmul::<NdArrayTensor>(cast(x)?, cast(w)?)?)?
    } else if float == TypeId::of::<FlexTensor>() {
        cast(host_matmul::<FlexTensor>(cast(x)?, cast(w)?)?)?
    } else if TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>() {
        cast(autodiff_matmul::<NdArrayCpu>(cast(x)?, cast(w)?, host_matmul::<NdArrayTensor>)?)?
    } else if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        cast(autodiff_matmul::<Flex>(cast(x)?, cast(w)?, host_matmul::<FlexTensor>)?)?
    } else {
        return None;
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// Floats of padding after each stored row of a frozen weight (one cache line). A weight whose
/// rows are a multiple of 1–2 KB apart maps the rows `gemm` packs together onto the same few
/// cache sets: SmolLM2's down projection (rows of 1536 floats) ran at 61 GFLOP/s on one core,
/// and at 87–95 with rows 1552 floats apart.
pub const ROW_PADDING: usize = 16;

/// A frozen `[rows, cols]` weight from row-major `values`: on the CPU backends the kernels
/// run, stored with rows [`ROW_PADDING`] floats longer than `cols` and viewed without the
/// padding (the same values, shape and results for every op; only the products' speed
/// differs), from a 2 MB boundary in 2 MB pages where [`crate::huge_pages`] places it; elsewhere
/// a plain tensor.
pub fn frozen_weight<B: Backend>(values: Vec<f32>, rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    assert_eq!(values.len(), rows * cols, "frozen_weight: {} values for [{rows}, {cols}]", values.len());
    if !crate::enabled() || !supported::<B>() || rows == 0 || cols == 0 {
        return Tensor::from_data(burn::tensor::TensorData::new(values, [rows, cols]), device);
    }
    // Rows `stride` floats apart from `offset` on in `buffer` (2 MB pages: crate::huge_pages).
    let stride = cols + ROW_PADDING;
    let len = rows * stride;
    let (mut buffer, offset) = crate::huge_pages::buffer(len);
    for (dst, src) in buffer[offset..offset + len].chunks_exact_mut(stride).zip(values.chunks_exact(cols)) {
        dst[..cols].copy_from_slice(src);
        dst[cols..].fill(0.0);
    }
    drop(values);
    // The tensor is a view of the buffer (no copy): burn-ndarray's slice would copy the view it
    // cuts, so its tensor is built on the sliced array itself; flex's on a layout.
    let ndarray = TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<NdArrayTensor>();
    if ndarray || TypeId::of::<B>() == TypeId::of::<NdArrayAutodiff>() {
        let array = ndarray::Array1::from_vec(buffer).into_shared().slice_move(ndarray::s![offset..offset + len]);
        let array = array.into_shape_with_order((rows, stride)).expect("a contiguous buffer of rows x stride floats");
        let inner = NdArrayTensor::from(array.slice_move(ndarray::s![.., ..cols]).into_dyn());
        register_panels(&inner);
        let primitive = if ndarray { cast(inner) } else { cast(AutodiffPrimitive::<NdArrayCpu>::new(inner)) };
        return Tensor::from_primitive(TensorPrimitive::Float(primitive.expect("the backend's own tensor type")));
    }
    // Flex, or autodiff over it (`supported` above).
    let whole = buffer.len();
    let layout = burn_flex::Layout::new(burn::tensor::Shape::new([rows, cols]), vec![stride as isize, 1], offset);
    let inner = FlexTensor::from_data(burn::tensor::TensorData::new(buffer, [whole])).with_layout(layout);
    register_panels(&inner);
    let flex = TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>();
    let primitive = if flex { cast(inner) } else { cast(AutodiffPrimitive::<Flex>::new(inner)) };
    Tensor::from_primitive(TensorPrimitive::Float(primitive.expect("the backend's own tensor type")))
}

/// Pack a frozen `[out, in]` weight (an inference backend's own tensor) into panels for the
/// many-row products, which see it transposed (`[in, out]`, `crate::panels`).
fn register_panels(inner: &dyn Any) {
    if !crate::panels::available() {
        return;
    }
    host::with_primitive_view(inner, |v| {
        if let (&[rows, cols], &[stride, 1]) = (v.shape.as_slice(), v.strides.as_slice()) {
            if let Some(view) = MatRef::new(v.data, cols, rows, 1, stride) {
                crate::panels::register(inner, &view);
            }
        }
    });
}

/// Move a value to the type it is known (by `TypeId`) to have.
fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>().and_then(Option::take)
}

/// `x · w` on an inference CPU backend's primitives (`P` is `NdArrayTensor` or `FlexTensor`),
/// both read in place.
fn host_matmul<P: 'static>(x: P, w: P) -> Option<P> {
    let out = host::with_primitive_view(&x, |x| {
        host::with_primitive_view(&w, |w| {
            let (a, b) = (matrix(&x)?, matrix(&w)?);
            Some((cpu::matmul(a, b), [a.rows(), b.cols()]))
        })
    })???;
    host::primitive_from_vec(out.0, &out.1)
}

/// A 2-D view as a matrix.
fn matrix<'a>(view: &HostView<'a>) -> Option<MatRef<'a>> {
    match (view.shape.as_slice(), view.strides.as_slice()) {
        (&[rows, cols], &[row_stride, col_stride]) => MatRef::new(view.data, rows, cols, row_stride, col_stride),
        _ => None,
    }
}

/// `x · w` on an autodiff backend over `I`, with `w` constant: the node's backward gives `x` the
/// gradient `dy · wᵀ` and `w` none (a `w` that requires a gradient is refused).
fn autodiff_matmul<I: Backend>(
    x: <Autodiff<I> as BackendTypes>::FloatTensorPrimitive,
    w: <Autodiff<I> as BackendTypes>::FloatTensorPrimitive,
    inner: InnerMatmul<I>,
) -> Option<<Autodiff<I> as BackendTypes>::FloatTensorPrimitive> {
    if w.is_tracked() {
        return None;
    }
    let w = w.primitive;
    let y = inner(x.primitive.clone(), w.clone())?;
    Some(match FrozenMatmul.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(FrozenWeight { w, inner }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    })
}

/// The backward node of a product with a frozen weight.
#[derive(Debug)]
struct FrozenMatmul;

/// What the backward pass keeps: the weight, and the product that runs on it.
struct FrozenWeight<I: Backend> {
    w: I::FloatTensorPrimitive,
    inner: InnerMatmul<I>,
}

impl<I: Backend> Clone for FrozenWeight<I> {
    fn clone(&self) -> Self {
        Self { w: self.w.clone(), inner: self.inner }
    }
}

impl<I: Backend> std::fmt::Debug for FrozenWeight<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenWeight").field("w", &self.w).finish()
    }
}

impl<I: Backend> Backward<I, 1> for FrozenMatmul {
    type State = FrozenWeight<I>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let FrozenWeight { w, inner } = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let wt = I::float_transpose(w);
            inner(grad.clone(), wt.clone()).unwrap_or_else(|| I::float_matmul(grad, wt))
        });
    }
}
