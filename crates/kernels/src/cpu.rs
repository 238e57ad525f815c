//! f32 matrix products on strided host memory: a dot-product kernel for few rows; for many, the
//! panel kernel or `gemm`.
//!
//! Few rows (decoding) are bound by reading the weight: the kernel streams each output column's
//! weights (contiguous when the weight is stored `[d_out, d_in]`) once, against every row of `a`,
//! and splits the columns over all cores. Many rows are bound by arithmetic: a weight packed at
//! load runs [`crate::panels`]' micro-kernel; any other goes to `gemm`'s packed,
//! register-blocked kernels with explicit parallelism.

use crate::pool::{self, SendPtr};

/// Rows of `a` up to which the dot-product kernel runs; above it, `gemm`'s packing pays off.
pub const FEW_ROWS: usize = 16;

/// Output columns per thread in the many-row path are a multiple of this (gemm's register tile).
const GEMM_BAND: usize = 16;

/// A read-only strided f32 matrix: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A view of `data` (which starts at element `(0, 0)`); `None` if an element would fall
    /// outside it.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<Self> {
        let last = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * row_stride + (cols - 1) * col_stride + 1 };
        (last <= data.len()).then_some(Self { data, rows, cols, row_stride, col_stride })
    }

    /// A row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Where the view starts, and its strides: what identifies it.
    pub(crate) fn identity(&self) -> (usize, usize, usize) {
        (self.data.as_ptr() as usize, self.row_stride, self.col_stride)
    }

    /// Element `(r, c)`.
    pub(crate) fn get(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }

    /// The rows with a contiguous last axis, and the distance between them: the view's own
    /// memory when its columns are adjacent, otherwise a row-major copy.
    pub(crate) fn contiguous_rows(self) -> (std::borrow::Cow<'a, [f32]>, usize) {
        if self.col_stride == 1 {
            (std::borrow::Cow::Borrowed(self.data), self.row_stride)
        } else {
            (std::borrow::Cow::Owned(self.to_row_major()), self.cols)
        }
    }

    /// A row-major copy.
    fn to_row_major(self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend((0..self.cols).map(|c| self.data[r * self.row_stride + c * self.col_stride]));
        }
        out
    }
}

/// `a · b` as a row-major `[a.rows, b.cols]` vector.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "matmul: [{m}, {k}] · [{}, {n}]", b.rows);
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0f32; m * n];
    }
    // Every path below writes each of the m x n outputs (none reads or accumulates into them),
    // so the buffer is not zeroed first: on one thread, that was ~1.4% of a training step.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let ptr = SendPtr(out.as_mut_ptr());
    let threads = pool::team_size();
    if m <= FEW_ROWS && b.row_stride == 1 {
        // Column j of b is contiguous: out[i, j] = <row i of a, column j of b>.
        let (a_data, lda) = a.contiguous_rows();
        dot_products(&a_data, lda, m, b.data, b.col_stride, k, n, ptr, threads);
    } else if let Some(panels) = crate::panels::find(&b) {
        crate::panels::matmul(a, &panels, ptr, m * n);
    } else {
        // Each thread runs a sequential gemm on its own band of output columns: it packs only
        // its part of b and never waits on the others mid-product (gemm's own threading splits
        // the rows of a tall-thin prefill product poorly).
        let bands = if threads > 1 && n >= 2 * GEMM_BAND { threads.min(n / GEMM_BAND) } else { 1 };
        let width = n.div_ceil(bands).next_multiple_of(GEMM_BAND).min(n);
        let band = |j0: usize| {
            #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
            let ptr = ptr;
            let cols = width.min(n - j0);
            // SAFETY: `MatRef::new` checked that every element of a and b lies in its slice;
            // this band writes columns j0..j0+cols of the row-major m x n output, no other band does.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    ptr.0.add(j0),
                    1,
                    n as isize,
                    false,
                    a.data.as_ptr(),
                    a.col_stride as isize,
                    a.row_stride as isize,
                    b.data.as_ptr().add(j0 * b.col_stride),
                    b.col_stride as isize,
                    b.row_stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        if bands == 1 {
            band(0);
        } else {
            pool::run(n.div_ceil(width), &|i| band(i * width));
        }
    }
    // SAFETY: the capacity is m x n, and the branch taken above wrote every one of them.
    unsafe { out.set_len(m * n) };
    out
}

/// `a · w` for every `w` of `weights`, as row-major vectors: for a few rows and weights stored
/// output-major (the frozen layout), every product's bands of columns go to one job of the
/// pool, so the products a layer runs on one input (q, k and v; gate and up) wake the team and
/// wait for it once instead of once each; otherwise one [`matmul`] after another.
pub fn matmul_sharing_input(a: MatRef<'_>, weights: &[MatRef<'_>]) -> Vec<Vec<f32>> {
    let (m, k) = (a.rows, a.cols);
    let threads = pool::team_size();
    let one_job = m > 0 && m <= FEW_ROWS && k > 0 && threads > 1 && weights.iter().all(|w| w.rows == k && w.cols > 0 && w.row_stride == 1);
    if !one_job {
        return weights.iter().map(|&w| matmul(a, w)).collect();
    }
    let (a_data, lda) = a.contiguous_rows();
    let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| Vec::with_capacity(m * w.cols)).collect();
    // (product, first column, end column): each product in `threads * 4` bands, as `dot_products`
    // splits one.
    let mut bands = Vec::new();
    for (p, w) in weights.iter().enumerate() {
        let n = w.cols;
        let width = n.div_ceil(threads * 4).next_multiple_of(NR);
        bands.extend((0..n).step_by(width).map(|j0| (p, j0, (j0 + width).min(n))));
    }
    let ptrs: Vec<SendPtr<f32>> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    let kernel = Kernel::detect();
    for w in weights {
        assert!(a_data.len() >= (m - 1) * lda + k && w.data.len() >= (w.cols - 1) * w.col_stride + k);
    }
    pool::run(bands.len(), &|i| {
        let (p, j0, j1) = bands[i];
        let w = &weights[p];
        // SAFETY: the asserts above bound every index a band reads; bands write disjoint columns
        // of their product's m x n output, which has room for them.
        unsafe { kernel.band(a_data.as_ptr(), lda, m, w.data.as_ptr(), w.col_stride, k, j0, j1, ptrs[p].0, w.cols) }
    });
    for (out, w) in outs.iter_mut().zip(weights) {
        // SAFETY: the bands above wrote all m x n elements.
        unsafe { out.set_len(m * w.cols) };
    }
    outs
}

/// `out ← a · b`, or `out += a · b` with `accumulate`, `out` row-major `[a.rows, b.cols]`, on
/// the calling thread with `gemm`: for callers that already split their work over the pool
/// (attention's blocks of queries).
pub(crate) fn matmul_here(out: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(k == b.rows && out.len() >= m * n, "matmul_here: [{m}, {k}] · [{}, {n}] into {}", b.rows, out.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: `MatRef::new` checked that every element of a and b lies in its slice, and the
    // assert that the row-major m x n output fits in `out`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out[i * n + j] = Σ_p a[i * lda + p] · bt[j * ldb + p]` for `i < m`, `j < n`, the columns split
/// into bands over `threads` threads (a few bands each, so an uneven core still finishes in time).
#[allow(clippy::too_many_arguments)]
/// `out` points to room for `m * n` floats, written (never read) here.
pub(crate) fn dot_products(a: &[f32], lda: usize, m: usize, bt: &[f32], ldb: usize, k: usize, n: usize, out: SendPtr<f32>, threads: usize) {
    assert!(a.len() >= (m - 1) * lda + k && bt.len() >= (n - 1) * ldb + k);
    let kernel = Kernel::detect();
    let run = |j0: usize, j1: usize| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
        let out = out;
        // SAFETY: the asserts above bound every index the band reads; bands write disjoint columns.
        unsafe { kernel.band(a.as_ptr(), lda, m, bt.as_ptr(), ldb, k, j0, j1, out.0, n) }
    };
    let bands = if threads <= 1 || n < 64 { 1 } else { threads * 4 };
    let width = n.div_ceil(bands).next_multiple_of(NR);
    if bands == 1 {
        run(0, n);
    } else {
        pool::run(n.div_ceil(width), &|band| run(band * width, ((band + 1) * width).min(n)));
    }
}

/// How many weight rows ahead the one-row kernel asks for cache lines. The hardware prefetchers
/// stop at 4 KB page boundaries, which a stream of ~2.3 KB weight rows crosses every other row;
/// asking two rows ahead keeps the stream going across them (SmolLM2's batch-1 decode,
/// alternated builds: 0.70–0.74 → 0.76 of the bandwidth bound).
const ROW_PREFETCH: usize = 2;

/// Columns of `b` in one register tile (rows of `a`: up to `MAX_ROWS` of each kernel).
const NR: usize = 4;

/// Copy a tile's `R` rows of sums into the first rows of `dst` (`R <= M`, checked when called).
fn put<const R: usize, const M: usize>(dst: &mut [[f32; NR]; M], tile: [[f32; NR]; R]) {
    dst[..R].copy_from_slice(&tile);
}

/// The widest SIMD this CPU has, found at run time (the binary is built for the baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Self::Avx2Fma;
            }
        }
        Self::Portable
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn band(self, a: *const f32, lda: usize, m: usize, bt: *const f32, ldb: usize, k: usize, j0: usize, j1: usize, out: *mut f32, ldo: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => x86::band_avx512(a, lda, m, bt, ldb, k, j0, j1, out, ldo),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma => x86::band_avx2(a, lda, m, bt, ldb, k, j0, j1, out, ldo),
            // aarch64 always has fused multiply-add; elsewhere it would be a libm call.
            Self::Portable => band_body::<{ cfg!(target_arch = "aarch64") }, 8>(a, lda, m, bt, ldb, k, j0, j1, out, ldo),
        }
    }
}

/// The x86 kernels: one macro writes the same tile loop for 8-lane AVX2 and 16-lane AVX-512.
/// Each tile keeps `MR x NR` vector accumulators in registers and reads every weight once; a
/// single input row (batch-1 decoding) reads one weight row at a time instead: measured on
/// SmolLM2's 210 products, 4 interleaved rows streamed 23-27 GB/s where one sequential row
/// streamed 27-33 GB/s on the same host.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{NR, ROW_PREFETCH};
    use std::arch::x86_64::*;

    macro_rules! dot_kernel {
        ($band:ident, $tile:ident, $row:ident, $feature:literal, $v:ty, $lanes:expr, $max_rows:expr, $zero:ident, $load:ident, $fma:ident, $add:ident, $sum:ident) => {
            #[target_feature(enable = $feature)]
            unsafe fn $tile<const MR: usize>(rows: &[*const f32; MR], cols: &[*const f32; NR], k: usize, ldb: usize) -> [[f32; NR]; MR] {
                let mut acc: [[$v; NR]; MR] = [[$zero(); NR]; MR];
                let k_vec = k - k % $lanes;
                let mut p = 0;
                while p < k_vec {
                    // Ask early for the same stretch of the next tile's columns (NR columns on).
                    for c in 0..NR {
                        _mm_prefetch::<_MM_HINT_T0>(cols[c].wrapping_add(p + NR * ldb) as *const i8);
                    }
                    let b = [$load(cols[0].add(p)), $load(cols[1].add(p)), $load(cols[2].add(p)), $load(cols[3].add(p))];
                    for r in 0..MR {
                        let a = $load(rows[r].add(p));
                        for c in 0..NR {
                            acc[r][c] = $fma(a, b[c], acc[r][c]);
                        }
                    }
                    p += $lanes;
                }
                let mut out = [[0.0f32; NR]; MR];
                for r in 0..MR {
                    for c in 0..NR {
                        let mut sum = $sum(acc[r][c]);
                        for q in k_vec..k {
                            sum = (*rows[r].add(q)).mul_add(*cols[c].add(q), sum);
                        }
                        out[r][c] = sum;
                    }
                }
                out
            }

            /// One input row against weight rows `j0..j1`, each read start to end before the
            /// next (so a band is one sequential stream, which the hardware prefetchers follow
            /// best), with four accumulators across `k` to hide the multiply-add latency.
            #[target_feature(enable = $feature)]
            unsafe fn $row(a: *const f32, bt: *const f32, ldb: usize, k: usize, j0: usize, j1: usize, out: *mut f32) {
                const STEP: usize = 4 * $lanes;
                let k_step = k - k % STEP;
                let k_vec = k - k % $lanes;
                for j in j0..j1 {
                    let w = bt.add(j * ldb);
                    let mut acc = [$zero(); 4];
                    let mut p = 0;
                    while p < k_step {
                        // One prefetch per 64-byte line of this step, `ROW_PREFETCH` rows on.
                        for line in (0..STEP).step_by(16) {
                            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(p + line + ROW_PREFETCH * ldb) as *const i8);
                        }
                        for (u, acc) in acc.iter_mut().enumerate() {
                            *acc = $fma($load(a.add(p + u * $lanes)), $load(w.add(p + u * $lanes)), *acc);
                        }
                        p += STEP;
                    }
                    while p < k_vec {
                        acc[0] = $fma($load(a.add(p)), $load(w.add(p)), acc[0]);
                        p += $lanes;
                    }
                    let mut sum = $sum($add($add(acc[0], acc[1]), $add(acc[2], acc[3])));
                    for q in k_vec..k {
                        sum = (*a.add(q)).mul_add(*w.add(q), sum);
                    }
                    *out.add(j) = sum;
                }
            }

            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $band(
                a: *const f32,
                lda: usize,
                m: usize,
                bt: *const f32,
                ldb: usize,
                k: usize,
                j0: usize,
                j1: usize,
                out: *mut f32,
                ldo: usize,
            ) {
                if m == 1 {
                    return $row(a, bt, ldb, k, j0, j1, out);
                }
                let mut j = j0;
                while j < j1 {
                    let nr = (j1 - j).min(NR);
                    // A tile at the right edge repeats its last column (computed, not stored).
                    let cols: [*const f32; NR] = std::array::from_fn(|c| bt.add((j + c.min(nr - 1)) * ldb));
                    let mut i = 0;
                    while i < m {
                        let mr = (m - i).min($max_rows);
                        let row = |r: usize| a.add((i + r) * lda);
                        let mut sums = [[0.0f32; NR]; $max_rows];
                        match mr {
                            1 => super::put(&mut sums, $tile::<1>(&[row(0)], &cols, k, ldb)),
                            2 => super::put(&mut sums, $tile::<2>(&[row(0), row(1)], &cols, k, ldb)),
                            3 => super::put(&mut sums, $tile::<3>(&[row(0), row(1), row(2)], &cols, k, ldb)),
                            _ => super::put(&mut sums, $tile::<4>(&[row(0), row(1), row(2), row(3)], &cols, k, ldb)),
                        }
                        for (r, sums) in sums.iter().enumerate().take(mr) {
                            for (c, &sum) in sums.iter().enumerate().take(nr) {
                                *out.add((i + r) * ldo + j + c) = sum;
                            }
                        }
                        i += mr;
                    }
                    j += NR;
                }
            }
        };
    }

    #[inline(always)]
    unsafe fn zero256() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load256(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn fma256(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add256(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum256(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs)))
    }
    #[inline(always)]
    unsafe fn zero512() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load512(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn fma512(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add512(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    // 16 registers: 2 x 4 accumulators + 4 weights + 1 input. 32 registers: 4 x 4 + 4 + 1.
    dot_kernel!(band_avx2, tile_avx2, row_avx2, "avx2,fma", __m256, 8, 2, zero256, load256, fma256, add256, sum256);
    dot_kernel!(band_avx512, tile_avx512, row_avx512, "avx512f", __m512, 16, 4, zero512, load512, fma512, add512, sum512);
}

#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FUSED {
        a.mul_add(b, acc)
    } else {
        a * b + acc
    }
}

/// Rows of `a` in one tile of the portable kernel.
const MR: usize = 2;

/// Columns `j0..j1` of the product, in `MR x NR` tiles of `L`-lane partial sums. Plain Rust that
/// the compiler vectorises for whatever features the calling function enables. Tiles at the
/// edges repeat their last row/column (computed, not stored), so one tile shape serves all.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn band_body<const FUSED: bool, const L: usize>(
    a: *const f32,
    lda: usize,
    m: usize,
    bt: *const f32,
    ldb: usize,
    k: usize,
    j0: usize,
    j1: usize,
    out: *mut f32,
    ldo: usize,
) {
    let k_vec = k - k % L;
    let mut j = j0;
    while j < j1 {
        let nr = (j1 - j).min(NR);
        let cols: [*const f32; NR] = std::array::from_fn(|c| bt.add((j + c.min(nr - 1)) * ldb));
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            let rows: [*const f32; MR] = std::array::from_fn(|r| a.add((i + r.min(mr - 1)) * lda));
            let mut acc = [[[0.0f32; L]; NR]; MR];
            let mut p = 0;
            while p < k_vec {
                let bv: [[f32; L]; NR] = std::array::from_fn(|c| std::ptr::read_unaligned(cols[c].add(p) as *const [f32; L]));
                for r in 0..MR {
                    let av = std::ptr::read_unaligned(rows[r].add(p) as *const [f32; L]);
                    for c in 0..NR {
                        for l in 0..L {
                            acc[r][c][l] = madd::<FUSED>(av[l], bv[c][l], acc[r][c][l]);
                        }
                    }
                }
                p += L;
            }
            for r in 0..mr {
                for c in 0..nr {
                    let mut sum = lane_sum(acc[r][c]);
                    for q in k_vec..k {
                        sum = madd::<FUSED>(*rows[r].add(q), *cols[c].add(q), sum);
                    }
                    *out.add((i + r) * ldo + j + c) = sum;
                }
            }
            i += MR;
        }
        j += NR;
    }
}

/// Pairwise sum of the lanes (the rounding of a tree, not of a long chain).
#[inline(always)]
fn lane_sum<const L: usize>(mut v: [f32; L]) -> f32 {
    let mut width = L;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            v[l] += v[l + width];
        }
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive f64 product of row-major matrices.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            }
        }
        out
    }

    fn values(len: usize, salt: u64) -> Vec<f32> {
        let mut state = salt.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64], k: usize, what: &str) {
        // Each sum has k terms of magnitude <= 1: an f32 error bound that scales with sqrt(k).
        let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: {g} vs {w}");
        }
    }

    #[test]
    fn both_layouts_and_both_paths_match_a_naive_f64_product() {
        for &(m, k, n) in &[(1, 1, 1), (1, 7, 5), (2, 9, 3), (3, 17, 13), (5, 33, 70), (16, 64, 129), (17, 31, 19), (40, 100, 37)] {
            let a = values(m * k, (m * 31 + k) as u64);
            let b = values(k * n, (n * 17 + k) as u64);
            let want = reference(&a, &b, m, k, n);
            // b row-major [k, n] (gemm path), and the same b stored as its transpose [n, k].
            let kn = matmul(MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap());
            assert_close(&kn, &want, k, &format!("[{m},{k}]x[{k},{n}] kn"));
            let bt: Vec<f32> = (0..n).flat_map(|j| (0..k).map(move |p| (j, p))).map(|(j, p)| b[p * n + j]).collect();
            let nk = matmul(MatRef::row_major(&a, m, k).unwrap(), MatRef::new(&bt, k, n, 1, k).unwrap());
            assert_close(&nk, &want, k, &format!("[{m},{k}]x[{k},{n}] nk"));
            // a given column-major (a strided view) takes the same paths.
            let at: Vec<f32> = (0..k).flat_map(|p| (0..m).map(move |i| (i, p))).map(|(i, p)| a[i * k + p]).collect();
            let strided = matmul(MatRef::new(&at, m, k, 1, m).unwrap(), MatRef::new(&bt, k, n, 1, k).unwrap());
            assert_close(&strided, &want, k, &format!("[{m},{k}]x[{k},{n}] strided a"));
        }
    }

    /// Products sharing an input, in one job or one after another, are each the naive product:
    /// output-major weights with padded rows (the frozen layout), odd sizes, 1 to 17 rows (17
    /// goes product by product), and a row-major weight among them (also product by product).
    #[test]
    fn products_sharing_an_input_match_the_naive_products() {
        for &(m, k) in &[(1, 1), (1, 64), (3, 17), (8, 33), (16, 70), (17, 31)] {
            let a = values(m * k, (m * 7 + k) as u64);
            let widths = [5, 64, 129];
            let bs: Vec<Vec<f32>> = widths.iter().map(|&n| values(k * n, (n * 13 + k) as u64)).collect();
            // Each weight stored [n, k] with 3 floats of padding after every row.
            let stride = k + 3;
            let stored: Vec<Vec<f32>> = widths
                .iter()
                .zip(&bs)
                .map(|(&n, b)| (0..n).flat_map(|j| (0..stride).map(move |p| (j, p))).map(|(j, p)| if p < k { b[p * n + j] } else { f32::NAN }).collect())
                .collect();
            let frozen: Vec<MatRef> = widths.iter().zip(&stored).map(|(&n, bt)| MatRef::new(bt, k, n, 1, stride).unwrap()).collect();
            let a_ref = MatRef::row_major(&a, m, k).unwrap();
            for (p, out) in matmul_sharing_input(a_ref, &frozen).iter().enumerate() {
                assert_close(out, &reference(&a, &bs[p], m, k, widths[p]), k, &format!("[{m},{k}]x[{k},{}] in one job", widths[p]));
            }
            let mixed = [frozen[0], MatRef::row_major(&bs[1], k, widths[1]).unwrap()];
            for (p, out) in matmul_sharing_input(a_ref, &mixed).iter().enumerate() {
                assert_close(out, &reference(&a, &bs[p], m, k, widths[p]), k, &format!("[{m},{k}]x[{k},{}] mixed layouts", widths[p]));
            }
        }
    }

    /// The calling thread's product writes `a · b` over whatever `out` held, or adds it.
    #[test]
    fn matmul_here_writes_or_accumulates_the_naive_product() {
        for &(m, k, n) in &[(1, 1, 1), (3, 64, 7), (48, 64, 132), (17, 0, 5), (5, 33, 70)] {
            let (a, b) = (values(m * k, m as u64 + 3), values(k * n, n as u64 + 5));
            let want = reference(&a, &b, m, k, n);
            let bt: Vec<f32> = (0..n).flat_map(|j| (0..k).map(move |p| (j, p))).map(|(j, p)| b[p * n + j]).collect();
            let mut out = vec![7.0f32; m * n];
            matmul_here(&mut out, MatRef::row_major(&a, m, k).unwrap(), MatRef::new(&bt, k, n, 1, k).unwrap(), false);
            assert_close(&out, &want, k.max(1), &format!("[{m},{k}]x[{k},{n}] written"));
            matmul_here(&mut out, MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap(), true);
            let twice: Vec<f64> = want.iter().map(|w| 2.0 * w).collect();
            assert_close(&out, &twice, 2 * k.max(1), &format!("[{m},{k}]x[{k},{n}] accumulated"));
        }
    }

    #[test]
    fn every_simd_kernel_this_cpu_has_matches_the_portable_one() {
        // One row (the sequential kernel) and several (the tiles); k with a remainder after
        // every unrolled step, and a weight row stride longer than k.
        for (m, k, n) in [(5, 77, 23), (1, 77, 23), (1, 64 + 48 + 3, 9), (1, 5, 3), (3, 131, 6)] {
            let ldb = k + 3;
            let a = values(m * k, 1);
            let bt = values(n * ldb, 2);
            let run = |kernel: Kernel| {
                let mut out = vec![0.0f32; m * n];
                unsafe { kernel.band(a.as_ptr(), k, m, bt.as_ptr(), ldb, k, 0, n, out.as_mut_ptr(), n) };
                out
            };
            let portable = run(Kernel::Portable);
            let detected = run(Kernel::detect());
            for (p, d) in portable.iter().zip(&detected) {
                assert!((p - d).abs() <= 1e-5 * (1.0 + p.abs()), "[{m},{k}]x[{k},{n}]: {p} vs {d}");
            }
        }
    }

    #[test]
    fn a_view_past_its_slice_is_refused() {
        let data = vec![0.0f32; 6];
        assert!(MatRef::new(&data, 2, 3, 3, 1).is_some());
        assert!(MatRef::new(&data, 2, 4, 3, 1).is_none());
        assert!(MatRef::new(&data, 3, 3, 3, 1).is_none());
    }
}
