//! AVX2 versions of the per-block and per-row kernels (IDCT, upsampling, colour), behind one
//! dispatcher and tested equal to the plain ones. (To be written.)
