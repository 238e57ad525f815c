//! f32 tensors of the inference CPU backends (ndarray, flex) read in place and built from vectors.
//!
//! The fused kernels ([`crate::fused`]) read these tensors in place; their autodiff wrappers
//! read the inner tensors through the same functions.

use burn::tensor::{backend::Backend, Bool, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use burn_ndarray::NdArrayTensor;
use std::any::{Any, TypeId};

/// A strided f32 view: element `idx` at `data[Σ idx[i] * strides[i]]`.
pub struct HostView<'a> {
    pub data: &'a [f32],
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

impl HostView<'_> {
    /// The view's elements in row-major order.
    pub fn to_row_major(&self) -> Vec<f32> {
        let view = self;
        let n: usize = view.shape.iter().product();
        let mut out = Vec::with_capacity(n);
        let rank = view.shape.len();
        if rank == 0 {
            return vec![view.data[0]];
        }
        let inner = view.shape[rank - 1];
        let inner_stride = view.strides[rank - 1];
        let outer: usize = view.shape[..rank - 1].iter().product();
        let mut index = vec![0usize; rank - 1];
        for _ in 0..outer {
            let start: usize = index.iter().zip(&view.strides).map(|(i, s)| i * s).sum();
            if inner_stride == 1 {
                out.extend_from_slice(&view.data[start..start + inner]);
            } else {
                out.extend((0..inner).map(|c| view.data[start + c * inner_stride]));
            }
            for axis in (0..rank - 1).rev() {
                index[axis] += 1;
                if index[axis] < view.shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        out
    }

    /// The elements in row-major order: the view's own memory when it is laid out that way
    /// (no copy), otherwise a copy.
    pub fn row_major(&self) -> std::borrow::Cow<'_, [f32]> {
        let mut expected = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if size > 1 && stride != expected {
                return std::borrow::Cow::Owned(self.to_row_major());
            }
            expected *= size;
        }
        std::borrow::Cow::Borrowed(&self.data[..expected])
    }

    /// Whether the last axis is contiguous (what the kernels' inner loops need).
    pub fn inner_contiguous(&self) -> bool {
        self.strides.last().is_none_or(|&s| s == 1) || self.shape.last() == Some(&1)
    }
}

/// Whether `B` is an inference CPU backend whose tensors [`with_view`] can read.
pub fn readable<B: Backend>() -> bool {
    let float = TypeId::of::<B::FloatTensorPrimitive>();
    float == TypeId::of::<NdArrayTensor>() || float == TypeId::of::<FlexTensor>()
}

/// Run `f` on a view of `tensor`'s memory; `None` for other backends, dtypes, or negative strides.
pub fn with_view<B: Backend, const D: usize, R>(tensor: &Tensor<B, D>, f: impl FnOnce(HostView<'_>) -> R) -> Option<R> {
    if !readable::<B>() {
        return None;
    }
    with_primitive_view(&tensor.clone().into_primitive().tensor(), f)
}

/// [`with_view`] on a backend's own tensor primitive (an `NdArrayTensor` or a `FlexTensor`).
pub(crate) fn with_primitive_view<R>(primitive: &dyn Any, f: impl FnOnce(HostView<'_>) -> R) -> Option<R> {
    if let Some(t) = primitive.downcast_ref::<NdArrayTensor>() {
        let NdArrayTensor::F32(storage) = t else { return None };
        let view = storage.view();
        let (shape, strides) = (view.shape().to_vec(), view.strides().to_vec());
        let strides = non_negative(&strides)?;
        let span = span(&shape, &strides);
        // SAFETY: every element of the view lies within `span` elements of its first one.
        let data = unsafe { std::slice::from_raw_parts(view.as_ptr(), span) };
        return Some(f(HostView { data, shape, strides }));
    }
    let t = primitive.downcast_ref::<FlexTensor>()?;
    if t.dtype() != DType::F32 {
        return None;
    }
    let layout = t.layout();
    let (shape, strides) = (layout.shape().to_vec(), non_negative(layout.strides())?);
    let data = t.storage::<f32>().get(layout.start_offset()..)?;
    (span(&shape, &strides) <= data.len()).then(|| f(HostView { data, shape, strides }))
}

fn non_negative(strides: &[isize]) -> Option<Vec<usize>> {
    strides.iter().map(|&s| usize::try_from(s).ok()).collect()
}

/// Elements from the first to one past the last that `shape`/`strides` reach.
fn span(shape: &[usize], strides: &[usize]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    shape.iter().zip(strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
}

/// `tensor`'s values in row-major order, read in place; `None` unless [`readable`].
pub fn to_vec<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<Vec<f32>> {
    with_view(tensor, |v| v.to_row_major())
}

/// A bool tensor's values in row-major order, copied straight from ndarray's memory when it is
/// laid out that way (burn's `into_data` walks a bool tensor element by element: reading the
/// attention's valid flags that way took a sixth of decoding's attention at batch 8); through
/// `into_data` on every other backend or layout.
pub fn bool_values<B: Backend, const D: usize>(tensor: &Tensor<B, D, Bool>) -> Option<Vec<bool>> {
    let primitive = tensor.clone().into_primitive();
    if let Some(NdArrayTensor::Bool(storage)) = (&primitive as &dyn Any).downcast_ref::<NdArrayTensor>() {
        if let Some(values) = storage.view().as_slice() {
            return Some(values.to_vec());
        }
    }
    Tensor::<B, D, Bool>::from_primitive(primitive).into_data().to_vec().ok()
}

/// `buffer` `[b, heads, capacity, hd]` (row-major) with slots `start..start + n` overwritten by
/// `new` `[b, heads, n, hd]`, in place: the KV cache's decode write. `None` (and the buffer
/// handed back untouched) unless `B` is [`readable`] and nothing else holds the buffer.
pub fn write_slots<B: Backend>(buffer: Tensor<B, 4>, start: usize, new: &Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [b, heads, capacity, hd] = buffer.dims();
    let [nb, nheads, n, nhd] = new.dims();
    if !readable::<B>() || [nb, nheads, nhd] != [b, heads, hd] || start + n > capacity {
        return Err(buffer);
    }
    let Some(values) = to_vec(new) else { return Err(buffer) };
    write_slot_values(buffer, start, n, &values)
}

/// [`write_slots`] from host values `[b, heads, n, hd]` (row-major).
pub fn write_slot_values<B: Backend>(buffer: Tensor<B, 4>, start: usize, n: usize, values: &[f32]) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [b, heads, capacity, hd] = buffer.dims();
    if !readable::<B>() || start + n > capacity || values.len() != b * heads * n * hd {
        return Err(buffer);
    }
    let write = |dst: &mut [f32]| {
        for (row, src) in values.chunks_exact(n * hd).enumerate() {
            let offset = (row * capacity + start) * hd;
            dst[offset..offset + n * hd].copy_from_slice(src);
        }
    };
    let mut primitive = buffer.into_primitive().tensor();
    let written = with_unique_values_mut(&mut primitive, write).is_some();
    let buffer = Tensor::from_primitive(TensorPrimitive::Float(primitive));
    if written {
        Ok(buffer)
    } else {
        Err(buffer)
    }
}

/// `flags` `[rows, columns]` with column `column` set true in every row, in place for a
/// burn-ndarray tensor nothing else holds (the KV cache's decode step marks its new slot valid);
/// `Err` gives it back untouched otherwise.
pub fn set_column<B: Backend>(flags: Tensor<B, 2, Bool>, column: usize) -> Result<Tensor<B, 2, Bool>, Tensor<B, 2, Bool>> {
    let [_, columns] = flags.dims();
    let mut primitive = flags.into_primitive();
    let mut written = false;
    if let Some(NdArrayTensor::Bool(storage)) = (&mut primitive as &mut dyn Any).downcast_mut::<NdArrayTensor>() {
        if column < columns && storage.is_unique() && storage.view().is_standard_layout() {
            if let Some(values) = storage.ensure_owned().as_slice_mut() {
                values.iter_mut().skip(column).step_by(columns).for_each(|v| *v = true);
                written = true;
            }
        }
    }
    let flags = Tensor::from_primitive(primitive);
    if written {
        Ok(flags)
    } else {
        Err(flags)
    }
}

/// `f` on the values of `primitive` (an `NdArrayTensor` or a `FlexTensor`), row-major (exactly
/// its elements), written in place: `None` (and `f` not run) unless the tensor is f32, laid out row-major from its
/// buffer's start, and nothing else holds that buffer (a shared one would be copied first, or
/// its other holders would see the writes).
pub(crate) fn with_unique_values_mut<R>(primitive: &mut dyn Any, f: impl FnOnce(&mut [f32]) -> R) -> Option<R> {
    if let Some(NdArrayTensor::F32(storage)) = primitive.downcast_mut::<NdArrayTensor>() {
        if !storage.is_unique() || !storage.view().is_standard_layout() {
            return None;
        }
        return storage.ensure_owned().as_slice_mut().map(f);
    }
    let t = primitive.downcast_mut::<FlexTensor>()?;
    let row_major = t.dtype() == DType::F32 && t.is_contiguous() && t.layout().start_offset() == 0;
    if !row_major {
        return None;
    }
    // The storage may run past the tensor's last element.
    let len = t.layout().shape().to_vec().iter().product::<usize>();
    t.try_storage_mut::<f32>().and_then(|values| values.get_mut(..len)).map(f)
}

/// `tensor` with a new shape of as many elements, sharing its memory where burn would copy:
/// burn-ndarray 0.21 copies the whole tensor on every reshape (a view reshaped, then made
/// owned), which for a training step is every projection's input and output and the
/// `[n, vocab]` logits, each a fresh allocation the kernel must fault in. A contiguous f32
/// tensor of burn-ndarray (or its autodiff wrapper, whose backward reshapes the gradient back
/// the same way) gets a view of the same buffer here; every other case is burn's `reshape`.
pub fn reshape<B: Backend, const D1: usize, const D2: usize>(tensor: Tensor<B, D1>, shape: [usize; D2]) -> Tensor<B, D2> {
    let (from, to) = (tensor.dims().iter().product::<usize>(), shape.iter().product::<usize>());
    assert_eq!(from, to, "reshape of {:?} into {shape:?}: element counts differ", tensor.dims());
    if !crate::enabled() {
        return tensor.reshape(shape);
    }
    if readable::<B>() {
        // A quantized tensor keeps burn's reshape (`.tensor()` would dequantize it).
        if let TensorPrimitive::Float(primitive) = tensor.clone().into_primitive() {
            if let Ok(out) = reshape_primitive(primitive, &shape) {
                return Tensor::from_primitive(TensorPrimitive::Float(out));
            }
        }
    } else if crate::backends::autodiff::<B>() {
        if let Some(out) = crate::grad::reshape(&tensor, &shape) {
            return out;
        }
    }
    tensor.reshape(shape)
}

/// A burn-ndarray f32 tensor in standard (row-major, contiguous) layout, owned, as `shape`
/// without a copy; `Err` gives anything else back unchanged.
pub(crate) fn reshape_primitive<P: 'static>(primitive: P, shape: &[usize]) -> Result<P, P> {
    let mut slot = Some(primitive);
    let Some(tensor) = (&mut slot as &mut dyn Any).downcast_mut::<Option<NdArrayTensor>>() else {
        return Err(slot.expect("untouched"));
    };
    match tensor.take().expect("just placed") {
        NdArrayTensor::F32(storage) if storage.is_owned() && storage.view().is_standard_layout() => {
            let array = storage.into_owned().into_shape_with_order(ndarray::IxDyn(shape)).expect("a standard-layout array takes any shape of its size");
            let out: Box<dyn Any> = Box::new(NdArrayTensor::from(array));
            Ok(*out.downcast::<P>().expect("P is NdArrayTensor"))
        }
        other => {
            let back: Box<dyn Any> = Box::new(other);
            Err(*back.downcast::<P>().expect("P is NdArrayTensor"))
        }
    }
}

/// A tensor of `B` holding `values` in row-major `shape`; `None` unless [`readable`].
pub fn from_vec<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Option<Tensor<B, D>> {
    if !readable::<B>() {
        return None;
    }
    let primitive = primitive_from_vec::<B::FloatTensorPrimitive>(values, &shape)?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// An `NdArrayTensor` or a `FlexTensor` (whichever `P` is) holding `values` in row-major `shape`.
pub(crate) fn primitive_from_vec<P: 'static>(values: Vec<f32>, shape: &[usize]) -> Option<P> {
    let float = TypeId::of::<P>();
    let boxed: Box<dyn Any> = if float == TypeId::of::<NdArrayTensor>() {
        let array = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values).ok()?;
        Box::new(NdArrayTensor::from(array.into_shared()))
    } else if float == TypeId::of::<FlexTensor>() {
        Box::new(FlexTensor::from_data(TensorData::new(values, shape.to_vec())))
    } else {
        return None;
    };
    boxed.downcast::<P>().ok().map(|p| *p)
}

/// `Tensor::zeros(shape, device)`, built from a zeroed `Vec` on the CPU backends (autodiff
/// included): burn fills its zeros one element at a time (`TensorData::full`), which was ~3% of
/// the main thread's samples in a 128-token prefill (the KV cache's fresh buffers). Elsewhere
/// burn's own `zeros`, filled on the device.
pub fn zeros<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    if !crate::backends::supported::<B>() {
        return Tensor::zeros(shape, device);
    }
    Tensor::from_data(TensorData::new(vec![0.0f32; shape.iter().product()], shape), device)
}

/// 2-D f32 tensors held with views of their memory, for code that reads the same matrices many
/// times without going through a closure per read (a decode step's weights, the weights' probe).
/// The tensors are held, not borrowed: a view of a clone would be a copy for storage that cannot
/// be shared, so the pointers stay valid exactly as long as `self`.
pub struct HeldMatrices<B: Backend> {
    views: Vec<HeldView>,
    _held: Vec<B::FloatTensorPrimitive>,
}

/// Where a held matrix lies: `span` floats from `first`, `shape` and `strides` as [`HostView`]'s.
struct HeldView {
    first: *const f32,
    span: usize,
    shape: [usize; 2],
    strides: [usize; 2],
}

// SAFETY: the pointers are only read, while the tensors they point into are held.
unsafe impl Send for HeldView {}
unsafe impl Sync for HeldView {}

impl<B: Backend> HeldMatrices<B> {
    /// `None` unless every tensor can be read in place ([`readable`] backends, f32, non-negative
    /// strides): quantized or half-precision weights go elsewhere.
    pub fn new(tensors: &[Tensor<B, 2>]) -> Option<Self> {
        if !readable::<B>() {
            return None;
        }
        let held = tensors
            .iter()
            .map(|t| match t.clone().into_primitive() {
                TensorPrimitive::Float(primitive) => Some(primitive),
                TensorPrimitive::QFloat(_) => None,
            })
            .collect::<Option<Vec<_>>>()?;
        // Views of the held tensors themselves, which stay where they are on the heap.
        let views = held
            .iter()
            .map(|p| {
                with_primitive_view(p, |v| {
                    let (shape, strides) = (<[usize; 2]>::try_from(v.shape.as_slice()).ok()?, <[usize; 2]>::try_from(v.strides.as_slice()).ok()?);
                    Some(HeldView { first: v.data.as_ptr(), span: v.data.len(), shape, strides })
                })
                .flatten()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { views, _held: held })
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Matrix `i` as the tensor shows it.
    pub fn view(&self, i: usize) -> HostView<'_> {
        let v = &self.views[i];
        // SAFETY: `span` floats from `first` lie in the memory of a tensor `_held` keeps alive.
        let data = unsafe { std::slice::from_raw_parts(v.first, v.span) };
        HostView { data, shape: v.shape.to_vec(), strides: v.strides.to_vec() }
    }

    /// Matrix `i` for the products ([`crate::cpu`]).
    pub fn matrix(&self, i: usize) -> crate::cpu::MatRef<'_> {
        let v = &self.views[i];
        let view = self.view(i);
        crate::cpu::MatRef::new(view.data, v.shape[0], v.shape[1], v.strides[0], v.strides[1]).expect("a view's elements lie in its span")
    }
}

#[cfg(test)]
mod tests {
    use super::{primitive_from_vec, with_unique_values_mut, HostView};
    use burn_flex::FlexTensor;
    use burn_ndarray::NdArrayTensor;
    use std::borrow::Cow;

    /// The same tensor as burn's `zeros`: shape, dtype and values, on every CPU backend.
    #[test]
    fn zeros_are_burns_zeros() {
        use burn::tensor::Tensor;
        fn check<B: burn::tensor::backend::Backend>() {
            let device = Default::default();
            let (ours, burns) = (super::zeros::<B, 3>([2, 3, 5], &device), Tensor::<B, 3>::zeros([2, 3, 5], &device));
            assert_eq!(ours.dims(), burns.dims());
            assert_eq!(ours.dtype(), burns.dtype(), "{}", std::any::type_name::<B>());
            assert_eq!(ours.into_data().to_vec::<f32>().unwrap(), vec![0.0; 30]);
        }
        check::<burn_ndarray::NdArray>();
        check::<burn_flex::Flex>();
        check::<burn::backend::Autodiff<burn_ndarray::NdArray>>();
        check::<burn::backend::Autodiff<burn_flex::Flex>>();
    }

    /// The flags in row-major order whether read in place (row-major ndarray) or through
    /// `into_data` (a transposed view; the flex backend), on a pattern that tells rows apart.
    #[test]
    fn bool_values_are_the_flags_row_major() {
        use burn::tensor::{Bool, Tensor, TensorData};
        fn check<B: burn::tensor::backend::Backend>() {
            let flags: Vec<bool> = (0..12).map(|i| i % 3 == 0 || i == 7).collect();
            let t = Tensor::<B, 2, Bool>::from_data(TensorData::new(flags.clone(), [3, 4]), &Default::default());
            assert_eq!(super::bool_values(&t), Some(flags.clone()));
            let transposed: Vec<bool> = (0..12).map(|i| flags[(i % 3) * 4 + i / 3]).collect();
            assert_eq!(super::bool_values(&t.swap_dims(0, 1)), Some(transposed));
        }
        check::<burn_ndarray::NdArray>();
        check::<burn_flex::Flex>();
    }

    /// Written in place only when nothing else holds the buffer and it is laid out row-major.
    #[test]
    fn values_are_written_in_place_only_when_unique_and_row_major() {
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut unique: NdArrayTensor = primitive_from_vec(values.clone(), &[2, 3]).unwrap();
        assert_eq!(with_unique_values_mut(&mut unique, |v| v.to_vec()), Some(values.clone()));
        let shared = unique.clone();
        assert_eq!(with_unique_values_mut(&mut unique, |v| v.len()), None, "a shared buffer is left alone");
        drop(shared);
        assert!(with_unique_values_mut(&mut unique, |v| v[0] = 7.0).is_some(), "unique again");
        let array = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 3]), values.clone()).unwrap();
        let mut transposed = NdArrayTensor::from(array.reversed_axes().into_shared());
        assert_eq!(with_unique_values_mut(&mut transposed, |v| v.len()), None, "a transposed view is not row-major");
        let mut flex: FlexTensor = primitive_from_vec(values.clone(), &[3, 2]).unwrap();
        assert_eq!(with_unique_values_mut(&mut flex, |v| v.to_vec()), Some(values));
        let shared = flex.clone();
        assert_eq!(with_unique_values_mut(&mut flex, |v| v.len()), None, "a shared flex buffer is left alone");
        drop(shared);
    }

    /// A column of flags is set in place on a burn-ndarray tensor nothing else holds; a shared
    /// one (or another backend's) comes back untouched for the caller's `slice_assign`.
    #[test]
    fn a_column_is_set_in_place_only_when_unique() {
        use burn::tensor::{Bool, Tensor, TensorData};
        type Nd = burn_ndarray::NdArray;
        let flags = |device: &_| Tensor::<Nd, 2, Bool>::from_data(TensorData::new(vec![false; 8], [2, 4]), device);
        let set = super::set_column(flags(&Default::default()), 2).expect("a unique ndarray tensor");
        assert_eq!(super::bool_values(&set).unwrap(), vec![false, false, true, false, false, false, true, false]);
        let held = flags(&Default::default());
        let other = held.clone();
        let back = super::set_column(held, 1).expect_err("a shared buffer is left alone");
        assert!(super::bool_values(&back).unwrap().iter().chain(&super::bool_values(&other).unwrap()).all(|&v| !v));
        assert!(super::set_column(flags(&Default::default()), 4).is_err(), "a column past the end");
        let flex = Tensor::<burn_flex::Flex, 2, Bool>::from_data(TensorData::new(vec![false; 8], [2, 4]), &Default::default());
        assert!(super::set_column(flex, 0).is_err());
    }

    /// Matrices held are viewed where they lie, as many times as asked, after the tensors they
    /// came from are dropped; a backend that cannot be read in place gets `None`.
    #[test]
    fn held_matrices_view_the_tensors_memory() {
        use burn::tensor::{Tensor, TensorData};
        type Nd = burn_ndarray::NdArray;
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let t = Tensor::<Nd, 2>::from_data(TensorData::new(values.clone(), [2, 3]), &Default::default());
        let held = super::HeldMatrices::new(&[t.clone(), t.transpose()]).unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!(held.view(0).to_row_major(), values);
        assert_eq!(held.view(1).to_row_major(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let m = held.matrix(1);
        assert_eq!((m.rows(), m.cols(), m.get(2, 1)), (3, 2, 5.0));
        let tracked = Tensor::<burn::backend::Autodiff<Nd>, 2>::from_data(TensorData::new(values, [2, 3]), &Default::default());
        assert!(super::HeldMatrices::new(&[tracked]).is_none(), "an autodiff tensor is not read in place");
    }

    /// A row-major view is read in place; any other layout is copied into row-major order.
    #[test]
    fn row_major_reads_in_place_only_what_is_laid_out_row_major() {
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let view = |shape: &[usize], strides: &[usize]| HostView { data: &data, shape: shape.to_vec(), strides: strides.to_vec() };
        // [2, 3, 4] row-major, and with a size-1 axis whose stride does not matter.
        for v in [view(&[2, 3, 4], &[12, 4, 1]), view(&[2, 1, 12], &[12, 99, 1])] {
            let rows = v.row_major();
            assert!(matches!(rows, Cow::Borrowed(_)), "{:?}", v.shape);
            assert_eq!(&rows[..], &data[..]);
        }
        // The transpose [4, 3] of a [3, 4] matrix, and a view that skips elements.
        let transposed = view(&[4, 3], &[1, 4]);
        let rows = transposed.row_major();
        assert!(matches!(rows, Cow::Owned(_)));
        assert_eq!(&rows[..], &[0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
        let skipping = view(&[2, 2], &[8, 2]);
        assert_eq!(&skipping.row_major()[..], &[0.0, 2.0, 8.0, 10.0]);
    }
}
