//! The CNN bodies and fastai's create_head against fastai itself.
//!
//! Fixtures: `tests/fixtures/models/`, written by `scripts/make_fixtures_models.py` from small
//! learners built by `vision_learner(..., pretrained=False)` and trained briefly: the f16
//! state_dicts, fastai's normalized input for four images (one DataLoaders for all models),
//! fastai's logits and `get_preds` probabilities; and the key -> shape layouts of full-size
//! learners.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use fastai_infer::model::{
    convnext, detect_family, head, resnet, vit, BodyConfig, Family, HeadOptions,
};
use fastai_infer::{Config, Error, FastaiWeights, Learner, Prediction, Recipe, Vocab};

fn model_path(name: &str) -> std::path::PathBuf {
    common::fixtures().join(format!("models/{name}.safetensors"))
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixtures().join("models/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every fixture model, on fastai's own input: logits and probabilities within 1e-4 of
/// fastai's, the same top-1.
#[test]
fn every_fixture_model_meets_the_fidelity_bars() {
    let golden = common::load("models/golden.safetensors");
    let input = &golden["input"];
    let m = manifest();
    let models = m["models"].as_array().unwrap();
    assert_eq!(models.len(), 7);
    for entry in models {
        let name = entry["name"].as_str().unwrap();
        let w = FastaiWeights::load(model_path(name), &Device::Cpu).unwrap();
        let vocab = w.vocab().unwrap().expect("the fixture carries its vocab");
        let learn = Learner::from_weights(&w, vocab.clone()).unwrap();
        let logits = learn.logits(input).unwrap();
        let dl = common::max_abs_diff(&logits, &golden[&format!("{name}.logits")]);
        let rows = logits.to_vec2::<f32>().unwrap();
        let probs_ref = golden[&format!("{name}.probs")].to_vec2::<f32>().unwrap();
        let mut dp = 0f32;
        for (i, (row, reference)) in rows.iter().zip(&probs_ref).enumerate() {
            let pred = Prediction::from_logits(row, &vocab).unwrap();
            for (p, r) in pred.probabilities.iter().zip(reference) {
                dp = dp.max((p - r).abs());
            }
            let top = reference
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(pred.index, top, "{name}, image {i}: top-1");
            assert_eq!(
                top as u64,
                entry["top1"][i].as_u64().unwrap(),
                "{name}, image {i}: the manifest's top-1"
            );
        }
        println!(
            "{name:20} {:60} logits {dl:.1e}  probabilities {dp:.1e}",
            w.config().body.to_string()
        );
        assert!(dl <= 1e-4, "{name}: logits differ by {dl}");
        assert!(dp <= 1e-4, "{name}: probabilities differ by {dp}");
    }
}

/// A batch of one gives the same logits as the same image inside the batch of four.
#[test]
fn batch_rows_are_independent() {
    let golden = common::load("models/golden.safetensors");
    let input = &golden["input"];
    for name in ["resnet_bottleneck", "convnext"] {
        let w = FastaiWeights::load(model_path(name), &Device::Cpu).unwrap();
        let model = w.build_model().unwrap();
        let all = candle_core::Module::forward(&model, input).unwrap();
        for i in 0..input.dim(0).unwrap() {
            let one =
                candle_core::Module::forward(&model, &input.narrow(0, i, 1).unwrap()).unwrap();
            let d = common::max_abs_diff(&one, &all.narrow(0, i, 1).unwrap());
            assert!(d <= 1e-5, "{name}, image {i}: {d}");
        }
    }
}

/// What the fixtures' keys and shapes say, as `vision_learner` was called in
/// scripts/make_fixtures_models.py.
#[test]
fn fixture_configs_are_what_vision_learner_built() {
    use head::Layer::*;
    let cfg = |name: &str| {
        FastaiWeights::load(model_path(name), &Device::Cpu)
            .unwrap()
            .config()
            .clone()
    };
    let resnet = |c: &Config| match &c.body {
        BodyConfig::ResNet(r) => r.clone(),
        other => panic!("not a ResNet: {other}"),
    };
    let basic = cfg("resnet_basic");
    let r = resnet(&basic);
    assert_eq!(r.layout, resnet::KeyLayout::Torchvision);
    assert_eq!(r.block, resnet::BlockKind::Basic);
    assert_eq!(
        (
            r.depths.as_slice(),
            r.planes.as_slice(),
            r.stem_width,
            r.groups
        ),
        (&[1, 1, 1, 1][..], &[8, 16, 32, 64][..], 8, 1)
    );
    assert_eq!(
        basic.head,
        head::Config::create_head(64, 3, &HeadOptions::default()).unwrap()
    );
    let bottleneck = cfg("resnet_bottleneck");
    let r = resnet(&bottleneck);
    assert_eq!(r.block, resnet::BlockKind::Bottleneck);
    assert_eq!(
        (r.depths.as_slice(), r.widths.as_slice(), r.groups),
        (&[2, 1, 1, 1][..], &[16, 32, 64, 128][..], 2)
    );
    assert_eq!(bottleneck.head.layers[0], AdaptiveAvgPool2d);
    assert_eq!(bottleneck.head.in_features, 256);
    let timm = cfg("resnet_timm");
    assert_eq!(resnet(&timm).layout, resnet::KeyLayout::Timm);
    assert_eq!(
        timm.head,
        head::Config::create_head(
            64,
            3,
            &HeadOptions::default().with_lin_ftrs(Some(vec![32, 16]))
        )
        .unwrap()
    );
    let lin_first = cfg("resnet_lin_first");
    assert_eq!(
        lin_first.head.layers,
        [
            AdaptiveConcatPool2d,
            Flatten,
            Dropout,
            Linear {
                in_features: 128,
                out_features: 24,
                bias: false
            },
            ReLU,
            BatchNorm1d(24),
            Dropout,
            Linear {
                in_features: 24,
                out_features: 3,
                bias: true
            },
            BatchNorm1d(3)
        ]
    );
    let convnext = cfg("convnext");
    let BodyConfig::ConvNext(c) = &convnext.body else {
        panic!("not a ConvNeXt: {convnext}");
    };
    assert_eq!(
        (c.depths.as_slice(), c.dims.as_slice()),
        (&[1, 1, 2, 1][..], &[16, 32, 48, 64][..])
    );
    assert_eq!(
        (c.patch_size, c.kernel_size, c.downsample_size, c.mlp_ratio),
        (4, 7, 2, 4)
    );
    assert!(c.layer_scale && !c.conv_mlp && !c.head_norm_first);
    let conv_mlp = cfg("convnext_conv_mlp");
    let BodyConfig::ConvNext(c) = &conv_mlp.body else {
        panic!("not a ConvNeXt: {conv_mlp}");
    };
    assert!(c.layer_scale && c.conv_mlp && c.head_norm_first);
    let plain = cfg("convnext_plain_head");
    assert_eq!(
        plain.head.layers,
        [
            AdaptiveAvgPool2d,
            Flatten,
            Linear {
                in_features: 32,
                out_features: 3,
                bias: true
            }
        ]
    );
}

/// The layouts of full-size learners, as `vision_learner(..., pretrained=False)` made them,
/// infer the standard configs with fastai's default head for 37 classes.
#[test]
fn full_size_layouts_infer_the_right_config() {
    let text = std::fs::read_to_string(common::fixtures().join("models/layouts.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let learners = v["learners"].as_object().unwrap();
    let timm_resnet50 = resnet::Config::resnet50().with_layout(resnet::KeyLayout::Timm);
    let expected: Vec<(&str, BodyConfig)> = vec![
        ("resnet18", BodyConfig::ResNet(resnet::Config::resnet18())),
        ("resnet34", BodyConfig::ResNet(resnet::Config::resnet34())),
        ("resnet50", BodyConfig::ResNet(resnet::Config::resnet50())),
        ("resnet101", BodyConfig::ResNet(resnet::Config::resnet101())),
        ("resnet152", BodyConfig::ResNet(resnet::Config::resnet152())),
        ("resnet50_timm", BodyConfig::ResNet(timm_resnet50)),
        (
            "convnext_tiny",
            BodyConfig::ConvNext(convnext::Config::convnext_tiny()),
        ),
        (
            "convnext_small",
            BodyConfig::ConvNext(convnext::Config::convnext_small()),
        ),
        (
            "convnext_base",
            BodyConfig::ConvNext(convnext::Config::convnext_base()),
        ),
        (
            "vit_tiny_patch16_224",
            BodyConfig::Vit(vit::Config::vit_tiny_patch16_224()),
        ),
    ];
    assert_eq!(learners.len(), expected.len());
    for (name, body) in expected {
        let l = &learners[name];
        let shapes: HashMap<String, Vec<usize>> = l["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let shape = kv[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (kv[0].as_str().unwrap().to_string(), shape)
            })
            .collect();
        let arch = l["arch"].as_str().unwrap();
        let want = Config::with_default_head(body, 37).unwrap();
        // With and without the arch name.
        for a in [Some(arch), None] {
            let got = Config::infer(&shapes, 224, a, None).unwrap();
            assert_eq!(got, want, "{name} (arch {a:?})");
        }
        // The keys and shapes the config expects are exactly the learner's, in its order.
        let listed: Vec<(String, Vec<usize>)> = l["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv[0].as_str().unwrap().to_string(),
                    shapes[kv[0].as_str().unwrap()].clone(),
                )
            })
            .collect();
        let mut ours = want.state_dict_shapes();
        let mut theirs = listed.clone();
        if want.family() == Family::ConvNext {
            // timm registers `gamma` before the block's modules; order aside, the same keys.
            ours.sort();
            theirs.sort();
        }
        assert_eq!(ours, theirs, "{name}: the state_dict keys and shapes");
        println!("{name:22} {want}");
    }
}

#[test]
fn an_unknown_body_is_refused_naming_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    // A DenseNet-like torchvision body: 0.0 is a conv, but no residual stages.
    let p = dir.path().join("densenet.safetensors");
    let z = |s: &[usize]| Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap();
    let tensors = [
        ("0.0.conv0.weight".to_string(), z(&[64, 3, 7, 7])),
        (
            "0.0.denseblock1.denselayer1.conv1.weight".to_string(),
            z(&[128, 64, 1, 1]),
        ),
        ("1.2.weight".to_string(), z(&[2048])),
    ];
    safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (k.clone(), t)), None, &p).unwrap();
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    match &err {
        Error::NotFastaiLearner {
            path,
            reason,
            found,
        } => {
            assert_eq!(path, &p);
            assert!(
                reason.contains("no body fastai-infer recognises"),
                "{reason}"
            );
            assert!(
                reason.contains("0.0.weight with 0.4.0.conv1.weight (torchvision ResNet)"),
                "{reason}"
            );
            assert!(found.contains("0.0.conv0.weight"), "{found}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("densenet.safetensors"), "{err}");
}

/// A fixture's tensors with `edit` applied, written to a temporary file.
fn edited(
    dir: &tempfile::TempDir,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> std::path::PathBuf {
    let mut t = candle_core::safetensors::load(model_path(name), &Device::Cpu).unwrap();
    edit(&mut t);
    let p = dir.path().join(format!("{name}_edited.safetensors"));
    safetensors::serialize_to_file(t.iter().map(|(k, v)| (k.clone(), v)), None, &p).unwrap();
    p
}

#[test]
fn a_custom_head_is_refused_naming_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    // custom_head=nn.Sequential(AdaptiveConcatPool2d(), Flatten(), nn.Linear(128, 3)) with a
    // conv in front: 1.0 holds a 4-d weight.
    let p = edited(&dir, "resnet_basic", |t| {
        t.retain(|k, _| !k.starts_with("1."));
        let z = |s: &[usize]| Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap();
        t.insert("1.0.weight".into(), z(&[16, 64, 3, 3]));
        t.insert("1.0.bias".into(), z(&[16]));
        t.insert("1.3.weight".into(), z(&[3, 32]));
    });
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    match &err {
        Error::UnsupportedHead { path, reason } => {
            assert_eq!(path, &p);
            assert!(
                reason.contains("layer 1.0 holds 1.0.bias [16], 1.0.weight [16, 64, 3, 3]"),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Two linear layers back to back, no ReLU or BatchNorm: not a create_head order.
    let p = edited(&dir, "convnext_plain_head", |t| {
        let w = t.remove("1.2.weight").unwrap();
        let b = t.remove("1.2.bias").unwrap();
        t.insert(
            "1.2.weight".into(),
            Tensor::zeros((8, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        t.insert(
            "1.3.weight".into(),
            w.narrow(1, 0, 8).unwrap().contiguous().unwrap(),
        );
        t.insert("1.3.bias".into(), b);
    });
    let err = FastaiWeights::load(&p, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedHead { reason, .. } if reason.contains("not in an order create_head makes")),
        "{err}"
    );
    assert!(err.to_string().contains("1.3 Linear(8, 3)"), "{err}");
}

#[test]
fn a_recipe_whose_arch_disagrees_with_the_body_is_refused_naming_both() {
    let recipe = Recipe {
        arch: Some("resnet34".into()),
        ..Default::default()
    };
    let err =
        FastaiWeights::load_with_recipe(model_path("convnext"), &recipe, &Device::Cpu).unwrap_err();
    match &err {
        Error::ArchMismatch {
            path,
            arch,
            arch_family,
            found,
            evidence,
        } => {
            assert!(path.ends_with("convnext.safetensors"));
            assert_eq!(arch, "resnet34");
            assert_eq!(*arch_family, Family::ResNet);
            assert_eq!(*found, "timm ConvNeXt");
            assert!(evidence.contains(&"0.model.stem.0.weight"), "{evidence:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("\"resnet34\"") && msg.contains("timm ConvNeXt"),
        "{msg}"
    );
    // And the other way round, a ViT name on ResNet keys; a name fastai-infer does not know
    // (a custom arch function's) leaves the keys to decide.
    let shapes: HashMap<String, Vec<usize>> =
        FastaiWeights::load(model_path("resnet_basic"), &Device::Cpu)
            .unwrap()
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
    let e = detect_family(&shapes, Some("vit_small_patch16_224")).unwrap_err();
    assert!(e.to_string().contains("torchvision ResNet body"), "{e}");
    assert_eq!(
        detect_family(&shapes, Some("resnet_basic_1111")).unwrap(),
        Family::ResNet
    );
    assert_eq!(
        detect_family(&shapes, Some("resnet18.a1_in1k")).unwrap(),
        Family::ResNet
    );
    assert_eq!(
        detect_family(&shapes, Some("my_net")).unwrap(),
        Family::ResNet
    );
}

#[test]
fn a_learner_serves_a_cnn_on_any_input_size() {
    let w = FastaiWeights::load(model_path("convnext"), &Device::Cpu).unwrap();
    let vocab = w.vocab().unwrap().unwrap();
    assert_eq!(
        vocab,
        Vocab::new(vec!["cat".into(), "gray".into(), "other".into()])
    );
    let learn = Learner::from_weights(&w, vocab).unwrap();
    // The default recipe's 224x224 pipeline, on a real image.
    let pred = learn
        .predict_path(common::fixtures().join("images/chelsea.png"))
        .unwrap();
    assert_eq!(pred.probabilities.len(), 3);
    // An input smaller than ConvNeXt's 32-pixel minimum is an error, not a panic.
    let tiny = Tensor::zeros((1, 3, 16, 40), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = learn.logits(&tiny).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn load_with_config_checks_the_given_architecture() {
    let p = model_path("resnet_basic");
    let inferred = FastaiWeights::load(&p, &Device::Cpu)
        .unwrap()
        .config()
        .clone();
    // The class count comes from the file's last linear layer.
    let given = inferred.clone().with_num_classes(9);
    let w = FastaiWeights::load_with_config(&p, given, &Device::Cpu).unwrap();
    assert_eq!(w.config(), &inferred);
    // Another depth: every key that differs is listed.
    let mut deeper = inferred.clone();
    if let BodyConfig::ResNet(r) = &mut deeper.body {
        r.depths[0] = 2;
    }
    let err = FastaiWeights::load_with_config(&p, deeper, &Device::Cpu).unwrap_err();
    match &err {
        Error::WeightsMismatch { problems, .. } => {
            assert!(
                problems.iter().any(|k| k.key() == "0.4.1.conv1.weight"),
                "{err}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // A degenerate config is refused before the file is read.
    let mut zero = inferred;
    if let BodyConfig::ResNet(r) = &mut zero.body {
        r.groups = 0;
    }
    let err = FastaiWeights::load_with_config(&p, zero, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "resnet.groups"),
        "{err}"
    );
}

/// The config structs are `#[non_exhaustive]`: outside the crate they are built from presets
/// with the `with_*` setters, and every public constructor validates what they hold, naming
/// the field.
#[test]
fn configs_built_outside_the_crate_are_validated_by_every_constructor() {
    let vb = || candle_nn::VarBuilder::zeros(candle_core::DType::F32, &Device::Cpu);
    let small_vit = vit::Config::vit_tiny_patch16_224()
        .with_embed_dim(8)
        .with_depth(1)
        .with_num_heads(2)
        .with_patch_size(4)
        .with_img_size(8);
    let head = head::Config::create_head(
        8,
        2,
        &HeadOptions::default()
            .with_pool(false)
            .with_lin_ftrs(Some(vec![4])),
    )
    .unwrap();
    let cfg = Config::new(BodyConfig::Vit(small_vit.clone()), head.clone()).unwrap();
    assert_eq!(cfg.input_size(), Some(8));
    fastai_infer::FastaiModel::new(&cfg, vb()).unwrap();
    // The same head from its layers.
    let again = head::Config::new(8, head.layers.clone(), 1e-5).unwrap();
    assert_eq!(again, head);

    let field = |e: Error| match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    let bad_vits = [
        (small_vit.clone().with_num_heads(3), "vit.num_heads"),
        (small_vit.clone().with_patch_size(0), "vit.patch_size"),
        (small_vit.clone().with_img_size(10), "vit.img_size"),
    ];
    for (bad, name) in bad_vits {
        let e = Config::new(BodyConfig::Vit(bad.clone()), head.clone()).unwrap_err();
        assert_eq!(field(e), name);
        let e = fastai_infer::model::VisionTransformer::new(&bad, vb()).unwrap_err();
        assert_eq!(field(e), name);
    }
    let r = resnet::Config::resnet18().with_groups(0);
    assert_eq!(
        field(fastai_infer::model::ResNet::new(&r, vb()).unwrap_err()),
        "resnet.groups"
    );
    let c = convnext::Config::convnext_tiny().with_kernel_size(4);
    assert_eq!(
        field(fastai_infer::model::ConvNeXt::new(&c, vb()).unwrap_err()),
        "convnext.kernel_size"
    );
    let e = Config::with_default_head(BodyConfig::ConvNext(c), 3).unwrap_err();
    assert_eq!(field(e), "convnext.kernel_size");
    // A head whose first layer does not take the body's width.
    let e = head::Config::new(7, head.layers.clone(), 1e-5).unwrap_err();
    assert!(field(e).starts_with("head.layers"));
}
