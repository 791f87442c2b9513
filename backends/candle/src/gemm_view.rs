//! A strided matrix view over a slice and one `gemm` call over such views, shared by the CPU
//! kernels (`conv_cpu`, `attention_cpu`), which hand `gemm` their buffers without copies.

/// A matrix as `gemm` reads it: element (i, j) at `i·rs + j·cs` of `data`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `data` with rows `width` apart.
    pub fn rows(data: &'a [f32], width: usize) -> Self {
        Mat { data, rs: width, cs: 1 }
    }

    /// The transpose: the same data with its strides swapped.
    pub fn t(self) -> Self {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// One past the last element an `r × c` read touches (r, c > 0).
    fn end(&self, r: usize, c: usize) -> usize {
        (r - 1) * self.rs + (c - 1) * self.cs + 1
    }
}

/// The output buffer, shared by threads that write disjoint parts of it.
#[derive(Clone, Copy)]
pub struct SharedOut(*mut f32);

// SAFETY: the convolutions' bands that share one never write the same element.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Over `out`, which the caller keeps borrowed while threads write through it.
    pub fn new(out: &mut [f32]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// The element `i` places on; a method, so that closures capture the whole (Sync) wrapper.
    ///
    /// # Safety
    /// `i` lies inside the buffer.
    pub unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// Whose threads one product runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// This thread only: the caller is already one of many tasks on the pool.
    Caller,
    /// Every thread of the current rayon pool.
    Pool,
}

/// `dst (m × n, rows ld apart) = [dst +] beta · lhs (m × k) · rhs (k × n)`.
#[allow(clippy::too_many_arguments)]
pub fn product(
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    (m, n, k): (usize, usize, usize),
    beta: f32,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ld + n <= dst.len());
    // SAFETY: the assert above keeps every element of dst the product writes inside `dst`.
    unsafe { product_raw(dst.as_mut_ptr(), ld, accumulate, lhs, rhs, (m, n, k), beta, threads) }
}

/// [`product`] into `m` rows of `n` elements at `dst`, rows `ld` apart, for callers whose
/// threads write disjoint parts of one output (a slice per part would overlap the others).
///
/// # Safety
/// Every element `dst + i·ld + j` (i < m, j < n) is valid for writes, and no other thread
/// reads or writes it during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product_raw(
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    (m, n, k): (usize, usize, usize),
    beta: f32,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * ld), n).fill(0.0);
            }
        }
        return;
    }
    assert!(lhs.end(m, k) <= lhs.data.len() && rhs.end(k, n) <= rhs.data.len());
    let pool = rayon::current_num_threads();
    let parallelism = match threads {
        Threads::Pool if pool > 1 => gemm::Parallelism::Rayon(pool),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the assert above keeps every element gemm reads inside `lhs` and `rhs`; the caller
    // vouches for `dst`.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld as isize,
        accumulate,
        lhs.data.as_ptr(),
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.data.as_ptr(),
        rhs.cs as isize,
        rhs.rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        parallelism,
    )
}
