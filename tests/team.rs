//! The CPU fast path inside an application: a panic in one of its tasks comes back as an
//! error and leaves the learner working, concurrent passes on a small thread pool finish with
//! the same bits as one pass alone, and the SIMD level is a per-learner choice.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use fastai_infer::{rayon, Learner, Simd};

fn learner() -> Learner {
    Learner::load(common::weights(), &Device::Cpu).unwrap()
}

/// A batch of fastai's own model inputs for the fixture images, `n` of them (cycling).
fn inputs(n: usize) -> Tensor {
    let names = [
        "chelsea.png",
        "rocket.jpg",
        "coffee_odd.png",
        "astronaut_portrait.png",
    ];
    let each: Vec<Tensor> = names
        .iter()
        .take(n)
        .map(|name| common::fastai_input(&common::fixture(name)))
        .collect();
    let all: Vec<&Tensor> = (0..n).map(|i| &each[i % each.len()]).collect();
    Tensor::cat(&all, 0).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Runs `f` on another thread and fails the test if it has not finished within `secs` (a
/// hang would otherwise stall the whole test run).
fn within<R: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: not finished after {secs} s (hung?)"))
}

/// A panic injected into a task of the fast path (the embedding stage, a middle block, the
/// last block; the caller's task and a helper's) comes back from `logits` as an error, on
/// pools of 1 and 2 threads and on rayon's global pool, and the next pass gives the same bits
/// as before the panic.
#[test]
fn a_panic_in_a_fast_path_task_is_an_error_and_the_next_pass_works() {
    let base = learner();
    let x = inputs(2);
    let want = bits(&base.logits(&x).unwrap());
    let learners = [
        ("global pool", base.clone()),
        ("1 thread", base.clone().with_num_threads(1).unwrap()),
        ("2 threads", base.clone().with_num_threads(2).unwrap()),
    ];
    for (what, learn) in learners {
        let learn = Arc::new(learn);
        // One task per pool thread: a one-thread pool has task 0 only.
        let threads = learn
            .thread_pool()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let spots = [(0, 0), (5, 1), (12, 0), (12, 1)];
        for (stage, task) in spots.into_iter().filter(|&(_, t)| t < threads) {
            let (l, xx) = (Arc::clone(&learn), x.clone());
            let err = within(300, what, move || {
                assert!(l.model().inject_fast_path_panic(stage, task), "a ViT");
                l.logits(&xx).map(|_| ())
            })
            .expect_err("the injected panic");
            let msg = err.to_string();
            assert!(
                msg.contains("panicked") && msg.contains(&format!("task {task} of stage {stage}")),
                "{what}: {msg}"
            );
            let (l, xx) = (Arc::clone(&learn), x.clone());
            let again = within(300, what, move || l.logits(&xx).unwrap());
            assert_eq!(
                bits(&again),
                want,
                "{what}: after a panic at ({stage}, {task})"
            );
        }
    }
}

/// Two forward passes at once on a two-thread pool (each takes the threads that are free)
/// both finish, with the bits of each batch run alone; repeated so that the passes overlap
/// in different ways.
#[test]
fn concurrent_passes_on_a_two_thread_pool_give_the_same_bits() {
    let learn = Arc::new(learner().with_num_threads(2).unwrap());
    assert_eq!(
        learn.thread_pool().map(|p| p.current_num_threads()),
        Some(2)
    );
    let (one, four) = (inputs(1), inputs(4));
    let want_one = bits(&learn.logits(&one).unwrap());
    let want_four = bits(&learn.logits(&four).unwrap());
    let (l, one_, four_) = (Arc::clone(&learn), one.clone(), four.clone());
    let got = within(600, "two concurrent passes", move || {
        let (one, four) = (one_, four_);
        std::thread::scope(|s| {
            let a = s.spawn(|| {
                (0..4)
                    .map(|_| bits(&l.logits(&one).unwrap()))
                    .collect::<Vec<_>>()
            });
            let b = s.spawn(|| {
                (0..2)
                    .map(|_| bits(&l.logits(&four).unwrap()))
                    .collect::<Vec<_>>()
            });
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    for (i, g) in got.0.iter().enumerate() {
        assert_eq!(g, &want_one, "batch 1, pass {i}");
    }
    for (i, g) in got.1.iter().enumerate() {
        assert_eq!(g, &want_four, "batch 4, pass {i}");
    }
    // A pool of its own per learner gives the same bits as rayon's global pool.
    assert_eq!(bits(&learner().logits(&one).unwrap()), want_one);
}

#[test]
fn with_num_threads_refuses_zero() {
    let err = learner().with_num_threads(0).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

/// The SIMD level is a learner option: AVX2 and AVX-512 give the same bits, the baseline (no
/// AVX, the general matmul) stays within fastai's tolerance of them, and going back up gives
/// the original bits again. Levels the CPU lacks are capped at what it has.
#[test]
fn the_simd_level_is_a_learner_option() {
    let learn = learner();
    let x = inputs(2);
    let detected = Simd::detected();
    let default = learn.model().simd().expect("a ViT");
    assert!(default <= detected);
    let at = |simd: Simd| {
        let l = learn.clone().with_simd(simd).unwrap();
        assert_eq!(l.model().simd(), Some(simd.min(detected)), "{simd}");
        l.logits(&x).unwrap()
    };
    let avx512 = at(Simd::Avx512);
    let avx2 = at(Simd::Avx2);
    let baseline = at(Simd::Baseline);
    if detected >= Simd::Avx2 {
        assert_eq!(bits(&avx2), bits(&avx512), "AVX2 vs AVX-512");
    } else {
        eprintln!("skipped: AVX2 vs AVX-512 bit identity (this CPU has no AVX2 + FMA)");
    }
    let d = common::max_abs_diff(&baseline, &avx512);
    assert!(d <= 1e-4, "baseline vs the best level: {d}");
    // Down to the baseline (weights unpacked) and back up (repacked): the same bits.
    let round_trip = learn
        .clone()
        .with_simd(Simd::Baseline)
        .unwrap()
        .with_simd(Simd::Avx512)
        .unwrap();
    assert_eq!(bits(&round_trip.logits(&x).unwrap()), bits(&avx512));
    // The generic candle path (which unpacks packed weights) agrees with the fast path.
    let fastai_infer::model::Body::Vit(vit) = learn.model().body() else {
        panic!("a ViT");
    };
    let features = vit.forward_candle_ops(&x).unwrap();
    let fast = candle_core::Module::forward(vit, &x).unwrap();
    let d = common::max_abs_diff(&features, &fast);
    assert!(d <= 1e-4, "candle ops vs fast path: {d}");
}
