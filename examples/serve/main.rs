//! The demo app: a web page and a JSON API around a fastai ViT classifier, like the Gradio
//! app the fastai lesson deploys.
//!
//! ```text
//! cargo run --release --example serve -- [--weights FILE] [--labels FILE] [--device DEVICE]
//!     [--addr 127.0.0.1:8080] [--max-body-bytes N] [--workers N] [--queue N]
//!     [--max-pixels N] [--top-k N] [--body-timeout-secs N] [--queue-timeout-ms MS]
//!     [--inference-timeout-ms MS] [--max-batch N] [--batch-window-ms MS] [--decoders N]
//!     [--shutdown-delay-ms MS]
//! ```
//!
//! The flags are parsed in `args.rs`; those every example shares are in `examples/common/mod.rs`.
//!
//! Open `http://127.0.0.1:8080/`, or `curl --data-binary @photo.jpg http://127.0.0.1:8080/predict`.
//! The routes, the batching and the limits are described in `app.rs`. The server listens at
//! once (`/health` answers, `/ready` says 503) and turns ready once the model is loaded and
//! one warm-up forward pass has run. Ctrl-C or SIGTERM turns `/ready` to 503 and stops the
//! server gracefully (requests in flight finish).

mod app;
mod args;

use std::future::IntoFuture;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    // Listen first, so that the liveness probe answers (and readiness says 503) while the
    // model loads.
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let local = listener.local_addr().unwrap_or(args.addr);
    let state = AppState::loading(config.clone());
    // SIGTERM or Ctrl-C: /ready answers 503 at once; the listener stays open
    // --shutdown-delay-ms longer (load balancers see the 503 and stop sending), then closes;
    // requests in flight finish.
    let shutdown = app::drain_on(
        state.clone(),
        shutdown_signal(),
        tokio::time::sleep(Duration::from_millis(args.shutdown_delay_ms)),
    );
    let server = tokio::spawn(
        axum::serve(listener, app::app(state.clone()))
            .with_graceful_shutdown(shutdown)
            .into_future(),
    );
    let start = Instant::now();
    let model = args.model.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let learner = model.load()?;
        app::warm_up(&learner)?;
        Ok::<_, fastai_infer::Error>(learner)
    })
    .await;
    let learner = match loaded {
        Ok(Ok(l)) => Arc::new(l),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("error: loading the model failed: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let load_time = start.elapsed();
    eprintln!(
        "serving {} ({} classes, {}, loaded and warmed up in {:.2} s) on http://{local}/ \
         (workers {}, max batch {}, batch window {} ms, queue {}, max body {} bytes)",
        args.model.weights.display(),
        learner.vocab().len(),
        args.model.device,
        load_time.as_secs_f64(),
        config.workers,
        config.max_batch,
        config.batch_window.as_millis(),
        config.queue,
        config.max_body_bytes,
    );
    state.set_learner(learner, load_time);
    match server.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: server failed: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::from(1)
        }
    }
}
