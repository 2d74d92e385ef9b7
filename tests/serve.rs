//! The demo server (`examples/serve`) over real HTTP: each test starts the application on an
//! ephemeral loopback port and talks HTTP/1.1 to it over a plain TCP socket.

#[path = "../examples/serve/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "../examples/serve/args.rs"]
mod args;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use fastai_infer::candle_core::Device;
use fastai_infer::{load_image, Learner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use app::{AppState, Config};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The model, loaded once for all tests.
fn learner() -> Arc<Learner> {
    static LEARNER: OnceLock<Arc<Learner>> = OnceLock::new();
    LEARNER
        .get_or_init(|| {
            let path = format!("{ROOT}/weights/pets_vit_tiny.safetensors");
            Arc::new(Learner::load(path, &Device::Cpu).expect("shipped weights load"))
        })
        .clone()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{ROOT}/tests/fixtures/images/{name}")).expect("fixture image")
}

/// Starts the application on 127.0.0.1:0; the server lives as long as the test's runtime.
async fn start(config: Config) -> (SocketAddr, AppState) {
    serve(AppState::new(learner(), config)).await
}

/// Serves `state` on 127.0.0.1:0.
async fn serve(state: AppState) -> (SocketAddr, AppState) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app::app(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, state)
}

/// A response: status, headers (names lower-cased), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "status {}",
            self.status
        );
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The `error` string of a JSON error response.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("an \"error\" string")
            .to_string()
    }
}

/// Parses a complete HTTP/1.1 response (content-length or chunked).
fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16)
                .expect("hex chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 2 + size + 2..];
        }
        body = out;
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw)
}

/// Sends `head` and then, concurrently, `body` (which the server may stop reading), and
/// reads the response. Write errors are expected once the server has answered.
async fn request_streaming(addr: SocketAddr, head: String, body: Vec<u8>) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in body.chunks(16 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response arrived (the server closed with our body unread).
            Err(_) if !raw.is_empty() => break,
            Err(e) => panic!("reading the response failed: {e}"),
        }
    }
    writer.abort();
    parse_response(&raw)
}

/// A multipart/form-data body with one field.
fn multipart(field: &str, filename: Option<&str>, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----fastai-infer-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    match filename {
        Some(f) => body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        ),
        None => body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
        ),
    }
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Checks a /predict answer against `learn.predict` on the same file.
fn assert_prediction(resp: &Response, image: &str) {
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let json = resp.json();
    let expected = learner()
        .predict(&load_image(format!("{ROOT}/tests/fixtures/images/{image}")).unwrap())
        .unwrap();
    assert_eq!(json["label"], expected.label.as_str());
    assert_eq!(json["index"], expected.index);
    let top = json["top_k"].as_array().expect("top_k array");
    assert_eq!(top.len(), 3);
    for (got, want) in top.iter().zip(expected.top_k(3)) {
        assert_eq!(got["label"], want.label.as_str());
        assert_eq!(got["index"], want.index);
        // The shortest decimal of the f32: it parses back to exactly the same f32.
        let p = got["probability"].as_f64().unwrap();
        assert_eq!(p as f32, want.probability, "{p} vs {want:?}");
    }
    assert!(json["timing_ms"].as_f64().is_some_and(|t| t >= 0.0));
}

#[tokio::test]
async fn health_reports_the_classes() {
    let (addr, _) = start(Config::default()).await;
    let resp = request(addr, "GET", "/health", &[], b"").await;
    assert_eq!(resp.status, 200);
    let json = resp.json();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["classes"], learner().vocab().len());
}

#[tokio::test]
async fn page_is_self_contained_and_lists_the_examples() {
    let (addr, _) = start(Config::default()).await;
    let resp = request(addr, "GET", "/", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = String::from_utf8(resp.body).unwrap();
    assert!(page.contains("type=\"file\""));
    assert!(page.contains("/predict"));
    for (name, _, _) in app::EXAMPLES {
        assert!(page.contains(&format!("\"{name}\"")), "{name} not offered");
    }
    // No external assets: nothing is loaded from another origin.
    for needle in ["http://", "https://", "src=\"//", "href=\"//"] {
        assert!(!page.contains(needle), "page references {needle}");
    }
}

#[tokio::test]
async fn examples_are_served_from_the_allow_list_only() {
    let (addr, _) = start(Config::default()).await;
    let resp = request(addr, "GET", "/examples/chelsea.png", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("image/png"));
    assert_eq!(resp.body, fixture("chelsea.png"));
    for path in [
        "/examples/china.jpg",
        "/examples/..%2F..%2FCargo.toml",
        "/examples/../Cargo.toml",
        "/examples/%2e%2e/weights/pets_vit_tiny.safetensors",
        "/examples/%FF%FE",
        "/examples/",
        "/nope",
    ] {
        let resp = request(addr, "GET", path, &[], b"").await;
        assert_eq!(resp.status, 404, "{path}");
        assert!(!resp.error().is_empty());
    }
}

#[tokio::test]
async fn predicts_a_raw_body_as_learn_predict_does() {
    let (addr, _) = start(Config::default()).await;
    let resp = request(
        addr,
        "POST",
        "/predict",
        &[("Content-Type", "image/png")],
        &fixture("chelsea.png"),
    )
    .await;
    assert_prediction(&resp, "chelsea.png");
    // The content type is not trusted: the bytes tell the format.
    let resp = request(
        addr,
        "POST",
        "/predict",
        &[("Content-Type", "application/octet-stream")],
        &fixture("grace_hopper.jpg"),
    )
    .await;
    assert_prediction(&resp, "grace_hopper.jpg");
}

#[tokio::test]
async fn predicts_a_multipart_upload() {
    let (addr, _) = start(Config::default()).await;
    let (ctype, body) = multipart("image", Some("rocket.jpg"), &fixture("rocket.jpg"));
    let resp = request(addr, "POST", "/predict", &[("Content-Type", &ctype)], &body).await;
    assert_prediction(&resp, "rocket.jpg");
    // Any field with a file name will do.
    let (ctype, body) = multipart("upload", Some("horse.png"), &fixture("horse_RGBA.png"));
    let resp = request(addr, "POST", "/predict", &[("Content-Type", &ctype)], &body).await;
    assert_prediction(&resp, "horse_RGBA.png");
}

#[tokio::test]
async fn a_bad_image_is_a_400_with_a_json_error() {
    let (addr, _) = start(Config::default()).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("text", b"this is not an image".to_vec()),
        ("empty", Vec::new()),
        ("truncated png", fixture("chelsea.png")[..2000].to_vec()),
        ("png signature only", b"\x89PNG\r\n\x1a\n".to_vec()),
    ];
    for (what, body) in cases {
        let resp = request(addr, "POST", "/predict", &[], &body).await;
        assert_eq!(
            resp.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        assert!(!resp.error().is_empty(), "{what}");
    }
    // Multipart: a form without an image field, a bad image in the field, a broken form.
    let (ctype, body) = multipart("comment", None, b"hello");
    let resp = request(addr, "POST", "/predict", &[("Content-Type", &ctype)], &body).await;
    assert_eq!(resp.status, 400);
    assert!(resp.error().contains("no image"), "{}", resp.error());
    let (ctype, body) = multipart("image", Some("x.png"), b"garbage");
    let resp = request(addr, "POST", "/predict", &[("Content-Type", &ctype)], &body).await;
    assert_eq!(resp.status, 400);
    assert!(
        resp.error().contains("cannot identify image"),
        "{}",
        resp.error()
    );
    let resp = request(
        addr,
        "POST",
        "/predict",
        &[("Content-Type", "multipart/form-data; boundary=xyz")],
        b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nunterminated",
    )
    .await;
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    let resp = request(
        addr,
        "POST",
        "/predict",
        &[("Content-Type", "multipart/form-data")],
        b"no boundary",
    )
    .await;
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    // The server is still fine.
    let resp = request(addr, "POST", "/predict", &[], &fixture("chelsea.png")).await;
    assert_prediction(&resp, "chelsea.png");
}

#[tokio::test]
async fn an_image_over_the_pixel_limit_is_refused_before_decoding() {
    let (addr, _) = start(Config {
        max_pixels: 10_000,
        ..Config::default()
    })
    .await;
    let resp = request(addr, "POST", "/predict", &[], &fixture("chelsea.png")).await;
    assert_eq!(resp.status, 400);
    assert!(resp.error().contains("451x300"), "{}", resp.error());
    // 37x61 = 2257 pixels is under the limit.
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_prediction(&resp, "rocket_tiny.png");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let limit = 64 * 1024;
    let (addr, _) = start(Config {
        max_body_bytes: limit,
        ..Config::default()
    })
    .await;
    let big = vec![0x42u8; 4 * 1024 * 1024];

    // Declared length over the limit.
    let head = format!(
        "POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let resp = request_streaming(addr, head, big.clone()).await;
    assert_eq!(resp.status, 413);
    assert!(resp.error().contains("limit"), "{}", resp.error());

    // No declared length (chunked): the limit is enforced while reading.
    let mut chunked = Vec::new();
    for c in big.chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head =
        format!("POST /predict HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let resp = request_streaming(addr, head, chunked).await;
    assert_eq!(resp.status, 413);

    // Multipart, declared and chunked.
    let (ctype, body) = multipart("image", Some("big.png"), &big);
    let head = format!(
        "POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let resp = request_streaming(addr, head, body.clone()).await;
    assert_eq!(resp.status, 413);
    let mut chunked = Vec::new();
    for c in body.chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let resp = request_streaming(addr, head, chunked).await;
    assert_eq!(resp.status, 413);
    assert!(resp.error().contains("limit"), "{}", resp.error());

    // An image under the limit still goes through.
    let resp = request(addr, "POST", "/predict", &[], &fixture("horse_RGBA.png")).await;
    assert_prediction(&resp, "horse_RGBA.png");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_with_a_json_error() {
    let (addr, _) = start(Config::default()).await;
    for (method, path) in [
        ("GET", "/predict"),
        ("PUT", "/predict"),
        ("POST", "/"),
        ("DELETE", "/health"),
        ("POST", "/examples/chelsea.png"),
    ] {
        let resp = request(addr, method, path, &[], b"").await;
        assert_eq!(resp.status, 405, "{method} {path}");
        assert!(!resp.error().is_empty());
    }
}

#[tokio::test]
async fn a_full_queue_is_a_503_with_retry_after() {
    let (addr, state) = start(Config {
        workers: 1,
        queue: 1,
        max_batch: 1,
        ..Config::default()
    })
    .await;
    // Stall the only worker: the next request is admitted and waits in the queue.
    let worker = state.running().clone().acquire_owned().await.unwrap();
    let waiting = tokio::spawn(async move {
        request(addr, "POST", "/predict", &[], &fixture("chelsea.png")).await
    });
    // Wait (without a time bound on the result) until that request holds its queue slot.
    while state.admitted().available_permits() > 1 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Take the last admission slot ourselves: the queue is now full.
    let _stall = state.admitted().clone().acquire_owned().await.unwrap();
    let resp = request(addr, "POST", "/predict", &[], &fixture("chelsea.png")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(resp.error().contains("busy"), "{}", resp.error());
    // Health is not queued.
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);
    // Free the worker: the queued request completes normally.
    drop(worker);
    let resp = waiting.await.unwrap();
    assert_prediction(&resp, "chelsea.png");
}

#[tokio::test]
async fn concurrent_requests_all_succeed() {
    let (addr, _) = start(Config {
        workers: 2,
        queue: 16,
        ..Config::default()
    })
    .await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let name = if i % 2 == 0 {
                    "rocket_tiny.png"
                } else {
                    "horse_RGBA.png"
                };
                (
                    name,
                    request(addr, "POST", "/predict", &[], &fixture(name)).await,
                )
            })
        })
        .collect();
    for t in tasks {
        let (name, resp) = t.await.unwrap();
        assert_prediction(&resp, name);
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_is_a_408_and_frees_its_slot() {
    let (addr, state) = start(Config {
        workers: 1,
        queue: 0,
        max_batch: 1,
        body_timeout: std::time::Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    // Declare 1000 bytes, send 10, then wait: the server gives up on the body.
    let head =
        format!("POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n0123456789");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") || !raw.ends_with(b"}") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed without a response");
        raw.extend_from_slice(&buf[..n]);
    }
    let resp = parse_response(&raw);
    assert_eq!(resp.status, 408);
    assert!(resp.error().contains("did not arrive"), "{}", resp.error());
    drop(stream);
    // The only slot is free again.
    assert_eq!(state.admitted().available_permits(), 1);
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_prediction(&resp, "rocket_tiny.png");
}

/// Parses serve's command line (without the program name): the args, or (exit code, message).
fn parse_args(argv: &[&str]) -> Result<args::Args, (u8, String)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    args::common::parse::<args::Args>(argv.iter().map(|a| a.into()), &mut out, &mut err).map_err(
        |code| {
            let text = if code == 0 { out } else { err };
            (code, String::from_utf8(text).unwrap())
        },
    )
}

#[test]
fn the_command_line_defaults_are_the_configs() {
    let a = parse_args(&[]).unwrap();
    let (c, d) = (a.config(), Config::default());
    assert_eq!(
        (
            c.max_body_bytes,
            c.workers,
            c.queue,
            c.max_pixels,
            c.top_k,
            c.body_timeout
        ),
        (
            d.max_body_bytes,
            d.workers,
            d.queue,
            d.max_pixels,
            d.top_k,
            d.body_timeout
        )
    );
    assert_eq!(
        (
            c.queue_timeout,
            c.inference_timeout,
            c.max_batch,
            c.batch_window,
            c.decoders
        ),
        (
            d.queue_timeout,
            d.inference_timeout,
            d.max_batch,
            d.batch_window,
            d.decoders
        )
    );
    assert_eq!(
        (c.max_batch, c.batch_window),
        (32, std::time::Duration::from_millis(2))
    );
    assert_eq!(args::DEFAULT_MAX_PIXELS, d.max_pixels.to_string());
    assert_eq!(a.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(a.model.device, fastai_infer::DeviceSpec::Cpu);
    assert!(a
        .model
        .weights
        .ends_with("weights/pets_vit_tiny.safetensors"));
    assert!(a.model.labels.labels.is_none());
}

#[test]
fn the_command_line_sets_every_limit() {
    let a = parse_args(&[
        "--addr",
        "0.0.0.0:9000",
        "--max-body-bytes",
        "1000",
        "--workers",
        "3",
        "--queue",
        "0",
        "--max-pixels",
        "77",
        "--top-k",
        "5",
        "--body-timeout-secs",
        "9",
        "--labels",
        "l.txt",
        "--weights",
        "w.pth",
        "--device",
        "cuda:1",
        "--queue-timeout-ms",
        "250",
        "--inference-timeout-ms",
        "4000",
        "--max-batch",
        "1",
        "--batch-window-ms",
        "0",
        "--decoders",
        "6",
        "--shutdown-delay-ms",
        "5000",
    ])
    .unwrap();
    assert_eq!(a.shutdown_delay_ms, 5000);
    let c = a.config();
    assert_eq!(a.addr, SocketAddr::from(([0, 0, 0, 0], 9000)));
    assert_eq!(
        (c.max_body_bytes, c.workers, c.queue, c.max_pixels, c.top_k),
        (1000, 3, 0, 77, 5)
    );
    assert_eq!(c.body_timeout, std::time::Duration::from_secs(9));
    assert_eq!(
        a.model.labels.labels.as_deref(),
        Some(std::path::Path::new("l.txt"))
    );
    assert_eq!(a.model.weights, std::path::Path::new("w.pth"));
    assert_eq!(a.model.device, fastai_infer::DeviceSpec::Cuda(1));
    let ms = std::time::Duration::from_millis;
    assert_eq!(
        (
            c.queue_timeout,
            c.inference_timeout,
            c.max_batch,
            c.batch_window,
            c.decoders
        ),
        (ms(250), ms(4000), 1, ms(0), 6)
    );
}

#[test]
fn bad_command_lines_exit_2_naming_the_flag() {
    for (argv, says) in [
        (
            &["--workers", "0"][..],
            "'--workers <N>': expected an integer >= 1",
        ),
        (&["--max-body-bytes", "-1"], "unexpected argument '-1'"),
        (&["--queue", "many"], "'--queue <N>'"),
        (&["--addr", "localhost"], "'--addr <HOST:PORT>'"),
        (&["--body-timeout-secs", "0"], "'--body-timeout-secs <N>'"),
        (&["--device", "tpu"], "expected cpu, cuda or cuda:N"),
        (&["--max-pixels", "0"], "'--max-pixels <N>'"),
        (&["--max-batch", "0"], "'--max-batch <N>'"),
        (&["--queue-timeout-ms", "0"], "'--queue-timeout-ms <MS>'"),
        (
            &["--inference-timeout-ms", "x"],
            "'--inference-timeout-ms <MS>'",
        ),
        (&["--workers"], "--workers"),
        (&["photo.jpg"], "unexpected argument 'photo.jpg'"),
    ] {
        let (code, msg) = parse_args(argv).unwrap_err();
        assert_eq!(code, 2, "{argv:?}");
        assert!(
            msg.starts_with("error: ") && msg.contains(says),
            "{argv:?}: {msg}"
        );
    }
    let (code, help) = parse_args(&["--help"]).unwrap_err();
    assert_eq!(code, 0);
    for s in [
        "Usage: serve [OPTIONS]",
        "--device <DEVICE>",
        "[default: 50000000]",
        "--batch-window-ms <MS>",
        "GET /ready",
        "routes:",
    ] {
        assert!(help.contains(s), "{s}: {help}");
    }
}

/// The device is opened before the weights are read: in a build without the `cuda` feature a
/// GPU is refused with how to build one.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_in_a_build_without_cuda_is_refused_before_the_weights() {
    let a = parse_args(&["--device", "cuda", "--weights", "nowhere.safetensors"]).unwrap();
    let msg = a.model.load().err().unwrap().to_string();
    assert!(
        msg.contains("--features cuda") && !msg.contains("nowhere"),
        "{msg}"
    );
}

/// The value of the metric line `name{labels...} value` whose labels include all of `labels`
/// (`k="v"` strings), or `None` when there is no such line.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let key = l.split([' ', '{']).next().unwrap_or_default();
            key == name && labels.iter().all(|want| l.contains(want))
        })
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

async fn scrape(addr: SocketAddr) -> String {
    let resp = request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    String::from_utf8(resp.body).expect("UTF-8 metrics")
}

/// Waits (with no bound on the result, only on each step) until `n` decoded requests are
/// queued for a worker.
async fn until_queued(state: &AppState, n: i64) {
    while state.queue_depth() < n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The server passes its `max_pixels` to the decoder itself (no header parse of its own): the
/// 400 is made from the decoder's typed `ImageTooLarge` error, whose limit is the one the
/// decoder was given. A CMYK TIFF (decoded by the library's own TIFF path) is refused one
/// pixel over the limit and decoded at it.
#[tokio::test]
async fn the_pixel_limit_is_enforced_by_the_decoder() {
    let tiff = std::fs::read(format!("{ROOT}/tests/fixtures/hostile/cmyk_tiff.tiff")).unwrap();
    // 32x24 = 768 pixels.
    let (addr, _) = start(Config {
        max_pixels: 767,
        ..Config::default()
    })
    .await;
    let resp = request(addr, "POST", "/predict", &[], &tiff).await;
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    assert!(
        resp.error().contains("32x24") && resp.error().contains("767"),
        "{}",
        resp.error()
    );
    let (addr, _) = start(Config {
        max_pixels: 768,
        ..Config::default()
    })
    .await;
    let resp = request(addr, "POST", "/predict", &[], &tiff).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
}

/// A request that no worker takes within `queue_timeout` gets 503 with `Retry-After`, and
/// the server goes on.
#[tokio::test]
async fn waiting_too_long_for_a_worker_is_a_503() {
    let (addr, state) = start(Config {
        workers: 1,
        queue_timeout: std::time::Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let worker = state.running().clone().acquire_owned().await.unwrap();
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(resp.error().contains("no worker"), "{}", resp.error());
    drop(worker);
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_prediction(&resp, "rocket_tiny.png");
    let text = scrape(addr).await;
    let count = |status| {
        metric(
            &text,
            "serve_requests_total",
            &["route=\"/predict\"", status],
        )
    };
    assert_eq!(count("status=\"503\""), Some(1.0));
    assert_eq!(count("status=\"200\""), Some(1.0));
    // The abandoned request never ran.
    assert_eq!(metric(&text, "serve_batch_size_sum", &[]), Some(1.0));
}

/// An inference that outlasts `inference_timeout` gets 504 with a JSON error; the late work
/// still finishes on its own and frees its worker.
#[tokio::test]
async fn an_inference_over_its_deadline_is_a_504() {
    let (addr, state) = start(Config {
        workers: 1,
        inference_timeout: std::time::Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let gate = state.inference_gate().clone();
    let stall = gate.write().await;
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_eq!(resp.status, 504, "{}", String::from_utf8_lossy(&resp.body));
    assert!(resp.error().contains("did not finish"), "{}", resp.error());
    assert_eq!(
        state.running().available_permits(),
        0,
        "the pass is still held"
    );
    drop(stall);
    // The stalled pass runs, then gives its worker back; the server answers on.
    let worker = state.running().clone().acquire_owned().await.unwrap();
    drop(worker);
    let text = scrape(addr).await;
    assert_eq!(metric(&text, "serve_batch_size_count", &[]), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "serve_requests_total",
            &["route=\"/predict\"", "status=\"504\""]
        ),
        Some(1.0)
    );
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);
}

/// Requests queued together go through one forward pass, and each gets its own answer,
/// identical to `Learner::predict` on its image.
#[tokio::test]
async fn batched_requests_each_get_their_own_answer() {
    let (addr, state) = start(Config {
        workers: 1,
        max_batch: 8,
        ..Config::default()
    })
    .await;
    let names = [
        "chelsea.png",
        "grace_hopper.jpg",
        "rocket.jpg",
        "horse_RGBA.png",
        "rocket_tiny.png",
        "coffee_odd.png",
    ];
    // Stall the worker so that all six are queued before the batch forms.
    let worker = state.running().clone().acquire_owned().await.unwrap();
    let tasks: Vec<_> = names
        .iter()
        .map(|&name| {
            tokio::spawn(
                async move { request(addr, "POST", "/predict", &[], &fixture(name)).await },
            )
        })
        .collect();
    until_queued(&state, names.len() as i64).await;
    drop(worker);
    for (name, task) in names.iter().zip(tasks) {
        assert_prediction(&task.await.unwrap(), name);
    }
    let text = scrape(addr).await;
    assert_eq!(metric(&text, "serve_batch_size_count", &[]), Some(1.0));
    assert_eq!(metric(&text, "serve_batch_size_sum", &[]), Some(6.0));
    assert_eq!(metric(&text, "serve_queue_depth", &[]), Some(0.0));
}

/// More queued requests than `max_batch` make several batches, none over the limit.
#[tokio::test]
async fn a_batch_never_exceeds_max_batch() {
    let (addr, state) = start(Config {
        workers: 1,
        max_batch: 2,
        ..Config::default()
    })
    .await;
    let worker = state.running().clone().acquire_owned().await.unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await
            })
        })
        .collect();
    until_queued(&state, 5).await;
    drop(worker);
    for task in tasks {
        assert_prediction(&task.await.unwrap(), "rocket_tiny.png");
    }
    let text = scrape(addr).await;
    assert_eq!(metric(&text, "serve_batch_size_sum", &[]), Some(5.0));
    assert_eq!(metric(&text, "serve_batch_size_count", &[]), Some(3.0));
    // Cumulative buckets: every batch has at most 2 requests.
    assert_eq!(
        metric(&text, "serve_batch_size_bucket", &["le=\"2\""]),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "serve_batch_size_bucket", &["le=\"1\""]),
        Some(1.0)
    );
}

/// `/ready` is 503 while the model loads, 200 once it is loaded and warmed up, and 503 again
/// once shutdown begins; `/health` answers 200 throughout.
#[tokio::test]
async fn ready_follows_loading_and_shutdown() {
    let (addr, state) = serve(AppState::loading(Config::default())).await;
    let resp = request(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(resp.status, 503);
    assert!(resp.error().contains("loading"), "{}", resp.error());
    let resp = request(addr, "GET", "/health", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["classes"], serde_json::Value::Null);
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_eq!(resp.status, 503);
    assert!(resp.error().contains("loading"), "{}", resp.error());

    let learner = learner();
    app::warm_up(&learner).unwrap();
    state.set_learner(learner.clone(), std::time::Duration::from_millis(1500));
    let resp = request(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["status"], "ready");
    let resp = request(addr, "GET", "/health", &[], b"").await;
    assert_eq!(resp.json()["classes"], learner.vocab().len());
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_prediction(&resp, "rocket_tiny.png");
    let text = scrape(addr).await;
    assert_eq!(metric(&text, "serve_model_load_seconds", &[]), Some(1.5));

    state.begin_shutdown();
    let resp = request(addr, "GET", "/ready", &[], b"").await;
    assert_eq!(resp.status, 503);
    assert!(resp.error().contains("shutting down"), "{}", resp.error());
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);
}

/// `/metrics` speaks Prometheus' text format and its counters move with the traffic.
#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let (addr, _) = start(Config::default()).await;
    let before = scrape(addr).await;
    // (The labelled families appear once they have a series: checked after the traffic.)
    for name in [
        "serve_batch_size",
        "serve_batch_duration_seconds",
        "serve_queue_depth",
        "serve_in_flight_requests",
        "serve_model_load_seconds",
        "serve_build_info",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} in {before}"
        );
    }
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        metric(&before, "serve_build_info", &[&version, "device=\"cpu\""]),
        Some(1.0)
    );
    // The scrape itself is in flight while the text is made.
    assert_eq!(metric(&before, "serve_in_flight_requests", &[]), Some(1.0));
    assert_eq!(metric(&before, "serve_queue_depth", &[]), Some(0.0));
    assert_eq!(
        metric(&before, "serve_requests_total", &["route=\"/predict\""]),
        None
    );

    let resp = request(addr, "POST", "/predict", &[], &fixture("chelsea.png")).await;
    assert_prediction(&resp, "chelsea.png");
    assert_eq!(
        request(addr, "POST", "/predict", &[], b"junk").await.status,
        400
    );
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);
    assert_eq!(
        request(addr, "GET", "/no/such/page", &[], b"").await.status,
        404
    );

    let after = scrape(addr).await;
    for name in ["serve_requests_total", "serve_request_duration_seconds"] {
        assert!(
            after.contains(&format!("# TYPE {name} ")),
            "{name} in {after}"
        );
    }
    let count = |labels: &[&str]| metric(&after, "serve_requests_total", labels);
    assert_eq!(count(&["route=\"/predict\"", "status=\"200\""]), Some(1.0));
    assert_eq!(count(&["route=\"/predict\"", "status=\"400\""]), Some(1.0));
    assert_eq!(count(&["route=\"/health\"", "status=\"200\""]), Some(1.0));
    assert_eq!(count(&["route=\"other\"", "status=\"404\""]), Some(1.0));
    // The first scrape was counted once it was answered.
    assert_eq!(count(&["route=\"/metrics\"", "status=\"200\""]), Some(1.0));
    assert_eq!(
        metric(
            &after,
            "serve_request_duration_seconds_count",
            &["route=\"/predict\""]
        ),
        Some(2.0)
    );
    // The junk body never reached the model: one forward pass of one image.
    assert_eq!(metric(&after, "serve_batch_size_count", &[]), Some(1.0));
    assert_eq!(metric(&after, "serve_batch_size_sum", &[]), Some(1.0));
    assert_eq!(
        metric(&after, "serve_batch_duration_seconds_count", &[]),
        Some(1.0)
    );
}

/// A client that goes away in the middle of its upload frees its slot: with room for one
/// request only, the next request is served.
#[tokio::test]
async fn a_client_that_disconnects_mid_upload_frees_its_slot() {
    let (addr, state) = start(Config {
        workers: 1,
        queue: 0,
        max_batch: 1,
        ..Config::default()
    })
    .await;
    assert_eq!(state.admitted().available_permits(), 1);
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100000\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(&fixture("chelsea.png")[..5000])
            .await
            .unwrap();
        drop(stream);
        // Wait (no bound on the result) until the server has noticed and let the slot go.
        while state.admitted().available_permits() < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let resp = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_prediction(&resp, "rocket_tiny.png");
}

/// A flood of oversize bodies is refused (413) without holding back a good request sent
/// among them.
#[tokio::test]
async fn a_flood_of_oversize_bodies_does_not_stall_a_good_request() {
    let limit = 32 * 1024;
    let (addr, _) = start(Config {
        max_body_bytes: limit,
        ..Config::default()
    })
    .await;
    let big = vec![0u8; 1024 * 1024];
    let floods: Vec<_> = (0..24)
        .map(|i| {
            let body = big.clone();
            tokio::spawn(async move {
                let head = if i % 2 == 0 {
                    format!(
                        "POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                } else {
                    // No declared length: the limit is found while reading.
                    format!("POST /predict HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n")
                };
                let body = if i % 2 == 0 {
                    body
                } else {
                    let mut c = format!("{:x}\r\n", body.len()).into_bytes();
                    c.extend_from_slice(&body);
                    c.extend_from_slice(b"\r\n0\r\n\r\n");
                    c
                };
                request_streaming(addr, head, body).await.status
            })
        })
        .collect();
    let good = request(addr, "POST", "/predict", &[], &fixture("rocket_tiny.png")).await;
    assert_prediction(&good, "rocket_tiny.png");
    for f in floods {
        assert_eq!(f.await.unwrap(), 413);
    }
}

/// A multi-label learner (`tests/fixtures/tfms/multilabel.safetensors`, a fastai
/// `MultiCategoryBlock` learner exported by `scripts/make_fixtures_tfms.py multilabel`) answers
/// with every label over its threshold and one probability per class, as `predict --json`
/// prints it, and the label sets are fastai's own (`multilabel.json`).
#[tokio::test]
async fn a_multi_label_learner_answers_with_its_label_set() {
    let dir = format!("{ROOT}/tests/fixtures/tfms");
    let learn = Learner::load(format!("{dir}/multilabel.safetensors"), &Device::Cpu).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/multilabel.json")).unwrap())
            .unwrap();
    let (addr, _) = serve(AppState::new(Arc::new(learn), Config::default())).await;
    let images = want["images"].as_array().unwrap();
    for (i, image) in images.iter().enumerate() {
        let image = image.as_str().unwrap();
        let resp = request(
            addr,
            "POST",
            "/predict",
            &[("Content-Type", "image/png")],
            &fixture(image),
        )
        .await;
        assert_eq!(resp.status, 200, "{image}");
        let got = resp.json();
        assert_eq!(got["labels"], want["labels"][i], "{image}");
        let probs = got["probabilities"].as_array().expect("probabilities");
        assert_eq!(
            probs.len(),
            want["vocab"].as_array().unwrap().len(),
            "{image}"
        );
        assert!(got.get("label").is_none(), "{image}: {got}");
        assert_eq!(got["top_k"].as_array().unwrap().len(), 3, "{image}");
    }
}

/// Shutdown (SIGTERM in main) turns `/ready` to 503 while the listener is still open, then
/// closes it and lets the request in flight finish with its answer.
#[tokio::test]
async fn shutdown_turns_ready_503_first_then_drains_the_requests_in_flight() {
    let state = AppState::new(
        learner(),
        Config {
            workers: 1,
            ..Config::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = app::drain_on(
        state.clone(),
        async move {
            let _ = signal_rx.await;
        },
        async move {
            let _ = hold_rx.await;
        },
    );
    let server = tokio::spawn(
        axum::serve(listener, app::app(state.clone()))
            .with_graceful_shutdown(shutdown)
            .into_future(),
    );
    // A request in flight: its forward pass is stalled at the gate.
    let stall = state.inference_gate().clone().write_owned().await;
    let in_flight = tokio::spawn(async move {
        request(addr, "POST", "/predict", &[], &fixture("chelsea.png")).await
    });
    while state.running().available_permits() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(request(addr, "GET", "/ready", &[], b"").await.status, 200);
    signal_tx.send(()).unwrap();
    // Readiness turns 503 while the listener still accepts.
    loop {
        let resp = request(addr, "GET", "/ready", &[], b"").await;
        if resp.status == 503 {
            assert!(resp.error().contains("shutting down"), "{}", resp.error());
            break;
        }
        assert_eq!(resp.status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);
    // Close the listener, then let the stalled pass finish: the request gets its answer and
    // the server stops.
    hold_tx.send(()).unwrap();
    drop(stall);
    assert_prediction(&in_flight.await.unwrap(), "chelsea.png");
    server.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// A panic inside the CPU fast path (injected through the model's test hook) fails that one
/// request with a JSON 500, never hangs the server, and the next request gets its answer.
#[tokio::test]
async fn a_panic_in_an_inference_is_a_500_and_the_server_keeps_serving() {
    let path = format!("{ROOT}/weights/pets_vit_tiny.safetensors");
    let learn = Arc::new(Learner::load(path, &Device::Cpu).unwrap());
    let (addr, _) = serve(AppState::new(Arc::clone(&learn), Config::default())).await;
    let body = fixture("chelsea.png");
    let png = [("Content-Type", "image/png")];
    assert!(learn.model().inject_fast_path_panic(3, 0), "a ViT");
    let resp = request(addr, "POST", "/predict", &png, &body).await;
    assert_eq!(resp.status, 500, "{}", String::from_utf8_lossy(&resp.body));
    let err = resp.error();
    assert!(err.contains("panicked"), "{err}");
    let resp = request(addr, "POST", "/predict", &png, &body).await;
    assert_prediction(&resp, "chelsea.png");
}
