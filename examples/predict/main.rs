//! Predict image files with a fastai ViT classifier, as `learn.predict` would.
//!
//! ```text
//! cargo run --release --example predict -- [--weights FILE] [--labels FILE] [--top-k N]
//!     [--json] [--dump-input DIR] [--max-pixels N] [--exif-orientation] PATH...
//! ```
//!
//! Directories are walked recursively in sorted order. Exit codes: 0 every image predicted;
//! 1 some input failed (the others still ran); 2 bad arguments, weights or labels. The logic
//! lives in `cli.rs`, which `tests/cli.rs` runs in-process.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = cli::run(
        std::env::args_os().skip(1),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}
