//! `jdcolor.c`'s colour conversion. (To be written.)
