//! The demo server's HTTP application: the router, its handlers and the page.
//!
//! Shared by `examples/serve/main.rs` (which parses the arguments and binds the socket) and
//! `tests/serve.rs` (which starts the same application on an ephemeral port).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the demo page (inline CSS and JS, no external assets) |
//! | `POST /predict` | an image as a multipart form field or as the raw body; answers `{label, index, top_k, timing_ms}` |
//! | `GET /health` | `{"status": "ok", "classes": N}` |
//! | `GET /examples/{name}` | one of the shipped example images (fixed allow-list) |
//!
//! Every error is JSON `{"error": "..."}`: 400 for an image that cannot be decoded or a
//! malformed request, 404, 405, 408 for a body that is too slow, 413 for a body over the
//! limit, 503 (with `Retry-After`) when the inference queue is full. A 500 would mean a bug
//! in the library (a panic included: the blocking pool catches it), never bad input.
//!
//! Inference runs on tokio's blocking pool (`spawn_blocking`), never on the runtime's worker
//! threads. Two semaphores bound it: `workers` inferences run at once, and at most `queue`
//! more requests wait for a worker; a request that finds the queue full is refused at once
//! with 503 and `Retry-After: 1` before its body is read, so memory stays bounded by
//! `(workers + queue) * max_body_bytes` and clients (or the proxy in front) can back off.
//! An admitted request has `body_timeout` to send its body (else 408), so slow uploads
//! cannot hold the queue.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fastai_infer::{load_image_from_memory, Error, Learner};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Inferences that run at the same time (each one also uses the model's own threads).
    pub workers: usize,
    /// Requests that may wait for a worker; one more gets 503 with `Retry-After`.
    pub queue: usize,
    /// Largest decoded image accepted, in pixels (width x height), read from the header
    /// before decoding; larger gets 400.
    pub max_pixels: u64,
    /// How many classes `top_k` lists.
    pub top_k: usize,
    /// Longest time a request may take to send its body once admitted; slower gets 408, so
    /// slow uploads cannot hold queue slots for ever.
    pub body_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 10 * 1024 * 1024,
            workers: 2,
            queue: 64,
            max_pixels: 50_000_000,
            top_k: 3,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share: the model, loaded once, and the two semaphores.
#[derive(Clone)]
pub struct AppState {
    learner: Arc<Learner>,
    config: Arc<Config>,
    /// Permits for `workers + queue` admitted requests (running or waiting).
    admitted: Arc<Semaphore>,
    /// Permits for `workers` running inferences.
    running: Arc<Semaphore>,
}

impl AppState {
    /// State for a loaded learner and a configuration (`workers` is at least 1).
    pub fn new(learner: Arc<Learner>, mut config: Config) -> Self {
        config.workers = config.workers.max(1);
        let admitted = Arc::new(Semaphore::new(config.workers + config.queue));
        let running = Arc::new(Semaphore::new(config.workers));
        AppState {
            learner,
            config: Arc::new(config),
            admitted,
            running,
        }
    }

    /// The semaphore of admitted requests; tests hold its permits to fill the queue.
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn admitted(&self) -> &Arc<Semaphore> {
        &self.admitted
    }

    /// The semaphore of running inferences; tests hold its permits to stall the workers.
    #[allow(dead_code)] // used by tests/serve.rs
    pub fn running(&self) -> &Arc<Semaphore> {
        &self.running
    }
}

/// The application: routes, JSON fallbacks for 404 and 405, and the body limit.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/predict", post(predict))
        .route("/examples/{name}", get(example))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
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

async fn health(State(state): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::json!({ "status": "ok", "classes": state.learner.vocab().len() }),
    )
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

async fn predict(State(state): State<AppState>, req: Request) -> Response {
    // Admission first, before the body is read: a full queue costs the server nothing.
    let Ok(admitted) = state.admitted.clone().try_acquire_owned() else {
        let mut resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (inference queue full); retry shortly",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    let read = image_bytes(req, state.config.max_body_bytes);
    let bytes = match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(resp)) => return resp,
        Err(_) => {
            return json_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    state.config.body_timeout.as_secs_f64()
                ),
            )
        }
    };
    // Wait for a worker; the semaphore is never closed, so this cannot fail.
    let Ok(running) = state.running.clone().acquire_owned().await else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    };
    let learner = state.learner.clone();
    let config = state.config.clone();
    // The permits move into the blocking task: if the client goes away, the work already
    // started still counts against the limits until it finishes.
    let task = tokio::task::spawn_blocking(move || {
        let _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (admitted, running);
        classify(&learner, &bytes, &config)
    });
    match task.await {
        Ok(Ok(value)) => json_response(StatusCode::OK, value),
        Ok(Err(e)) => e.into_response(),
        // A panic in the library is caught by the blocking pool; the server carries on.
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: the inference task failed ({e})"),
        ),
    }
}

/// Decodes, transforms and predicts one image; `timing_ms` covers exactly that (header
/// check, decode, item and batch transforms, model, softmax), not the upload or the wait
/// for a worker.
fn classify(
    learner: &Learner,
    bytes: &[u8],
    config: &Config,
) -> Result<serde_json::Value, ApiError> {
    let start = Instant::now();
    // Refuse decompression bombs from the header alone. A header that cannot be read is left
    // to the decoder, whose error message is the library's.
    if let Ok((w, h)) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)
        .and_then(|r| r.into_dimensions())
    {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > config.max_pixels {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "image is {w}x{h} ({pixels} pixels); this server accepts at most {} pixels",
                    config.max_pixels
                ),
            ));
        }
    }
    let image = load_image_from_memory(bytes).map_err(|e| match e {
        Error::ImageDecode { .. }
        | Error::UnsupportedImage { .. }
        | Error::UnrecognizedImage { .. }
        | Error::ImageTooLarge { .. } => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    let pred = learner.predict(&image).map_err(|e| match e {
        Error::InvalidArgument(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        other => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {other}"),
        ),
    })?;
    let timing_ms = start.elapsed().as_secs_f64() * 1e3;
    let top_k: Vec<_> = pred
        .top_k(config.top_k)
        .into_iter()
        .map(|r| {
            serde_json::json!({ "label": r.label, "index": r.index, "probability": f32_json(r.probability) })
        })
        .collect();
    Ok(serde_json::json!({
        "label": pred.label,
        "index": pred.index,
        "top_k": top_k,
        "timing_ms": (timing_ms * 1000.0).round() / 1000.0,
    }))
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
