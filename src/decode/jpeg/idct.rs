//! `jidctint.c`'s integer IDCT (`JDCT_ISLOW`), dequantization included. (To be written.)
