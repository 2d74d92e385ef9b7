//! The marker segments into a [`super::Frame`] and its [`super::Scan`]s (`jdmarker.c`,
//! `jdapimin.c`). (To be written.)
