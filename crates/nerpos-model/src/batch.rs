//! The packed layout every stage shares: a micro-batch is its rows' sub-word tokens concatenated
//! (`[N]`, no padding), where each row starts (`cu_seqlens`, `[B+1]`), and the positions the head runs
//! on (`head`, `[M]`: the labelled positions in training, each word's first sub-word in prediction).
//! Embeddings, every linear layer, LayerNorm, GELU and dropout run on `[N, H]`; attention runs within
//! each row; the head and the loss run on the `M` head positions only. The layout is the same on every
//! device: the host batch here, its tensors in [`Inputs`] and [`Targets`].

use candle_core::{Device, Tensor};

use nerpos_kernels::RowSpans;
use nerpos_kernels::dropout::{Masker, Noise, TokenAt, token_at};

use crate::error::{ModelError, Result};

/// A packed micro-batch on the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedBatch {
    /// Sub-word ids of all rows, concatenated: `[N]`.
    pub input_ids: Vec<u32>,
    /// POS ids, aligned with `input_ids`: `[N]`.
    pub pos_ids: Vec<u32>,
    /// Row boundaries: row `r` is `cu_seqlens[r]..cu_seqlens[r + 1]`; `[B+1]`, starting at 0.
    pub cu_seqlens: Vec<u32>,
    /// Flat positions (into `[N]`) where logits are computed, ascending: `[M]`.
    pub head: Vec<u32>,
    /// The label of each head position (training); empty for prediction.
    pub labels: Vec<u32>,
    /// The corpus's POS id at each head position, before any POS dropout (training: the POS tagger's
    /// targets); empty when not given.
    pub pos_targets: Vec<u32>,
    /// Each row's sentence: its identity in the run (the row's index in the training data), which
    /// keys its dropout masks ([`crate::dropout`]): `[B]`.
    pub sentences: Vec<u64>,
}

impl PackedBatch {
    pub fn new() -> PackedBatch {
        PackedBatch {
            cu_seqlens: vec![0],
            ..PackedBatch::default()
        }
    }

    /// Appends a row: its sentence's identity, its ids and POS ids, and its head positions (within the
    /// row) with their labels (`None` for prediction).
    pub fn push_row(
        &mut self,
        sentence: u64,
        ids: &[u32],
        pos: &[u32],
        head: impl IntoIterator<Item = (usize, Option<u32>)>,
    ) {
        if self.cu_seqlens.is_empty() {
            self.cu_seqlens.push(0);
        }
        let start = self.input_ids.len();
        self.input_ids.extend_from_slice(ids);
        self.pos_ids
            .extend_from_slice(&pos[..ids.len().min(pos.len())]);
        self.pos_ids.resize(self.input_ids.len(), 0);
        for (p, label) in head {
            self.head.push((start + p) as u32);
            if let Some(l) = label {
                self.labels.push(l);
            }
        }
        self.cu_seqlens.push(self.input_ids.len() as u32);
        self.sentences.push(sentence);
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Real sub-word tokens (`N`).
    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Each row's length.
    pub fn lengths(&self) -> Vec<usize> {
        self.cu_seqlens
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect()
    }

    /// The position of each token within its row (what the position embedding looks up).
    pub fn positions(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.tokens());
        for w in self.cu_seqlens.windows(2) {
            out.extend(0..w[1] - w[0]);
        }
        out
    }

    /// The batch's tensors on `device`, and its targets when it carries labels.
    pub fn to_device(&self, device: &Device) -> Result<(Inputs, Option<Targets>)> {
        if !self.labels.is_empty() && self.labels.len() != self.head.len() {
            return Err(ModelError::Internal(format!(
                "a packed batch has {} labels for {} head positions",
                self.labels.len(),
                self.head.len()
            )));
        }
        let head_pos: Vec<u32> = self
            .head
            .iter()
            .map(|&p| self.pos_ids[p as usize])
            .collect();
        if self.sentences.len() != self.rows() {
            return Err(ModelError::Internal(format!(
                "a packed batch has {} sentence ids for {} rows",
                self.sentences.len(),
                self.rows()
            )));
        }
        let positions = self.positions();
        let inputs = Inputs {
            input_ids: Tensor::from_vec(self.input_ids.clone(), self.tokens(), device)?,
            positions: Tensor::from_slice(&positions, self.tokens(), device)?,
            rows: RowSpans::new(self.lengths()),
            head: Tensor::from_vec(self.head.clone(), self.head.len(), device)?,
            head_pos_ids: Tensor::from_slice(&head_pos, self.head.len(), device)?,
            host: HostIndex {
                input_ids: self.input_ids.clone(),
                positions,
                head: self.head.clone(),
                head_pos_ids: head_pos,
                sentences: self.sentences.clone(),
            },
        };
        if !self.pos_targets.is_empty() && self.pos_targets.len() != self.head.len() {
            return Err(ModelError::Internal(format!(
                "a packed batch has {} POS targets for {} head positions",
                self.pos_targets.len(),
                self.head.len()
            )));
        }
        let targets = (!self.labels.is_empty())
            .then(|| {
                let pos = (!self.pos_targets.is_empty())
                    .then(|| Tensor::from_slice(&self.pos_targets, self.head.len(), device))
                    .transpose()?;
                Ok::<_, ModelError>(Targets {
                    labels: Tensor::from_vec(self.labels.clone(), self.labels.len(), device)?,
                    count: self.labels.len(),
                    host: self.labels.clone(),
                    pos,
                })
            })
            .transpose()?;
        Ok((inputs, targets))
    }
}

/// A packed batch's inputs on the model's device.
pub struct Inputs {
    /// `[N]` u32 sub-word ids.
    pub input_ids: Tensor,
    /// `[N]` u32 position of each token within its row.
    pub positions: Tensor,
    pub rows: RowSpans,
    /// `[M]` u32 flat positions the head runs on.
    pub head: Tensor,
    /// `[M]` u32 POS ids at the head positions (ignored by a model without POS).
    pub head_pos_ids: Tensor,
    /// What the host keeps of the batch: nothing the step needs is read back from the device.
    pub host: HostIndex,
}

/// A packed batch's indices on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostIndex {
    /// `[N]` sub-word ids (the rows of the word-embedding gradient).
    pub input_ids: Vec<u32>,
    /// `[N]` each token's position in its row.
    pub positions: Vec<u32>,
    /// `[M]` head positions.
    pub head: Vec<u32>,
    /// `[M]` POS ids at the head positions.
    pub head_pos_ids: Vec<u32>,
    /// `[B]` each row's sentence identity.
    pub sentences: Vec<u64>,
}

impl Inputs {
    /// Each token's row and position in it (what a token's dropout draws are keyed by).
    pub fn token_at(&self) -> Vec<TokenAt> {
        token_at(&self.rows)
    }

    /// The row and in-row position of each head position.
    pub fn head_at(&self) -> Vec<TokenAt> {
        let all = self.token_at();
        self.host.head.iter().map(|&t| all[t as usize]).collect()
    }

    /// The dropout masks of this batch in the training step `noise` describes, drawn where the
    /// policy `kernels` says.
    pub fn masks(&self, noise: Noise, kernels: nerpos_kernels::Kernels) -> Result<Masker> {
        Ok(Masker::new(
            noise,
            &self.host.sentences,
            &self.rows,
            &self.host.head,
            self.input_ids.device(),
            kernels,
        )?)
    }
}

/// The labels of a packed batch's head positions.
pub struct Targets {
    /// `[M]` u32.
    pub labels: Tensor,
    pub count: usize,
    /// The labels on the host (the CRF's loss runs there).
    pub host: Vec<u32>,
    /// `[M]` u32 the corpus's POS ids (the POS tagger's targets), when the batch carries them.
    pub pos: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_concatenate_with_their_head_positions() {
        let mut b = PackedBatch::new();
        b.push_row(
            4,
            &[1, 5, 6, 2],
            &[0, 3, 4, 0],
            [(1, Some(7)), (2, Some(8))],
        );
        b.push_row(2, &[1, 9, 2], &[0, 5, 0], [(1, Some(3))]);
        assert_eq!(b.cu_seqlens, vec![0, 4, 7]);
        assert_eq!(b.head, vec![1, 2, 5]);
        assert_eq!(b.labels, vec![7, 8, 3]);
        assert_eq!(b.positions(), vec![0, 1, 2, 3, 0, 1, 2]);
        assert_eq!((b.rows(), b.tokens()), (2, 7));
        let (inputs, targets) = b.to_device(&Device::Cpu).unwrap();
        assert_eq!(inputs.head_pos_ids.to_vec1::<u32>().unwrap(), vec![3, 4, 5]);
        assert_eq!(inputs.rows.longest(), 4);
        assert_eq!(targets.unwrap().count, 3);
        assert_eq!(b.sentences, vec![4, 2]);
        let at = |row, position| TokenAt { row, position };
        assert_eq!(inputs.head_at(), vec![at(0, 1), at(0, 2), at(1, 1)]);
    }
}
