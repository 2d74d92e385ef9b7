//! Huffman-coded scans, baseline and progressive (`jdhuff.c`, `jdphuff.c`). (To be written.)
