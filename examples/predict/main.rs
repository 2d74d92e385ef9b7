//! Predict image files with a fastai classifier, as `learn.predict` would.
//!
//! ```text
//! cargo run --release --example predict -- [--weights FILE] [--labels FILE] [--device DEVICE]
//!     [--top-k N] [--json] [--dump-input DIR] [--max-pixels N] [--exif-orientation] PATH...
//! ```
//!
//! Directories are walked recursively in sorted order. Exit codes: 0 every image predicted;
//! 1 some input failed (the others still ran); 2 bad arguments, weights, labels or device.
//! The logic lives in `cli.rs`, which `tests/cli.rs` runs in-process; the flags it shares with
//! the other examples are in `examples/common/mod.rs`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(cli::run_on_process_streams(std::env::args_os().skip(1)))
}
