//! The predict command (`examples/predict`), run in-process: its logic is `#[path]`-included
//! from `examples/predict/cli.rs`, so every path, exit code and message is tested without
//! spawning `cargo run` (and without depending on the example binary being built). The flags it
//! shares with bench, serve and convert come from `examples/common/mod.rs` through it.
//!
//! Where a real process is needed (piped standard streams), the test binary runs itself as the
//! child: the ignored test `predict_child_process` is predict's `main`.

#[path = "../examples/predict/cli.rs"]
mod cli;
mod tiny;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use cli::{expand, Input, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE};

/// Runs the command (no progress bar); returns (exit code, stdout, stderr).
fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (u8, String, String) {
    let argv: Vec<OsString> = args.iter().map(|a| a.as_ref().to_os_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(argv, &mut out, &mut err, false);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A temp dir holding the tiny model (fast to load and run) as `tiny.safetensors`.
fn tiny_weights() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.safetensors");
    std::fs::write(&p, tiny::bytes()).unwrap();
    (dir, p)
}

/// A tree of inputs:
/// ```text
/// tree/b.PNG              image (upper-case extension)
/// tree/a/z.jpg            image
/// tree/a/y.gif            not an image despite its name
/// tree/a/notes.txt        skipped (extension)
/// tree/.hidden.png        skipped (hidden)
/// tree/c/                 empty subdirectory (nothing)
/// ```
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let t = d.path();
    std::fs::create_dir_all(t.join("a")).unwrap();
    std::fs::create_dir_all(t.join("c")).unwrap();
    std::fs::copy(fixture("hostile/gray8.png"), t.join("b.PNG")).unwrap();
    std::fs::copy(fixture("hostile/rgb8.jpg"), t.join("a/z.jpg")).unwrap();
    std::fs::write(t.join("a/y.gif"), b"GIF? no, a text file").unwrap();
    std::fs::write(t.join("a/notes.txt"), b"notes").unwrap();
    std::fs::copy(fixture("hostile/gray8.png"), t.join(".hidden.png")).unwrap();
    d
}

#[test]
fn help_documents_the_flags_and_the_exit_codes() {
    for flag in ["--help", "-h"] {
        let (code, out, err) = run(&[&flag]);
        assert_eq!(code, EXIT_OK);
        assert!(err.is_empty());
        for line in [
            "Usage: predict [OPTIONS] <PATH>...",
            "--weights <FILE>",
            "--labels <FILE>",
            "--device <DEVICE>",
            "cpu, cuda (the first GPU) or",
            "--top-k <N>",
            "--max-pixels <N>",
            "[default: 178956970]",
            "--exif-orientation",
            "--dump-input <DIR>",
            "--json",
            "exit codes:",
            "0  every image predicted",
            "1  some input failed",
            "2  bad arguments",
        ] {
            assert!(out.contains(line), "{flag} lacks {line:?}:\n{out}");
        }
    }
}

#[test]
fn bad_arguments_exit_2_with_a_message_naming_the_argument() {
    for (args, says) in [
        (vec![], "<PATH>"),
        (
            vec!["--top-k", "0", "x.png"],
            "'--top-k <N>': expected an integer >= 1",
        ),
        (vec!["--top-k"], "--top-k"),
        (vec!["--top-k", "-3", "x.png"], "unexpected argument '-3'"),
        (vec!["--max-pixels", "lots", "x.png"], "'--max-pixels <N>'"),
        (
            vec!["--max-pixels", "0", "x.png"],
            "expected an integer >= 1",
        ),
        (
            vec!["--frobnicate", "x.png"],
            "unexpected argument '--frobnicate'",
        ),
        (
            vec!["--weight", "w", "x.png"],
            "a similar argument exists: '--weights'",
        ),
        (vec!["--weights"], "--weights"),
        (
            vec!["--device", "gpu", "x.png"],
            "expected cpu, cuda or cuda:N",
        ),
        (vec!["--device", "cuda:x", "x.png"], "device \"cuda:x\""),
        (vec!["--json=yes", "x.png"], "--json"),
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let (code, out, err) = run(&a);
        assert_eq!(code, EXIT_USAGE, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            err.starts_with("error: ") && err.contains(says) && err.contains("try '--help'"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_repeated_flag_takes_its_last_value() {
    let (_w, weights) = tiny_weights();
    let img = fixture("hostile/gray8.png");
    let (code, out, err) = run(&[
        &"--weights",
        &"missing.safetensors",
        &"--weights",
        &weights,
        &"--top-k",
        &"2",
        &"--top-k",
        &"1",
        &img,
    ]);
    assert_eq!(code, EXIT_OK, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn after_double_dash_everything_is_a_path() {
    let (_w, weights) = tiny_weights();
    // `--json` here is a (missing) file, not the flag: text mode, and its path in the error.
    let (code, out, err) = run(&[&"--weights", &weights, &"--", &"--json"]);
    assert_eq!(code, EXIT_SOME_FAILED, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("error: cannot read --json"), "{err}");
}

#[test]
fn weights_that_do_not_load_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let img = fixture("hostile/gray8.png");
    let (code, out, err) = run(&[&"--weights", &missing, &img]);
    assert_eq!(code, EXIT_USAGE);
    assert!(out.is_empty());
    assert!(err.contains("missing.safetensors"), "{err}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not weights").unwrap();
    let (code, _, err) = run(&[&"--weights", &garbage, &img]);
    assert_eq!(code, EXIT_USAGE);
    assert!(err.contains("garbage.safetensors"), "{err}");
    // A labels file that is missing, and a --dump-input directory that cannot be created.
    let (_w, weights) = tiny_weights();
    let labels = dir.path().join("labels.txt");
    let (code, _, err) = run(&[&"--weights", &weights, &"--labels", &labels, &img]);
    assert_eq!(code, EXIT_USAGE);
    assert!(err.contains("labels.txt"), "{err}");
    let under_file = garbage.join("dump");
    let (code, out, err) = run(&[&"--weights", &weights, &"--dump-input", &under_file, &img]);
    assert_eq!(code, EXIT_USAGE);
    assert!(out.is_empty() && err.contains("cannot create"), "{err}");
}

#[test]
fn directories_are_walked_recursively_in_sorted_order() {
    let t = tree();
    let root = t.path();
    assert_eq!(
        expand(&[root.to_path_buf()]),
        vec![
            Input::Image(root.join("a/y.gif")),
            Input::Image(root.join("a/z.jpg")),
            Input::Image(root.join("b.PNG")),
        ]
    );
    // Files named on the command line are taken whatever their name; order is kept.
    let notes = root.join("a/notes.txt");
    assert_eq!(
        expand(&[notes.clone(), root.join("a")]),
        vec![
            Input::Image(notes),
            Input::Image(root.join("a/y.gif")),
            Input::Image(root.join("a/z.jpg")),
        ]
    );
}

#[test]
fn missing_paths_and_empty_directories_are_reported_in_place() {
    let t = tree();
    let root = t.path();
    let missing = root.join("nope.jpg");
    let got = expand(&[missing.clone(), root.join("c")]);
    assert!(matches!(&got[0], Input::Failed(p, e) if p == &missing && e.contains("nope.jpg")));
    assert!(
        matches!(&got[1], Input::Failed(p, e) if p == &root.join("c") && e.contains("no images"))
    );
    assert_eq!(got.len(), 2);
    // A path through a file, and a dangling symlink: unreadable whoever runs the test.
    let through = root.join("b.PNG/inner.png");
    let got = expand(std::slice::from_ref(&through));
    assert!(
        matches!(&got[..], [Input::Failed(p, e)] if p == &through && e.contains("cannot read"))
    );
    #[cfg(unix)]
    {
        let link = root.join("dangling.jpg");
        std::os::unix::fs::symlink(root.join("gone.jpg"), &link).unwrap();
        let got = expand(std::slice::from_ref(&link));
        assert!(
            matches!(&got[..], [Input::Failed(p, _)] if p == &link),
            "{got:?}"
        );
    }
}

#[test]
fn a_mixed_run_predicts_what_it_can_and_exits_1() {
    let (_w, weights) = tiny_weights();
    let t = tree();
    let root = t.path();
    let missing = root.join("missing.png");
    let (code, out, err) = run(&[&"--weights", &weights, &"--json", &root, &missing]);
    assert_eq!(code, EXIT_SOME_FAILED, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: Vec<&str> = lines.iter().map(|v| v["path"].as_str().unwrap()).collect();
    let s = |p: PathBuf| p.display().to_string();
    assert_eq!(
        paths,
        [
            s(root.join("a/y.gif")),
            s(root.join("a/z.jpg")),
            s(root.join("b.PNG")),
            s(missing.clone()),
        ]
    );
    // The fake GIF and the missing file failed, each with its path in the message.
    assert!(lines[0]["error"].as_str().unwrap().contains("y.gif"));
    assert!(lines[3]["error"].as_str().unwrap().contains("missing.png"));
    for v in &lines[1..3] {
        assert!(v.get("error").is_none(), "{v}");
        assert!(["cat", "dog"].contains(&v["label"].as_str().unwrap()));
        assert_eq!(v["probabilities"].as_array().unwrap().len(), 2);
    }
    // Text mode: predictions on stdout, one error line per failed path on stderr.
    let (code, out, err) = run(&[&"--weights", &weights, &root, &missing]);
    assert_eq!(code, EXIT_SOME_FAILED);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.lines().all(|l| l.starts_with("error: ")));
    assert!(out.contains("z.jpg") && out.contains("b.PNG") && !out.contains("y.gif"));
}

#[test]
fn an_all_good_run_exits_0() {
    let (_w, weights) = tiny_weights();
    let img = fixture("hostile/palette4.png");
    let (code, out, err) = run(&[&"--weights", &weights, &"--top-k", &"1", &img]);
    assert_eq!(code, EXIT_OK, "{err}");
    assert!(err.is_empty());
    assert_eq!(out.lines().count(), 2, "{out}");
    // --dump-input writes the model input: the tiny model's (1, 3, 8, 8) f32 after the header.
    let dump = tempfile::tempdir().unwrap();
    let (code, _, _) = run(&[&"--weights", &weights, &"--dump-input", &dump.path(), &img]);
    assert_eq!(code, EXIT_OK);
    let npy = std::fs::read(dump.path().join("palette4.npy")).unwrap();
    assert!(npy.starts_with(b"\x93NUMPY"));
    assert_eq!(npy.len() % 64, (3 * 8 * 8 * 4) % 64);
    assert!(npy.len() > 3 * 8 * 8 * 4);
}

#[test]
fn the_pixel_limit_and_exif_options_reach_the_decoder() {
    let (_w, weights) = tiny_weights();
    let img = fixture("hostile/gray8.png"); // 32x24 = 768 pixels
    let (code, _, err) = run(&[&"--weights", &weights, &"--max-pixels", &"767", &img]);
    assert_eq!(code, EXIT_SOME_FAILED);
    assert!(
        err.contains("over the limit of 767 pixels") && err.contains("gray8.png"),
        "{err}"
    );
    let (code, _, _) = run(&[&"--weights", &weights, &"--max-pixels", &"768", &img]);
    assert_eq!(code, EXIT_OK);
    let exif = fixture("hostile/exif_rotate90_png.png");
    let (code, plain, _) = run(&[&"--weights", &weights, &"--json", &exif]);
    assert_eq!(code, EXIT_OK);
    let (code, turned, _) = run(&[
        &"--weights",
        &weights,
        &"--json",
        &"--exif-orientation",
        &exif,
    ]);
    assert_eq!(code, EXIT_OK);
    // The rotated image is a different input: its probabilities differ.
    let probs =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["probabilities"].clone();
    assert_ne!(probs(&plain), probs(&turned));
}

#[cfg(unix)]
#[test]
fn unreadable_directories_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let t = tree();
    let locked = t.path().join("a");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let readable = std::fs::read_dir(&locked).is_ok();
    let got = expand(&[t.path().to_path_buf()]);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    if readable {
        // Running as root: permissions do not stop reads; nothing to test here.
        return;
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[0], Input::Failed(p, e) if p == &locked && e.contains("cannot read directory"))
    );
    assert_eq!(got[1], Input::Image(t.path().join("b.PNG")));
}

#[test]
fn labels_and_device_cpu_are_used() {
    let (_w, weights) = tiny_weights();
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "first\nsecond\n").unwrap();
    let img = fixture("hostile/gray8.png");
    let (code, out, err) = run(&[
        &"--weights",
        &weights,
        &"--labels",
        &labels,
        &"--device",
        &"cpu",
        &"--json",
        &img,
    ]);
    assert_eq!(code, EXIT_OK, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        ["first", "second"].contains(&v["label"].as_str().unwrap()),
        "{v}"
    );
    // Three labels for a two-class head: refused before anything runs, naming the file.
    std::fs::write(&labels, "a\nb\nc\n").unwrap();
    let (code, out, err) = run(&[&"--weights", &weights, &"--labels", &labels, &img]);
    assert_eq!(code, EXIT_USAGE);
    assert!(out.is_empty() && err.contains("labels.txt"), "{err}");
}

/// In a build without the `cuda` feature, asking for a GPU is a usage error that says how to
/// get one, before the weights are read.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_build_without_the_feature_exits_2_saying_so() {
    let img = fixture("hostile/gray8.png");
    for device in ["cuda", "cuda:0", "cuda:3"] {
        let (code, out, err) = run(&[&"--device", &device, &"--weights", &"nowhere", &img]);
        assert_eq!(code, EXIT_USAGE, "{device}");
        assert!(out.is_empty());
        assert!(
            err.starts_with("error: device \"cuda:")
                && err.contains("no CUDA support")
                && err.contains("--features cuda")
                && !err.contains("nowhere"),
            "{err}"
        );
    }
}

/// A writer that records how many bytes had been written at each flush.
#[derive(Default)]
struct FlushLog {
    bytes: Vec<u8>,
    flushed_at: Vec<usize>,
}

impl Write for FlushLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.flushed_at.push(self.bytes.len());
        Ok(())
    }
}

/// Each image's result is flushed as soon as it is written, not collected to the end: with
/// `--json`, the flushes fall exactly at the end of every line, one line per input, good or
/// failed.
#[test]
fn results_are_flushed_one_image_at_a_time() {
    let (_w, weights) = tiny_weights();
    let t = tree();
    let missing = t.path().join("missing.png");
    for json in [true, false] {
        let mut argv: Vec<OsString> = vec!["--weights".into(), weights.clone().into()];
        if json {
            argv.push("--json".into());
        }
        argv.extend([t.path().into(), missing.clone().into()]);
        let (mut out, mut err) = (FlushLog::default(), Vec::new());
        let code = cli::run(argv, &mut out, &mut err, false);
        assert_eq!(code, EXIT_SOME_FAILED);
        let text = String::from_utf8(out.bytes).unwrap();
        let mut flushes = out.flushed_at.clone();
        flushes.dedup();
        if json {
            // Four inputs: y.gif (fails), z.jpg, b.PNG, missing.png (fails).
            let ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
            assert_eq!(ends.len(), 4, "{text}");
            assert_eq!(flushes, ends, "{text}");
        } else {
            // Text mode: a flush after each image's block (the two that decoded) and after
            // each failure (its line is on stderr; stdout is flushed all the same).
            assert_eq!(out.flushed_at.len(), 4, "{text}");
            let blocks: Vec<usize> = text
                .match_indices("\n/")
                .map(|(i, _)| i + 1)
                .chain([text.len()])
                .collect();
            assert!(
                blocks.iter().all(|b| flushes.contains(b)),
                "{flushes:?} {text}"
            );
        }
    }
}

/// The environment variable that turns `predict_child_process` into predict's `main`: the
/// arguments, one per line.
const CHILD_ARGS: &str = "FASTAI_INFER_PREDICT_CHILD_ARGS";

/// predict's `main` in a child process (run by the tests below, with `--ignored --exact`):
/// the process's own standard streams, the progress bar when standard error is a terminal.
#[test]
#[ignore = "the child process of the piped-streams test; does nothing alone"]
fn predict_child_process() {
    let Some(args) = std::env::var_os(CHILD_ARGS) else {
        eprintln!("{CHILD_ARGS} is not set: nothing to run");
        return;
    };
    let args = args.into_string().expect("the test passes UTF-8 paths");
    let code = cli::run_on_process_streams(args.split('\n').map(OsString::from));
    std::process::exit(i32::from(code));
}

/// Kills the child on drop, so that a failed assertion does not leave it blocked on the FIFO.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real predict process with piped stdout and stderr: the first image's JSON line arrives
/// while the process is still running (it is blocked on the second input, a FIFO nobody has
/// written yet), and nothing at all (no progress bar, no escape codes) goes to the piped
/// stderr.
#[cfg(unix)]
#[test]
fn piped_json_streams_per_image_and_stderr_stays_silent() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let (_w, weights) = tiny_weights();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("late.png");
    match Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipped: mkfifo did not make a FIFO ({other:?})");
            return;
        }
    }
    let first = fixture("hostile/gray8.png");
    let args = [
        "--weights".to_string(),
        weights.display().to_string(),
        "--json".to_string(),
        first.display().to_string(),
        fifo.display().to_string(),
    ]
    .join("\n");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "predict_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ARGS, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    // Were the first line held back until the end, the child would wait on the FIFO and this
    // test on the line: after 5 minutes a watchdog kills the child, which fails the test
    // below instead of hanging it.
    let (first_seen, watch) = std::sync::mpsc::channel::<()>();
    let pid = child.0.id().to_string();
    std::thread::spawn(move || {
        let timeout = std::time::Duration::from_secs(300);
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(timeout) {
            let _ = Command::new("kill").arg(&pid).status();
        }
    });
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut stderr = child.0.stderr.take().unwrap();
    // The test harness prints its own lines ("running 1 test") on stdout first.
    let first_line = loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).unwrap();
        if n == 0 {
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            panic!("predict ended before writing its first result; stderr: {e}");
        }
        if line.starts_with('{') {
            break line;
        }
    };
    let _ = first_seen.send(());
    // The process cannot finish before something opens the FIFO for writing.
    assert!(child.0.try_wait().unwrap().is_none());
    let v: serde_json::Value = serde_json::from_str(&first_line).unwrap();
    assert_eq!(v["path"], first.display().to_string());
    assert!(v.get("error").is_none(), "{v}");

    let image = std::fs::read(&first).unwrap();
    let fifo_path = fifo.clone();
    let writer = std::thread::spawn(move || std::fs::write(fifo_path, image));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.0.wait().unwrap();
    let mut err = Vec::new();
    stderr.read_to_end(&mut err).unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        String::from_utf8_lossy(&err)
    );
    writer.join().unwrap().unwrap();
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{rest}");
    assert_eq!(lines[0]["path"], fifo.display().to_string());
    assert_eq!(lines[0]["probabilities"], v["probabilities"]);
    assert!(
        err.is_empty(),
        "stderr: {:?}",
        String::from_utf8_lossy(&err)
    );
}
