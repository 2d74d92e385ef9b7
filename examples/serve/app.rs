//! The demo server's HTTP application: the router, its handlers, the batcher and the metrics.
//!
//! Shared by `examples/serve/main.rs` (which parses the arguments, binds the socket and loads
//! the model) and `tests/serve.rs` (which starts the same application on an ephemeral port).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the demo page (inline CSS and JS, no external assets) |
//! | `POST /predict` | an image as a multipart form field or as the raw body; answers `{label, index, top_k, timing_ms}` |
//! | `GET /health` | liveness: `{"status": "ok", "classes": N}` (`classes` is null while loading) |
//! | `GET /ready` | readiness: 200 once the model is loaded and warmed up, 503 before and while draining |
//! | `GET /metrics` | Prometheus text format (the `prometheus` crate) |
//! | `GET /examples/{name}` | one of the shipped example images (fixed allow-list) |
//!
//! Every error is JSON `{"error": "..."}`: 400 for an image that cannot be decoded (or is
//! over the pixel limit, which the decoder itself enforces) or a malformed request, 404, 405,
//! 408 for a body that is too slow, 413 for a body over the limit, 503 (with `Retry-After`)
//! when the queue is full, when no worker took the request within `queue_timeout`, or while
//! the model loads; 504 when the inference did not finish within `inference_timeout`. A 500
//! would mean a bug in the library (a panic included: it is caught), never bad input.
//!
//! How a request runs:
//! 1. Admission, before the body is read: at most `workers * max_batch + queue` requests are
//!    admitted at once; one more is refused with 503 and `Retry-After: 1` (memory stays
//!    bounded by that many bodies).
//! 2. Decoding (with `max_pixels` passed to the decoder) and the item transforms, on tokio's
//!    blocking pool, for each request on its own and in parallel.
//! 3. The batcher: the transformed image joins a queue. The batcher waits for a free worker,
//!    takes the first queued image, then every other that arrives within `batch_window` (up
//!    to `max_batch`), and runs the batch transforms and the model once for all of them on the
//!    blocking pool. Each request gets its own row, the same answer as a single
//!    `Learner::predict`. `max_batch = 1` turns batching off.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fastai_infer::candle_core::Device;
use fastai_infer::{load_image_from_memory_with, Error, Learner, Prediction};
use image::RgbImage;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, RwLock, Semaphore};

/// The page served at `GET /`.
const INDEX_HTML: &str = include_str!("index.html");

/// The example images the page offers, served at `/examples/{name}`: name, MIME type, bytes.
/// Only these names are served (no file system access, so no path traversal).
pub const EXAMPLES: &[(&str, &str, &[u8])] = &[
    (
        "chelsea.png",
        "image/png",
        include_bytes!("../../tests/fixtures/images/chelsea.png"),
    ),
    (
        "grace_hopper.jpg",
        "image/jpeg",
        include_bytes!("../../tests/fixtures/images/grace_hopper.jpg"),
    ),
    (
        "rocket.jpg",
        "image/jpeg",
        include_bytes!("../../tests/fixtures/images/rocket.jpg"),
    ),
    (
        "horse_RGBA.png",
        "image/png",
        include_bytes!("../../tests/fixtures/images/horse_RGBA.png"),
    ),
];

/// The server's limits and options.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted, in bytes (multipart overhead included); larger gets 413.
    pub max_body_bytes: usize,
    /// Forward passes (batches) that run at the same time (each also uses the model's threads).
    pub workers: usize,
    /// Requests that may be admitted beyond `workers * max_batch`; one more gets 503.
    pub queue: usize,
    /// Largest decoded image accepted, in pixels (width x height), passed to the decoder
    /// (which refuses a larger image from its header); larger gets 400.
    pub max_pixels: u64,
    /// How many classes `top_k` lists.
    pub top_k: usize,
    /// Longest time a request may take to send its body once admitted; slower gets 408, so
    /// slow uploads cannot hold queue slots for ever.
    pub body_timeout: Duration,
    /// Longest time a decoded request waits for a worker to take it into a batch; longer
    /// gets 503 with `Retry-After`.
    pub queue_timeout: Duration,
    /// Longest time the work on one request may take (decoding and transforms, then its
    /// batch's forward pass), not counting the wait for a worker; longer gets 504. The work
    /// itself cannot be interrupted: it finishes and keeps its worker until then.
    pub inference_timeout: Duration,
    /// The most requests in one forward pass; 1 turns batching off.
    pub max_batch: usize,
    /// Requests decoded at the same time (each holds its decoded image until the item
    /// transforms shrink it); the others wait, within `queue_timeout`.
    pub decoders: usize,
    /// How long the batcher waits, after the first request of a batch, for more to join it.
    pub batch_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 10 * 1024 * 1024,
            workers: 1,
            queue: 64,
            max_pixels: 50_000_000,
            top_k: 3,
            body_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(10),
            inference_timeout: Duration::from_secs(30),
            max_batch: 32,
            decoders: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_window: Duration::from_millis(2),
        }
    }
}

/// The server's Prometheus metrics, in a registry of their own.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch_size: Histogram,
    batch_seconds: Histogram,
    queue_depth: IntGauge,
    in_flight: IntGauge,
    load_seconds: Gauge,
    build_info: IntGaugeVec,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "serve_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "serve_request_duration_seconds",
                "Time from a request's arrival to its response, by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("serve_batch_size", "Requests in each forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "serve_batch_duration_seconds",
                "Time of each forward pass (batch transforms, model, softmax)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let queue_depth = IntGauge::new(
            "serve_queue_depth",
            "Decoded requests waiting for a worker to take them into a batch",
        )?;
        let in_flight = IntGauge::new(
            "serve_in_flight_requests",
            "Requests being answered now (all routes)",
        )?;
        let load_seconds = Gauge::new(
            "serve_model_load_seconds",
            "Time taken to load the model and run the warm-up forward pass",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "serve_build_info",
                "Always 1; the labels describe the build",
            ),
            &["version", "device"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(load_seconds.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch_size,
            batch_seconds,
            queue_depth,
            in_flight,
            load_seconds,
            build_info,
        })
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on an invalid metric, which the names above are not.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// What a queued job's claim flag says: still waiting, taken into a batch, or given up by its
/// request (queue timeout). Whichever side moves it off `WAITING` first wins.
const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// A request's answer from its batch: its prediction, the batch's forward time and size.
type BatchReply = Result<(Prediction, Duration, usize), ApiError>;

/// A decoded, item-transformed request waiting for the batcher.
struct Job {
    learner: Arc<Learner>,
    item: RgbImage,
    claim: Arc<AtomicU8>,
    started: oneshot::Sender<()>,
    reply: oneshot::Sender<BatchReply>,
    /// The request's admission, released when its work is done (even if the client left).
    admitted: OwnedSemaphorePermit,
}

/// A job taken into a batch.
struct Work {
    learner: Arc<Learner>,
    item: RgbImage,
    reply: oneshot::Sender<BatchReply>,
    _admitted: OwnedSemaphorePermit,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The model, set once loaded and warmed up.
    learner: Arc<OnceLock<Arc<Learner>>>,
    config: Arc<Config>,
    /// Permits for the admitted requests (running, waiting or being read).
    admitted: Arc<Semaphore>,
    /// Permits for `workers` forward passes (the batcher holds a clone).
    #[allow(dead_code)] // read by tests/serve.rs
    running: Arc<Semaphore>,
    /// Permits for `decoders` decodings.
    decoding: Arc<Semaphore>,
    /// The batcher's queue.
    jobs: mpsc::UnboundedSender<Job>,
    /// Set once the model is loaded and warmed up.
    ready: Arc<AtomicBool>,
    /// Set when the server starts to shut down.
    draining: Arc<AtomicBool>,
    /// Read-locked and released before every forward pass: tests write-lock it to stall
    /// inference.
    #[allow(dead_code)] // read by tests/serve.rs
    gate: Arc<RwLock<()>>,
    metrics: Metrics,
}

impl AppState {
    /// State for a loaded learner, warmed up and ready. Must be called inside a tokio runtime
    /// (it starts the batcher).
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn new(learner: Arc<Learner>, config: Config) -> Self {
        let state = Self::loading(config);
        // The tests' learner is shared and already warm; the metrics still say it is loaded.
        state.set_learner(learner, Duration::ZERO);
        state
    }

    /// State without a model yet: `/ready` and `/predict` answer 503 until
    /// [`AppState::set_learner`]. Must be called inside a tokio runtime (it starts the batcher).
    pub fn loading(mut config: Config) -> Self {
        config.workers = config.workers.max(1);
        config.max_batch = config.max_batch.max(1);
        config.decoders = config.decoders.max(1);
        let admitted = Arc::new(Semaphore::new(
            config.workers * config.max_batch + config.queue,
        ));
        let running = Arc::new(Semaphore::new(config.workers));
        let decoding = Arc::new(Semaphore::new(config.decoders));
        // The metric definitions are constants, so registering them cannot fail.
        let metrics = Metrics::new().expect("valid metric definitions");
        let (jobs, queue) = mpsc::unbounded_channel();
        let gate = Arc::new(RwLock::new(()));
        let config = Arc::new(config);
        tokio::spawn(batcher(
            queue,
            running.clone(),
            config.clone(),
            metrics.clone(),
            gate.clone(),
        ));
        AppState {
            learner: Arc::new(OnceLock::new()),
            config,
            admitted,
            running,
            decoding,
            jobs,
            ready: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            gate,
            metrics,
        }
    }

    /// Installs the loaded (and warmed-up) model: `/ready` turns 200 unless the server is
    /// draining. `load_time` is reported as `serve_model_load_seconds`.
    pub fn set_learner(&self, learner: Arc<Learner>, load_time: Duration) {
        let device = match learner.device() {
            Device::Cpu => "cpu".to_string(),
            other => format!("{:?}", other.location()),
        };
        self.metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), device.as_str()])
            .set(1);
        self.metrics.load_seconds.set(load_time.as_secs_f64());
        let _ = self.learner.set(learner);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Marks the server as shutting down: `/ready` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Requests decoded and waiting for a worker.
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn queue_depth(&self) -> i64 {
        self.metrics.queue_depth.get()
    }

    /// The semaphore of admitted requests; tests hold its permits to fill the queue.
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn admitted(&self) -> &Arc<Semaphore> {
        &self.admitted
    }

    /// The semaphore of running forward passes; tests hold its permits to stall the workers.
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn running(&self) -> &Arc<Semaphore> {
        &self.running
    }

    /// The lock every forward pass read-locks (and releases) before it starts; tests
    /// write-lock it to make inference outlast its deadline.
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn inference_gate(&self) -> &Arc<RwLock<()>> {
        &self.gate
    }
}

/// The graceful-shutdown future for `axum::serve`: once `signal` resolves, `/ready` answers
/// 503; then, once `hold` resolves (main: `--shutdown-delay-ms`, so that load balancers see
/// the 503 first), the listener closes and the requests in flight finish.
pub async fn drain_on(
    state: AppState,
    signal: impl std::future::Future<Output = ()>,
    hold: impl std::future::Future<Output = ()>,
) {
    signal.await;
    state.begin_shutdown();
    hold.await;
}

/// Runs one forward pass on a synthetic image, so that the first request does not pay for
/// the model's lazy set-up (workspaces, kernels); the server reports ready only after it.
pub fn warm_up(learner: &Learner) -> fastai_infer::Result<()> {
    let image = RgbImage::from_pixel(64, 48, image::Rgb([127, 127, 127]));
    learner.predict(&image).map(|_| ())
}

/// The application: routes, JSON fallbacks for 404 and 405, the body limit and the metrics.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/predict", post(predict))
        .route("/examples/{name}", get(example))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// The metrics' route label: a known route, or `other` (so that random paths cannot grow
/// the number of series).
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        "/predict" => "/predict",
        p if p.starts_with("/examples/") => "/examples/{name}",
        _ => "other",
    }
}

/// Decrements the in-flight gauge when a request ends, however it ends.
struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts every request by route and status, times it, and tracks those in flight.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let start = Instant::now();
    state.metrics.in_flight.inc();
    let _guard = InFlight(state.metrics.in_flight.clone());
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[route])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// A JSON response with the given status.
fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// `{"error": message}` with the given status.
fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, serde_json::json!({ "error": message.into() }))
}

/// 503 with `Retry-After: 1` and a JSON error.
fn unavailable(message: impl Into<String>) -> Response {
    let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// 413 with the limit in the message.
fn too_large(limit: usize) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes"),
    )
}

async fn index() -> Response {
    let examples: Vec<&str> = EXAMPLES.iter().map(|(name, _, _)| *name).collect();
    let page = INDEX_HTML.replace(
        "/*EXAMPLES*/[]",
        &serde_json::to_string(&examples).unwrap_or_else(|_| "[]".into()),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// Liveness: the process answers. `classes` is null until the model is loaded.
async fn health(State(state): State<AppState>) -> Response {
    let classes = state.learner.get().map(|l| l.vocab().len());
    json_response(
        StatusCode::OK,
        serde_json::json!({ "status": "ok", "classes": classes }),
    )
}

/// Readiness: 200 once the model is loaded and warmed up, 503 before and while draining.
async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        json_response(StatusCode::OK, serde_json::json!({ "status": "ready" }))
    } else if state.draining.load(Ordering::SeqCst) {
        unavailable("the server is shutting down")
    } else {
        unavailable("the model is loading")
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn example(name: Result<Path<String>, PathRejection>) -> Response {
    // A name that is not even valid UTF-8 once percent-decoded is simply not an example.
    let name = name.map(|Path(n)| n).unwrap_or_default();
    match EXAMPLES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, bytes)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => json_error(StatusCode::NOT_FOUND, format!("no example named {name:?}")),
    }
}

/// An error answered to the client.
#[derive(Debug, Clone)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.0, self.1)
    }
}

/// Client errors keep their status; anything the extractors call a server error (a body
/// that broke off, say) is the client's doing here, so it becomes 400.
fn client_status(status: StatusCode) -> StatusCode {
    if status.is_server_error() {
        StatusCode::BAD_REQUEST
    } else {
        status
    }
}

/// The image bytes of a request: the `image` or `file` field (or the first field with a file
/// name) of a `multipart/form-data` body, or else the raw body.
async fn image_bytes(req: Request, limit: usize) -> Result<Bytes, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    let map_err = |status: StatusCode, text: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            json_error(client_status(status), text)
        }
    };
    let bytes = if multipart {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| map_err(e.status(), e.body_text()))?;
        loop {
            let field = form
                .next_field()
                .await
                .map_err(|e| map_err(e.status(), e.body_text()))?;
            let Some(field) = field else {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "the multipart form has no image: send it in a field named \"image\"",
                ));
            };
            let wanted =
                matches!(field.name(), Some("image" | "file")) || field.file_name().is_some();
            let data = field
                .bytes()
                .await
                .map_err(|e| map_err(e.status(), e.body_text()))?;
            if wanted {
                break data;
            }
        }
    } else {
        Bytes::from_request(req, &())
            .await
            .map_err(|e| map_err(e.status(), e.body_text()))?
    };
    if bytes.is_empty() {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "empty image: send the image as the request body or in a multipart field named \"image\"",
        ));
    }
    Ok(bytes)
}

/// 504 for work that outlasted `inference_timeout`.
fn timed_out(limit: Duration) -> Response {
    json_error(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the inference did not finish within {} s",
            limit.as_secs_f64()
        ),
    )
}

async fn predict(State(state): State<AppState>, req: Request) -> Response {
    let Some(learner) = state.learner.get().cloned() else {
        return unavailable("the model is loading");
    };
    // Admission first, before the body is read: a full queue costs the server nothing.
    let Ok(admitted) = state.admitted.clone().try_acquire_owned() else {
        return unavailable("the server is busy (inference queue full); retry shortly");
    };
    let config = state.config.clone();
    let read = image_bytes(req, config.max_body_bytes);
    let bytes = match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(resp)) => return resp,
        Err(_) => {
            return json_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    config.body_timeout.as_secs_f64()
                ),
            )
        }
    };

    // Decoding and the item transforms, on the blocking pool, in parallel with other requests
    // (at most `decoders` at once: a decoded image can be large).
    let busy = || {
        unavailable(format!(
            "the server is busy: no worker was free within {} s; retry shortly",
            config.queue_timeout.as_secs_f64()
        ))
    };
    let decoder =
        match tokio::time::timeout(config.queue_timeout, state.decoding.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            _ => return busy(),
        };
    let start = Instant::now();
    let prep = {
        let (learner, config) = (learner.clone(), config.clone());
        tokio::task::spawn_blocking(move || {
            let _decoder = decoder;
            let item =
                std::panic::catch_unwind(AssertUnwindSafe(|| prepare(&learner, &bytes, &config)))
                    .unwrap_or_else(|_| {
                        Err(ApiError(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal error: decoding panicked".into(),
                        ))
                    });
            (item, admitted)
        })
    };
    let (item, admitted) = match tokio::time::timeout(config.inference_timeout, prep).await {
        Ok(Ok((Ok(item), admitted))) => (item, admitted),
        Ok(Ok((Err(e), _))) => return e.into_response(),
        Ok(Err(e)) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error: the decoding task failed ({e})"),
            )
        }
        Err(_) => return timed_out(config.inference_timeout),
    };
    let prep_time = start.elapsed();

    // The batcher.
    let claim = Arc::new(AtomicU8::new(WAITING));
    let (started_tx, started_rx) = oneshot::channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let job = Job {
        learner,
        item,
        claim: claim.clone(),
        started: started_tx,
        reply: reply_tx,
        admitted,
    };
    state.metrics.queue_depth.inc();
    if state.jobs.send(job).is_err() {
        state.metrics.queue_depth.dec();
        return unavailable("the server is shutting down");
    }
    let taken = matches!(
        tokio::time::timeout(config.queue_timeout, started_rx).await,
        Ok(Ok(()))
    );
    // Give up unless the batcher took the job meanwhile (then its answer is on the way).
    if !taken
        && claim
            .compare_exchange(WAITING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        return busy();
    }
    let left = config.inference_timeout.saturating_sub(prep_time);
    match tokio::time::timeout(left, reply_rx).await {
        Ok(Ok(Ok((pred, batch_time, _batch_size)))) => json_response(
            StatusCode::OK,
            prediction_json(&pred, config.top_k, prep_time + batch_time),
        ),
        Ok(Ok(Err(e))) => e.into_response(),
        Ok(Err(_)) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the inference task ended without an answer",
        ),
        Err(_) => timed_out(config.inference_timeout),
    }
}

/// Decodes an upload with the server's pixel limit (the decoder refuses a larger image from
/// its header, before allocating) and applies the item transforms.
fn prepare(learner: &Learner, bytes: &[u8], config: &Config) -> Result<RgbImage, ApiError> {
    let options = learner.decode_options().with_max_pixels(config.max_pixels);
    let image = load_image_from_memory_with(bytes, &options).map_err(|e| match e {
        Error::ImageTooLarge {
            width,
            height,
            max_pixels,
            ..
        } => ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "image is {width}x{height} ({} pixels); this server accepts at most {max_pixels} pixels",
                u64::from(width) * u64::from(height)
            ),
        ),
        Error::ImageDecode { .. } | Error::UnsupportedImage { .. } | Error::UnrecognizedImage { .. } => {
            ApiError(StatusCode::BAD_REQUEST, e.to_string())
        }
        other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    learner.item_tfms().encodes(&image).map_err(|e| match e {
        Error::InvalidArgument(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        other => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {other}"),
        ),
    })
}

/// The JSON answer for one prediction: `{label, index, top_k, timing_ms}` for a single-label
/// learner; `{labels, probabilities, top_k, timing_ms}` for a multi-label one (every label over
/// the threshold, and one probability per class in vocab order, as `predict --json` prints).
/// `timing` is that request's decoding and item transforms plus its batch's forward pass.
fn prediction_json(pred: &Prediction, top_k: usize, timing: Duration) -> serde_json::Value {
    let timing_ms = (timing.as_secs_f64() * 1e6).round() / 1e3;
    let top_k: Vec<_> = pred
        .top_k(top_k)
        .into_iter()
        .map(|r| {
            serde_json::json!({ "label": r.label, "index": r.index, "probability": f32_json(r.probability) })
        })
        .collect();
    if pred.is_multi_label() {
        let probabilities: Vec<_> = pred.probabilities.iter().map(|&p| f32_json(p)).collect();
        serde_json::json!({
            "labels": pred.labels,
            "probabilities": probabilities,
            "top_k": top_k,
            "timing_ms": timing_ms,
        })
    } else {
        serde_json::json!({
            "label": pred.label,
            "index": pred.index,
            "top_k": top_k,
            "timing_ms": timing_ms,
        })
    }
}

/// An `f32` as the JSON number with its shortest decimal form (`0.99612325`, not the widened
/// `0.9961232542991638`); it parses back to the same `f32`.
fn f32_json(x: f32) -> serde_json::Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Moves a queued job into `batch` unless its request gave up or went away.
fn take(job: Job, batch: &mut Vec<Work>, metrics: &Metrics) {
    metrics.queue_depth.dec();
    if job.reply.is_closed() {
        return;
    }
    if job
        .claim
        .compare_exchange(WAITING, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return;
    }
    let _ = job.started.send(());
    batch.push(Work {
        learner: job.learner,
        item: job.item,
        reply: job.reply,
        _admitted: job.admitted,
    });
}

/// Forms the batches: waits for the first queued job and a free worker, takes that job, then
/// the others already queued or arriving within `batch_window`, up to `max_batch`, and runs
/// them as one forward pass on the blocking pool. Ends when every sender is gone.
///
/// A job is claimed only once a worker is free, so a request whose `queue_timeout` runs out
/// while every worker is busy can still give up.
async fn batcher(
    mut queue: mpsc::UnboundedReceiver<Job>,
    running: Arc<Semaphore>,
    config: Arc<Config>,
    metrics: Metrics,
    gate: Arc<RwLock<()>>,
) {
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        // The semaphore is never closed.
        let Ok(permit) = running.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(config.max_batch);
        take(first, &mut batch, &metrics);
        let deadline = tokio::time::Instant::now() + config.batch_window;
        while batch.len() < config.max_batch {
            match queue.try_recv() {
                Ok(job) => take(job, &mut batch, &metrics),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, queue.recv()).await {
                        Ok(Some(job)) => take(job, &mut batch, &metrics),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (metrics, gate) = (metrics.clone(), gate.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            run_batch(batch, &metrics, &gate);
        });
    }
}

/// One forward pass for a batch; every request gets its own row, or the batch's error.
fn run_batch(batch: Vec<Work>, metrics: &Metrics, gate: &RwLock<()>) {
    // A test may write-lock the gate to stall inference (this runs on the blocking pool).
    drop(gate.blocking_read());
    let start = Instant::now();
    let n = batch.len();
    let learner = batch[0].learner.clone();
    // The replies (and the admissions, released once answered) apart from the images.
    let (items, replies): (Vec<RgbImage>, Vec<_>) = batch
        .into_iter()
        .map(|w| (w.item, (w.reply, w._admitted)))
        .unzip();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| forward(&learner, &items)));
    let elapsed = start.elapsed();
    metrics.batch_size.observe(n as f64);
    metrics.batch_seconds.observe(elapsed.as_secs_f64());
    let error = match result {
        Ok(Ok(preds)) if preds.len() == n => {
            for ((reply, _admitted), pred) in replies.into_iter().zip(preds) {
                let _ = reply.send(Ok((pred, elapsed, n)));
            }
            return;
        }
        Ok(Ok(preds)) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {} predictions for {n} images", preds.len()),
        ),
        Ok(Err(e)) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        ),
        Err(_) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the inference panicked".into(),
        ),
    };
    for (reply, _admitted) in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// The batch transforms, the model and the softmax for item-transformed images: the second
/// half of `Learner::predict_batch`.
fn forward(learner: &Learner, items: &[RgbImage]) -> fastai_infer::Result<Vec<Prediction>> {
    // On rayon's pool, as `Learner::predict_batch` runs it.
    rayon::scope(|_| {
        let input = learner
            .batch_tfms()
            .encodes_images(items, learner.device())?;
        let logits = learner
            .logits(&input)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        logits
            .iter()
            .map(|row| Prediction::decode(row, learner.vocab(), learner.loss_func()))
            .collect()
    })
}
