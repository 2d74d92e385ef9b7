//! A bounds-checked, strided f32 matrix product on top of the `gemm` crate (the same kernels
//! candle's CPU matmul uses, with AVX-512 picked at run time).

/// A read-only strided view of a matrix inside a slice: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix whose rows are `row_stride` apart.
    pub fn rows(data: &'a [f32], row_stride: usize) -> Self {
        MatRef {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix whose rows are `row_stride` apart.
    pub fn transposed(data: &'a [f32], row_stride: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: row_stride,
        }
    }
}

/// Index one past the last element a `rows x cols` strided matrix touches.
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// `dst = scale * lhs · rhs` (or `dst += scale * lhs · rhs` when `accumulate`), with `lhs`
/// `m x k`, `rhs` `k x n` and `dst` `m x n` row-major with rows `dst_row_stride` apart.
/// Single-threaded: callers parallelize over rows.
///
/// # Panics
/// If a view does not fit in its slice (an internal shape bug, never user input: shapes are
/// validated when the weights load).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
) {
    assert!(extent(m, n, dst_row_stride, 1) <= dst.len(), "matmul: dst");
    assert!(
        extent(m, k, lhs.row_stride, lhs.col_stride) <= lhs.data.len(),
        "matmul: lhs"
    );
    assert!(
        extent(k, n, rhs.row_stride, rhs.col_stride) <= rhs.data.len(),
        "matmul: rhs"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the three asserts above prove that every element gemm reads or writes lies
    // inside its slice; `dst` is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        // rhs stored as its transpose (n x k row-major).
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 1.0).collect();
        let mut dst = vec![1f32; m * (n + 2)];
        matmul(
            m,
            n,
            k,
            &mut dst,
            n + 2,
            true,
            MatRef::rows(&a, k),
            MatRef::transposed(&bt, k),
            2.0,
        );
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum();
                assert_eq!(dst[i * (n + 2) + j], 1.0 + 2.0 * s);
            }
            assert_eq!(dst[i * (n + 2) + n], 1.0);
        }
    }
}
