//! Stage 5, decoding: fastai's `Categorize.decodes` after the loss function's activation.
//!
//! `learn.predict` applies `CrossEntropyLossFlat`'s activation (softmax over the classes, in
//! `f32`), takes the argmax, and looks the index up in the vocab.

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

/// What `learn.predict` returns for one image: the decoded label, its index, and the
/// probabilities of every class in vocab order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable class's label.
    pub label: String,
    /// The most probable class's index.
    pub index: usize,
    /// Softmax probabilities in vocab order.
    pub probabilities: Vec<f32>,
    vocab: Vocab,
}

impl Prediction {
    /// Decodes one row of logits: softmax, argmax, label from `vocab`.
    pub fn from_logits(logits: &[f32], vocab: &Vocab) -> Result<Self> {
        if logits.len() != vocab.len() {
            return Err(Error::VocabMismatch {
                origin: "the learner".into(),
                expected: logits.len(),
                found: vocab.len(),
            });
        }
        let probabilities = softmax(logits);
        let index = argmax(&probabilities)
            .ok_or_else(|| Error::InvalidArgument("no classes to decode".into()))?;
        Ok(Prediction {
            label: vocab.labels[index].clone(),
            index,
            probabilities,
            vocab: vocab.clone(),
        })
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
    }
}
