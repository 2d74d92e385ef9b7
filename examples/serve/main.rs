//! The demo app: a web page and a JSON API around a fastai ViT classifier, like the Gradio
//! app the fastai lesson deploys.
//!
//! ```text
//! cargo run --release --example serve -- [--weights FILE] [--labels FILE]
//!     [--addr 127.0.0.1:8080] [--max-body-bytes N] [--workers N] [--queue N]
//!     [--max-pixels N] [--top-k N] [--body-timeout-secs N]
//! ```
//!
//! Open `http://127.0.0.1:8080/`, or `curl --data-binary @photo.jpg http://127.0.0.1:8080/predict`.
//! The routes and the limits are described in `app.rs`. Ctrl-C or SIGTERM stops the server
//! gracefully (requests in flight finish).

mod app;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fastai_infer::candle_core::Device;
use fastai_infer::Learner;

use app::{AppState, Config};

const USAGE: &str = "\
usage: serve [--weights FILE] [--labels FILE] [--addr HOST:PORT] [--max-body-bytes N]
             [--workers N] [--queue N] [--max-pixels N] [--top-k N] [--body-timeout-secs N]

  --weights FILE        fastai's state_dict as safetensors or as learn.save's .pth
                        (default: the shipped weights/pets_vit_tiny.safetensors)
  --labels FILE         vocab, one label per line (default: the vocab in the weights' metadata)
  --addr HOST:PORT      address to listen on (default 127.0.0.1:8080)
  --max-body-bytes N    largest request body; larger gets 413 (default 10485760)
  --workers N           inferences run at once (default 2)
  --queue N             requests that may wait for a worker; more get 503 (default 64)
  --max-pixels N        largest image, width x height; larger gets 400 (default 50000000)
  --top-k N             classes listed in top_k (default 3)
  --body-timeout-secs N time an admitted request has to send its body; slower gets 408
                        (default 30)

routes: GET / (the page), POST /predict (multipart field \"image\" or the raw body),
        GET /health, GET /examples/NAME";

struct Args {
    weights: PathBuf,
    labels: Option<PathBuf>,
    addr: SocketAddr,
    config: Config,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        weights: Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/pets_vit_tiny.safetensors"),
        labels: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        config: Config::default(),
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let Some(flag) = a.to_str() else {
            return Err(format!("unexpected argument {a:?}"));
        };
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let text = || {
            value
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{flag}: not valid UTF-8: {value:?}"))
        };
        let number = |min: u64| -> Result<u64, String> {
            text()?
                .parse::<u64>()
                .ok()
                .filter(|&n| n >= min)
                .ok_or_else(|| format!("{flag} needs an integer >= {min}, got {value:?}"))
        };
        let size = |min: u64| -> Result<usize, String> {
            usize::try_from(number(min)?).map_err(|_| format!("{flag}: {value:?} is too large"))
        };
        match flag {
            "--weights" => args.weights = PathBuf::from(&value),
            "--labels" => args.labels = Some(PathBuf::from(&value)),
            "--addr" => {
                args.addr = text()?.parse().map_err(|e| {
                    format!("--addr needs HOST:PORT (an IP address), got {value:?}: {e}")
                })?
            }
            "--max-body-bytes" => args.config.max_body_bytes = size(1)?,
            "--workers" => args.config.workers = size(1)?,
            "--queue" => args.config.queue = size(0)?,
            "--max-pixels" => args.config.max_pixels = number(1)?,
            "--top-k" => args.config.top_k = size(1)?,
            "--body-timeout-secs" => args.config.body_timeout = Duration::from_secs(number(1)?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let device = Device::Cpu;
    let learner = match &args.labels {
        Some(labels) => Learner::load_with_labels(&args.weights, labels, &device),
        None => Learner::load(&args.weights, &device),
    };
    let learner = match learner {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            return ExitCode::from(2);
        }
    };
    let local = listener.local_addr().unwrap_or(args.addr);
    eprintln!(
        "serving {} ({} classes) on http://{local}/ (workers {}, queue {}, max body {} bytes)",
        args.weights.display(),
        learner.vocab().len(),
        args.config.workers,
        args.config.queue,
        args.config.max_body_bytes,
    );
    let router = app::app(AppState::new(learner, args.config));
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
