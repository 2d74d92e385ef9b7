//! serve's command line: the flags every example shares (`examples/common/mod.rs`) and the
//! server's own limits. A module of its own so that `tests/serve.rs` can parse command lines
//! without starting a server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use super::app::Config;

#[path = "../common/mod.rs"]
pub mod common;

use common::{at_least, MaxPixelsArg, ModelArgs, TopKArg};

/// serve's `--max-pixels` default ([`Config::default`]'s), lower than predict's: a server
/// decodes images from anyone.
pub const DEFAULT_MAX_PIXELS: &str = "50000000";

const ROUTES: &str = "\
routes: GET / (the page), POST /predict (multipart field \"image\" or the raw body),
        GET /health (liveness), GET /ready (readiness), GET /metrics (Prometheus),
        GET /examples/NAME

Refused requests get JSON {\"error\"}: 400 an image that does not decode or is over
--max-pixels, 408 a body slower than --body-timeout-secs, 413 a body over --max-body-bytes,
503 (with Retry-After) while the model loads, when the queue is full or when no worker took
the request within --queue-timeout-ms, 504 when the inference outlasts --inference-timeout-ms.

exit codes: 0 stopped by Ctrl-C or SIGTERM after the requests in flight, 1 the server failed,
2 bad arguments, weights, labels or device, or an address it cannot listen on";

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "serve",
    about = "A web page and a JSON API around a fastai classifier, like the lesson's Gradio app",
    after_help = ROUTES,
    args_override_self = true,
    mut_arg("max_pixels", |a| a.default_value(DEFAULT_MAX_PIXELS))
)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// address to listen on
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// largest request body in bytes (multipart overhead included); larger gets 413
    #[arg(long, value_name = "N", default_value_t = Config::default().max_body_bytes,
          value_parser = at_least::<usize, 1>)]
    pub max_body_bytes: usize,

    /// forward passes (batches) run at once (each also uses the model's own threads)
    #[arg(long, value_name = "N", default_value_t = Config::default().workers,
          value_parser = at_least::<usize, 1>)]
    pub workers: usize,

    /// requests admitted beyond workers x max-batch; more get 503
    #[arg(long, value_name = "N", default_value_t = Config::default().queue,
          value_parser = at_least::<usize, 0>)]
    pub queue: usize,

    #[command(flatten)]
    pub max_pixels: MaxPixelsArg,

    #[command(flatten)]
    pub top_k: TopKArg,

    /// seconds an admitted request has to send its body; slower gets 408
    #[arg(long, value_name = "N", default_value_t = Config::default().body_timeout.as_secs(),
          value_parser = at_least::<u64, 1>)]
    pub body_timeout_secs: u64,

    /// milliseconds a decoded request may wait for a worker; longer gets 503
    #[arg(long, value_name = "MS", default_value_t = Config::default().queue_timeout.as_millis() as u64,
          value_parser = at_least::<u64, 1>)]
    pub queue_timeout_ms: u64,

    /// milliseconds the work on a request (decode, transforms, forward pass) may take; longer
    /// gets 504
    #[arg(long, value_name = "MS", default_value_t = Config::default().inference_timeout.as_millis() as u64,
          value_parser = at_least::<u64, 1>)]
    pub inference_timeout_ms: u64,

    /// the most requests in one forward pass; 1 turns batching off
    #[arg(long, value_name = "N", default_value_t = Config::default().max_batch,
          value_parser = at_least::<usize, 1>)]
    pub max_batch: usize,

    /// milliseconds the batcher waits after a batch's first request for more to join it
    #[arg(long, value_name = "MS", default_value_t = Config::default().batch_window.as_millis() as u64,
          value_parser = at_least::<u64, 0>)]
    pub batch_window_ms: u64,

    /// milliseconds between SIGTERM (or Ctrl-C), which turns /ready to 503, and the listener
    /// closing, so that load balancers stop sending first; requests in flight then finish
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,

    /// requests decoded at once (default: the number of CPUs)
    #[arg(long, value_name = "N", default_value_t = Config::default().decoders,
          value_parser = at_least::<usize, 1>, hide_default_value = true)]
    pub decoders: usize,
}

impl Args {
    /// The server's limits and options.
    pub fn config(&self) -> Config {
        Config {
            max_body_bytes: self.max_body_bytes,
            workers: self.workers,
            queue: self.queue,
            max_pixels: self.max_pixels.max_pixels,
            top_k: self.top_k.top_k,
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            queue_timeout: Duration::from_millis(self.queue_timeout_ms),
            inference_timeout: Duration::from_millis(self.inference_timeout_ms),
            max_batch: self.max_batch,
            decoders: self.decoders,
            batch_window: Duration::from_millis(self.batch_window_ms),
        }
    }
}
