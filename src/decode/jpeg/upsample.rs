//! `jdsample.c`'s upsampling: fancy (triangle) where libjpeg uses it, box otherwise. (To be written.)
