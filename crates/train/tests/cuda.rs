//! The GPU parity tests of `gpu.rs` on CUDA (`cargo test -p iapt-train --features cuda --test
//! cuda`; scripts/gpu-check.sh builds and runs them). One source for both GPU backends: the file
//! picks the backend from the `cuda` feature.

#[path = "gpu.rs"]
mod gpu;
