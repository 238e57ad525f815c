//! `--backend ndarray|flex|wgpu|cuda`: the burn backend type a command runs on, chosen at run
//! time from [`BackendKind`].

pub use iapt_experiment::run_config::BackendKind;

/// CPU backends.
pub type NdArray = burn::backend::NdArray<f32>;
pub type Flex = burn::backend::Flex<f32, i32>;
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32>;
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// Run `$body` with `$B` bound to the chosen backend type and `$device` to its default device.
/// A macro because the body is generic code instantiated once per compiled-in backend.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::backend::BackendKind::Ndarray => {
                type $B = $crate::backend::NdArray;
                let $device = burn::tensor::Device::<$B>::default();
                $body
            }
            $crate::backend::BackendKind::Flex => {
                type $B = $crate::backend::Flex;
                let $device = burn::tensor::Device::<$B>::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendKind::Wgpu => {
                type $B = $crate::backend::Wgpu;
                let $device = burn::tensor::Device::<$B>::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                type $B = $crate::backend::Cuda;
                let $device = burn::tensor::Device::<$B>::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => {
                Err(anyhow::anyhow!("backend {:?} is not compiled into this binary; rebuild with `--features {}`", other, format!("{other:?}").to_lowercase()))
            }
        }
    }};
}

/// The first `n` devices of a backend, for multi-device training.
pub trait DeviceList: burn::tensor::backend::Backend {
    fn device_list(n: usize) -> Vec<Self::Device>;
}

/// The CPU backends have one device; "several" are the same CPU, which still exercises the
/// multi-device code path (each gets its own worker thread).
impl DeviceList for NdArray {
    fn device_list(n: usize) -> Vec<Self::Device> {
        vec![Default::default(); n]
    }
}

impl DeviceList for Flex {
    fn device_list(n: usize) -> Vec<Self::Device> {
        vec![Default::default(); n]
    }
}

#[cfg(feature = "wgpu")]
impl DeviceList for Wgpu {
    fn device_list(n: usize) -> Vec<Self::Device> {
        use burn::backend::wgpu::WgpuDevice;
        // wgpu's own choice (a discrete GPU first, a software adapter last), which exists
        // wherever any adapter does. Several wgpu devices are refused when the run config is
        // checked (burn 0.21's wgpu cannot copy tensors between devices), so none is listed.
        assert_eq!(n, 1, "several wgpu devices are refused by RunConfig::validate");
        vec![WgpuDevice::DefaultDevice]
    }
}

#[cfg(feature = "cuda")]
impl DeviceList for Cuda {
    fn device_list(n: usize) -> Vec<Self::Device> {
        (0..n).map(burn::backend::cuda::CudaDevice::new).collect()
    }
}
