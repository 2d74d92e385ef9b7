//! Stage 5, decoding: fastai's `Categorize.decodes` / `MultiCategorize.decodes` after the loss
//! function's activation and decodes.
//!
//! - Single-label (`CategoryBlock`, [`LossFunc::CrossEntropyLossFlat`]): `learn.predict`
//!   applies softmax over the classes (in `f32`), takes the argmax, and looks the index up in
//!   the vocab.
//! - Multi-label (`MultiCategoryBlock`, [`LossFunc::BCEWithLogitsLossFlat`]): a sigmoid per
//!   class, and the labels are every class whose probability is `> thresh` (the loss
//!   function's threshold, 0.5 by default; possibly none).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The class labels, in the order of the model's outputs (fastai's `dls.vocab`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    labels: Arc<[String]>,
}

impl Vocab {
    /// A vocab from labels in class-index order.
    pub fn new(labels: Vec<String>) -> Self {
        Vocab {
            labels: labels.into(),
        }
    }

    /// Reads a labels file: one label per line, in class-index order. Trailing whitespace
    /// (including `\r`) is trimmed; a trailing empty line is ignored.
    pub fn from_labels_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "labels",
            path: path.to_path_buf(),
            source,
        })?;
        let labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        let mut labels = labels;
        while labels.last().is_some_and(|l| l.is_empty()) {
            labels.pop();
        }
        Ok(Vocab::new(labels))
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The label of class `index`.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.labels.get(index).map(String::as_str)
    }

    /// All labels in class-index order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Checks that the vocab has `classes` labels; `origin` names where it came from.
    pub fn check_len(&self, classes: usize, origin: &str) -> Result<()> {
        if self.len() != classes {
            return Err(Error::VocabMismatch {
                origin: origin.to_string(),
                expected: classes,
                found: self.len(),
            });
        }
        Ok(())
    }
}

/// Softmax over one row of logits in `f32`, as PyTorch computes it: subtract the maximum,
/// exponentiate, divide by the sum.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The index of the largest value; the first one on ties, as `torch.argmax` returns.
/// `None` for an empty slice.
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        let better = match best {
            None => true,
            Some((_, b)) => v > b,
        };
        if better {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// `torch.sigmoid` of one logit in `f32`: `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The loss function a learner was trained with, as far as inference needs it: its activation
/// and how it decodes (fastai's `loss_func.activation` and `loss_func.decodes`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossFunc {
    /// `CrossEntropyLossFlat`: softmax, argmax (single-label).
    #[default]
    CrossEntropyLossFlat,
    /// `BCEWithLogitsLossFlat(thresh=...)`: sigmoid per class, labels where `p > thresh`
    /// (multi-label).
    BCEWithLogitsLossFlat {
        /// The decoding threshold.
        thresh: f32,
    },
}

impl LossFunc {
    /// fastai's class name.
    pub fn name(&self) -> &'static str {
        match self {
            LossFunc::CrossEntropyLossFlat => "CrossEntropyLossFlat",
            LossFunc::BCEWithLogitsLossFlat { .. } => "BCEWithLogitsLossFlat",
        }
    }
}

/// Which kind of target a [`Prediction`] decodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PredictionKind {
    /// One label per image: softmax probabilities summing to 1, the label is the argmax.
    SingleLabel,
    /// Any number of labels per image: independent sigmoid probabilities, the labels are
    /// those over `thresh`.
    MultiLabel {
        /// The threshold the labels were decoded with.
        thresh: f32,
    },
}

/// One entry of a top-k list.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The class label.
    pub label: String,
    /// The class index.
    pub index: usize,
    /// Its probability.
    pub probability: f32,
}

/// What `learn.predict` returns for one image: the decoded label(s), and the probabilities
/// of every class in vocab order. [`Prediction::kind`] says whether it is single-label
/// (softmax) or multi-label (sigmoid and a threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable class's label (for a multi-label prediction too, whether or not it
    /// passes the threshold).
    pub label: String,
    /// The most probable class's index.
    pub index: usize,
    /// Probabilities in vocab order: softmax (single-label) or per-class sigmoid
    /// (multi-label).
    pub probabilities: Vec<f32>,
    /// The decoded labels in vocab order: `[label]` for a single-label prediction; every class
    /// with probability `> thresh` for a multi-label one (possibly none), as fastai's
    /// `MultiCategorize.decodes` lists them.
    pub labels: Vec<String>,
    /// Single- or multi-label.
    pub kind: PredictionKind,
    vocab: Vocab,
}

impl Prediction {
    /// Decodes one row of logits as a single-label learner does: softmax, argmax, label from
    /// `vocab`.
    pub fn from_logits(logits: &[f32], vocab: &Vocab) -> Result<Self> {
        Self::decode(logits, vocab, &LossFunc::CrossEntropyLossFlat)
    }

    /// Decodes one row of logits with the loss function's activation and decoding.
    pub fn decode(logits: &[f32], vocab: &Vocab, loss: &LossFunc) -> Result<Self> {
        if logits.len() != vocab.len() {
            return Err(Error::VocabMismatch {
                origin: "the learner".into(),
                expected: logits.len(),
                found: vocab.len(),
            });
        }
        let (probabilities, kind) = match *loss {
            LossFunc::CrossEntropyLossFlat => (softmax(logits), PredictionKind::SingleLabel),
            LossFunc::BCEWithLogitsLossFlat { thresh } => (
                logits.iter().map(|&x| sigmoid(x)).collect(),
                PredictionKind::MultiLabel { thresh },
            ),
        };
        let index = argmax(&probabilities)
            .ok_or_else(|| Error::InvalidArgument("no classes to decode".into()))?;
        let labels = match kind {
            PredictionKind::SingleLabel => vec![vocab.labels[index].clone()],
            PredictionKind::MultiLabel { thresh } => probabilities
                .iter()
                .zip(vocab.labels.iter())
                .filter(|(p, _)| **p > thresh)
                .map(|(_, l)| l.clone())
                .collect(),
        };
        Ok(Prediction {
            label: vocab.labels[index].clone(),
            index,
            probabilities,
            labels,
            kind,
            vocab: vocab.clone(),
        })
    }

    /// Whether this is a multi-label prediction.
    pub fn is_multi_label(&self) -> bool {
        matches!(self.kind, PredictionKind::MultiLabel { .. })
    }

    /// The `k` most probable classes, most probable first (ties keep vocab order).
    pub fn top_k(&self, k: usize) -> Vec<Ranked> {
        let mut order: Vec<usize> = (0..self.probabilities.len()).collect();
        order.sort_by(|&a, &b| {
            self.probabilities[b]
                .partial_cmp(&self.probabilities[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order
            .into_iter()
            .take(k)
            .map(|i| Ranked {
                label: self.vocab.labels[i].clone(),
                index: i,
                probability: self.probabilities[i],
            })
            .collect()
    }

    /// The vocab the prediction was decoded with.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn top_k_is_sorted() {
        let v = Vocab::new(vec!["a".into(), "b".into(), "c".into()]);
        let p = Prediction::from_logits(&[1.0, 3.0, 2.0], &v).unwrap();
        assert_eq!(p.label, "b");
        let t = p.top_k(2);
        assert_eq!(t[0].label, "b");
        assert_eq!(t[1].label, "c");
        assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(p.labels, ["b"]);
        assert_eq!(p.kind, PredictionKind::SingleLabel);
    }

    #[test]
    fn multi_label_thresholds_each_sigmoid() {
        let v = Vocab::new(vec!["a".into(), "b".into(), "c".into()]);
        let loss = LossFunc::BCEWithLogitsLossFlat { thresh: 0.4 };
        // sigmoid: 0.2689, 0.5, 0.3775 (just under 0.4)
        let p = Prediction::decode(&[-1.0, 0.0, -0.5], &v, &loss).unwrap();
        assert!(p.is_multi_label());
        assert_eq!(p.labels, ["b"]);
        assert_eq!(p.label, "b");
        assert!((p.probabilities[0] - 0.268_941_43).abs() < 1e-7);
        let none = Prediction::decode(&[-3.0, -3.0, -3.0], &v, &loss).unwrap();
        assert!(none.labels.is_empty());
    }
}
