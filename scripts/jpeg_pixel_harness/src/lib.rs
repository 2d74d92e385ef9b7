#![allow(dead_code, unused_imports, rustdoc::all)]
pub mod harness;
pub mod jpeg;
