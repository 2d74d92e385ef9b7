//! The demo app: a web page and a JSON API around a fastai ViT classifier, like the Gradio
//! app the fastai lesson deploys.
//!
//! ```text
//! cargo run --release --example serve -- [--weights FILE] [--labels FILE] [--device DEVICE]
//!     [--addr 127.0.0.1:8080] [--max-body-bytes N] [--workers N] [--queue N]
//!     [--max-pixels N] [--top-k N] [--body-timeout-secs N]
//! ```
//!
//! The flags are parsed in `args.rs`; those every example shares are in `examples/common/mod.rs`.
//!
//! Open `http://127.0.0.1:8080/`, or `curl --data-binary @photo.jpg http://127.0.0.1:8080/predict`.
//! The routes and the limits are described in `app.rs`. Ctrl-C or SIGTERM stops the server
//! gracefully (requests in flight finish).

mod app;
mod args;

use std::process::ExitCode;
use std::sync::Arc;

use app::AppState;
use args::common::EXIT_USAGE;
use args::Args;

/// Resolves when the process gets Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM (or a kill) stops the server.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = args::common::parse_or_exit();
    let config = args.config();
    let learner = match args.model.load() {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let local = listener.local_addr().unwrap_or(args.addr);
    eprintln!(
        "serving {} ({} classes, {}) on http://{local}/ (workers {}, queue {}, max body {} bytes)",
        args.model.weights.display(),
        learner.vocab().len(),
        args.model.device,
        config.workers,
        config.queue,
        config.max_body_bytes,
    );
    let router = app::app(AppState::new(learner, config));
    match axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::from(1)
        }
    }
}
