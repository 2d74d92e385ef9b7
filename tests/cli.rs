//! The predict command (`examples/predict`), run in-process: its logic is `#[path]`-included
//! from `examples/predict/cli.rs`, so every path, exit code and message is tested without
//! spawning `cargo run` (and without depending on the example binary being built).

#[path = "../examples/predict/cli.rs"]
mod cli;
mod tiny;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use cli::{expand, Input, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE};

/// Runs the command; returns (exit code, stdout, stderr).
fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (u8, String, String) {
    let argv: Vec<OsString> = args.iter().map(|a| a.as_ref().to_os_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(argv, &mut out, &mut err);
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
fn help_documents_the_exit_codes() {
    let (code, out, err) = run(&[&"--help"]);
    assert_eq!(code, EXIT_OK);
    assert!(err.is_empty());
    for line in [
        "exit codes:",
        "0  every image predicted",
        "1  some input failed",
        "2  bad arguments",
    ] {
        assert!(out.contains(line), "--help lacks {line:?}");
    }
}

#[test]
fn bad_arguments_exit_2_with_the_usage() {
    for args in [
        vec![],
        vec!["--top-k", "0", "x.png"],
        vec!["--top-k"],
        vec!["--max-pixels", "lots", "x.png"],
        vec!["--frobnicate", "x.png"],
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let (code, out, err) = run(&a);
        assert_eq!(code, EXIT_USAGE, "{args:?}");
        assert!(out.is_empty());
        assert!(
            err.starts_with("error: ") && err.contains("usage: predict"),
            "{err}"
        );
    }
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
