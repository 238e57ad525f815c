//! Frozen weights' memory in 2 MB pages.
//!
//! At batch-1 decoding every product streams its weight from memory once, and that stream is
//! the whole step's cost. In the 4 KB pages an allocation gets by default it crosses a page, and
//! needs another TLB entry, every 4 KB; in transparent huge pages, every 2 MB. Linux grants those
//! to memory that asks (`madvise(MADV_HUGEPAGE)`; `madvise` is the usual THP mode, where nothing
//! else gets them). SmolLM2's 210 decode products over the loader's weights, paired in one
//! process on a 2-core AMD EPYC Zen 4 VM: 26.7 and 26.9 GB/s in 4 KB pages, 29.5 and 30.7 in
//! 2 MB pages (medians of 40 passes, two runs).
//!
//! Only the whole 2 MB pages of a buffer can be huge, so a weight is placed from a 2 MB boundary
//! in a buffer that reaches the next boundary after it: once written, its last page holds up to
//! 2 MB of memory it does not use. Weights under [`MIN_BYTES`] (whose rounding would cost more
//! than it gains) keep ordinary pages, and `IAPT_HUGE_PAGES=off` turns it off. Elsewhere than
//! Linux the buffer is a plain one.

/// A transparent huge page (x86-64 and arm64 with 4 KB base pages).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_PAGE: usize = 2 << 20;

/// Weights from this size on are placed in huge pages: SmolLM2's attention and MLP projections
/// (1.4–3.6 MB) and its embedding; its key and value projections (0.45 MB) are not.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const MIN_BYTES: usize = 1 << 20;

/// A buffer with room for `len` floats from `offset` on (the rest is never read); on Linux, for
/// `len` floats of at least [`MIN_BYTES`], those floats start on a 2 MB boundary and lie in pages
/// the kernel is asked to back with 2 MB ones. The caller writes all `len` floats (their values
/// here are not promised).
pub(crate) fn buffer(len: usize) -> (Vec<f32>, usize) {
    #[cfg(target_os = "linux")]
    if len * 4 >= MIN_BYTES && !crate::switched_off("IAPT_HUGE_PAGES") {
        return linux::buffer(len);
    }
    (vec![0.0; len], 0)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::HUGE_PAGE;

    /// The base page this placement is for: 2 MB pages are made of 4 KB ones (with 16 or 64 KB
    /// base pages the huge page is larger, and the ranges below would not be whole pages).
    const PAGE: usize = 4096;

    pub(super) fn buffer(len: usize) -> (Vec<f32>, usize) {
        // SAFETY: sysconf only reads a system setting.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != PAGE as libc::c_long {
            return (vec![0.0; len], 0);
        }
        let span = (len * 4).next_multiple_of(HUGE_PAGE);
        // Zeroed, so the allocator maps fresh pages for it where it can and nothing is touched.
        let mut buffer = vec![0.0f32; (span + HUGE_PAGE) / 4];
        let base = buffer.as_mut_ptr() as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let (first, end) = (base.next_multiple_of(PAGE), (base + buffer.len() * 4) & !(PAGE - 1));
        // SAFETY: both ranges are whole base pages (4 KB, checked above) inside `buffer`'s
        // allocation, which this function owns. MADV_DONTNEED releases any pages the allocator
        // touched (memory it reused, which calloc clears by writing), so the buffer's slack
        // holds no memory and its aligned span faults in afresh, as huge pages; pages read after
        // it hold zeros (private anonymous memory) or, from an exotic allocator, whatever they
        // held: any bit pattern is an f32, and the caller writes every float it reads. Failures
        // only leave 4 KB pages.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
            libc::madvise(start as *mut libc::c_void, span, libc::MADV_HUGEPAGE);
        }
        (buffer, (start - base) / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_holds_its_floats_from_the_offset() {
        for len in [0, 1, 1000, MIN_BYTES / 4 - 1, MIN_BYTES / 4, 3 * HUGE_PAGE / 4 + 5] {
            let (buffer, offset) = buffer(len);
            assert!(buffer.len() >= offset + len, "{len}: {} floats from {offset}", buffer.len());
        }
    }

    /// x86-64 Linux always has 4 KB base pages, which this placement is for.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn large_buffers_start_on_a_huge_page_and_end_on_one() {
        for len in [MIN_BYTES / 4, HUGE_PAGE / 4, 3 * HUGE_PAGE / 4 + 5] {
            let (mut buffer, offset) = linux::buffer(len);
            let start = buffer.as_ptr() as usize + offset * 4;
            assert_eq!(start % HUGE_PAGE, 0, "{len} floats");
            assert!(buffer.len() * 4 >= offset * 4 + (len * 4).next_multiple_of(HUGE_PAGE), "{len} floats");
            // The span is ordinary memory: written and read back.
            buffer[offset..offset + len].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            assert!(buffer[offset..offset + len].iter().enumerate().all(|(i, v)| *v == i as f32));
        }
        let (_, offset) = buffer(MIN_BYTES / 4 - 1);
        assert_eq!(offset, 0, "small weights keep an ordinary buffer");
    }
}
