//! Dropout's randomness, keyed by the sentence: every keep-decision of a training step is a pure
//! function of the run's seed, the optimiser step, the sentence (its identity in the run: the row's
//! index in the training data), the site in the model (layer and place) and the element's position
//! inside the sentence — not of the process, the micro-batch, the packing offset or what else is in
//! the batch. So 1 process, N processes and gradient accumulation draw the same masks for the same
//! sentence, and a run resumed on another number of processes continues exactly.
//!
//! A counter-based hash (SplitMix64's finaliser) instead of a stream generator: any element's draw is
//! computed where it is needed, in any order, on the CPU or on the GPU. `kernels/dropout.cuh` is the
//! CUDA twin of [`site_key`] and [`draw`], and `kernels/dropout_masks.cu` draws whole masks on the GPU;
//! the emulator tests check that both sides give the same masks, element for element.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::launch::{self, Elem, Exec, Launch, Ptr, int};
use crate::ops::Mask;
use crate::rows::RowSpans;

/// 2⁶⁴ / φ: consecutive counters land far apart before mixing.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a bijection whose output bits each depend on every input bit.
pub const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where in the model a mask is drawn. The same sentence gets unrelated masks at different sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After the embeddings' LayerNorm, `[tokens, hidden]`.
    Embeddings,
    /// On layer `l`'s attention probabilities, `[heads, L, L]` per sentence.
    Attention(usize),
    /// On layer `l`'s attention output projection, `[tokens, hidden]`.
    AttentionOutput(usize),
    /// On layer `l`'s feed-forward output, `[tokens, hidden]`.
    FeedForwardOutput(usize),
    /// On the head's features (encoder output and POS embedding), `[tokens, features]`.
    Head,
    /// POS tags replaced by the unknown tag (`pos_dropout`), one draw per sub-word.
    PosTags,
    /// Sentences whose POS embedding is fed the POS tagger's distribution in training
    /// (`tagger_pos_share`), one draw per sentence.
    TaggerPos,
}

impl Site {
    /// The site's number, as the CUDA kernels receive it.
    pub fn code(self) -> u64 {
        match self {
            Site::Embeddings => 1,
            Site::Head => 2,
            Site::PosTags => 3,
            Site::TaggerPos => 4,
            Site::Attention(l) => 16 + 3 * l as u64,
            Site::AttentionOutput(l) => 17 + 3 * l as u64,
            Site::FeedForwardOutput(l) => 18 + 3 * l as u64,
        }
    }
}

/// The key of one sentence in one optimiser step of a run seeded with `seed`.
pub fn sentence_key(seed: u64, step: u64, sentence: u64) -> u64 {
    let k = mix(seed.wrapping_add(GOLDEN));
    let k = mix(k ^ step.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    mix(k ^ sentence.wrapping_add(1).wrapping_mul(0xAEF1_7502_108E_F2D9))
}

/// The key of `site` (its [`Site::code`]) for a sentence's key.
pub const fn site_key(sentence: u64, site: u64) -> u64 {
    mix(sentence ^ mix(site.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The 16-bit draw of element `i` under `key`: one hash gives four consecutive elements' draws.
#[inline]
pub fn draw(key: u64, i: u64) -> u32 {
    let z = mix(key.wrapping_add((i / 4 + 1).wrapping_mul(GOLDEN)));
    ((z >> (16 * (i % 4))) & 0xFFFF) as u32
}

/// Draws below this are kept: (1 − p)·2¹⁶, rounded (the keep probability is exact to 2⁻¹⁶).
pub fn threshold(p: f64) -> u32 {
    ((1.0 - p) * 65536.0).round().clamp(0.0, 65536.0) as u32
}

/// Whether element `i` under `key` is kept at `threshold`.
#[inline]
pub fn keep(key: u64, i: u64, threshold: u32) -> bool {
    draw(key, i) < threshold
}

/// Fills `out` with the keep-bytes (1 = keep) of elements `first..first + out.len()` under `key`,
/// one hash per four elements.
pub fn fill_keep(key: u64, first: u64, threshold: u32, out: &mut [u8]) {
    let mut i = first;
    let mut rest = out;
    while !rest.is_empty() {
        let z = mix(key.wrapping_add((i / 4 + 1).wrapping_mul(GOLDEN)));
        let lane = (i % 4) as usize;
        let take = (4 - lane).min(rest.len());
        let (now, later) = rest.split_at_mut(take);
        for (k, b) in now.iter_mut().enumerate() {
            *b = u8::from((((z >> (16 * (lane + k))) & 0xFFFF) as u32) < threshold);
        }
        rest = later;
        i += take as u64;
    }
}

/// Where each row of a `[rows, width]` tensor lies in its sentence: the sentence's index in the batch
/// and the token's position in the sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenAt {
    pub row: u32,
    pub position: u32,
}

/// The dropout randomness of one training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noise {
    pub seed: u64,
    /// The optimiser step (every sentence occurs once in a step).
    pub step: u64,
}

impl Noise {
    /// The key of each sentence of a batch (by the sentences' identities).
    pub fn keys(&self, sentences: &[u64]) -> Vec<u64> {
        sentences
            .iter()
            .map(|&s| sentence_key(self.seed, self.step, s))
            .collect()
    }
}

/// Keep-bytes of a `[at.len(), width]` tensor at `site`: element (t, c) is element
/// `position · width + c` of its sentence's mask.
pub fn token_mask(keys: &[u64], at: &[TokenAt], width: usize, site: Site, p: f64) -> Vec<u8> {
    let t = threshold(p);
    let mut out = vec![0u8; at.len() * width];
    // Enough tokens per task to amortise scheduling.
    let per_task = (16_384 / width.max(1)).max(1);
    out.par_chunks_mut(per_task * width.max(1))
        .zip(at.par_chunks(per_task))
        .for_each(|(chunk, at)| {
            for (row, a) in chunk.chunks_mut(width.max(1)).zip(at) {
                let key = site_key(keys[a.row as usize], site.code());
                fill_keep(key, u64::from(a.position) * width as u64, t, row);
            }
        });
    out
}

/// Keep-bytes of attention probabilities in the packed layout (each sentence's `heads · L²` block in
/// turn, `lengths` the sentences' lengths): element k of a block is element k of its sentence's mask.
pub fn attention_mask(
    keys: &[u64],
    lengths: &[usize],
    heads: usize,
    site: Site,
    p: f64,
) -> Vec<u8> {
    let t = threshold(p);
    let total: usize = lengths.iter().map(|l| heads * l * l).sum();
    let mut out = vec![0u8; total];
    let mut blocks = Vec::with_capacity(lengths.len());
    let mut rest = out.as_mut_slice();
    for &l in lengths {
        let (block, later) = std::mem::take(&mut rest).split_at_mut(heads * l * l);
        blocks.push(block);
        rest = later;
    }
    blocks
        .into_par_iter()
        .zip(keys.par_iter())
        .for_each(|(block, &key)| fill_keep(site_key(key, site.code()), 0, t, block));
    out
}

/// The dropout masks of one training batch: its sentences' keys (on the host, and on the batch's GPU
/// for the CUDA kernels), and where each token and head position sits in its sentence.
pub struct Masker {
    keys: Vec<u64>,
    tokens: Vec<TokenAt>,
    head: Vec<TokenAt>,
    lengths: Vec<usize>,
    device: Device,
    gpu: Option<GpuKeys>,
}

/// The keys and position tables on the GPU: uploaded once per batch, read by every mask kernel.
pub struct GpuKeys {
    /// `[B]` i64: the sentences' keys (u64 bits).
    pub keys: Tensor,
    /// `[N]` u32 row and `[N]` u32 position of each token.
    token_rows: Tensor,
    token_positions: Tensor,
    /// `[M]` u32 row and position of each head position.
    head_rows: Tensor,
    head_positions: Tensor,
    /// `[B+1]` i32 row starts.
    starts: Tensor,
}

/// Which rows of the batch a `[rows, width]` tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every token.
    Tokens,
    /// The head positions only (the last layer after attention, the head).
    Head,
}

impl Masker {
    /// The masks of a batch in the step `noise` describes: its rows' `sentences`, where the rows lie
    /// (`rows`) and the positions the head runs on (`head`, flat token indices); the sentences' keys
    /// go to `device` when the policy `kernels` draws masks there with our CUDA kernels.
    pub fn new(
        noise: Noise,
        sentences: &[u64],
        rows: &RowSpans,
        head: &[u32],
        device: &Device,
        kernels: crate::Kernels,
    ) -> Result<Masker> {
        let keys = noise.keys(sentences);
        let tokens = token_at(rows);
        let head: Vec<TokenAt> = head.iter().map(|&t| tokens[t as usize]).collect();
        let gpu = if kernels.masks_on_gpu(device) {
            Some(GpuKeys::upload(&keys, &tokens, &head, rows, device)?)
        } else {
            None
        };
        Ok(Masker {
            keys,
            tokens,
            head,
            lengths: rows.lengths(),
            device: device.clone(),
            gpu,
        })
    }

    /// The keep-mask of `like` (`[rows, width]`, holding `rows`) at `site`, for dropout `p`: bytes on
    /// the CPU, scaled values in `like`'s dtype on a GPU (drawn there); `None` when `p` is 0.
    pub fn tokens(&self, like: &Tensor, rows: Rows, site: Site, p: f64) -> Result<Option<Mask>> {
        if p <= 0.0 {
            return Ok(None);
        }
        let (n, width) = like.dims2()?;
        let at = match rows {
            Rows::Tokens => &self.tokens,
            Rows::Head => &self.head,
        };
        if at.len() != n {
            return Err(KernelError::Internal(format!(
                "a dropout mask for {n} rows of a batch with {} such rows",
                at.len()
            )));
        }
        if let Some(gpu) = &self.gpu {
            let tensor = gpu.token_mask(like, rows, site.code(), p)?;
            return Ok(Some(Mask { tensor, p }));
        }
        let bytes = token_mask(&self.keys, at, width, site, p);
        self.host_mask(bytes, like, p)
    }

    /// For each head position, whether its sentence is drawn at `site` with probability `p` (one
    /// draw per sentence, the same on any number of processes).
    pub fn head_sentences(&self, site: Site, p: f64) -> Vec<bool> {
        // A sentence is drawn when its first element is *dropped* at rate p.
        let t = threshold(p);
        let drawn: Vec<bool> = self
            .keys
            .iter()
            .map(|&k| !keep(site_key(k, site.code()), 0, t))
            .collect();
        self.head.iter().map(|a| drawn[a.row as usize]).collect()
    }

    /// The attention-probability mask of layer `layer` in the packed layout (each row's `heads · L²`
    /// block in turn), as bytes for the CPU kernel; `None` when `p` is 0.
    pub fn attention_bytes(&self, heads: usize, layer: usize, p: f64) -> Option<Vec<u8>> {
        (p > 0.0)
            .then(|| attention_mask(&self.keys, &self.lengths, heads, Site::Attention(layer), p))
    }

    /// The attention-probability mask of layer `layer` for probabilities gathered into a padded
    /// `[B, heads, T, T]` block (`like`); padding is 0.
    pub fn attention_padded(&self, like: &Tensor, layer: usize, p: f64) -> Result<Option<Mask>> {
        if p <= 0.0 {
            return Ok(None);
        }
        let site = Site::Attention(layer);
        if let Some(gpu) = &self.gpu {
            let tensor = gpu.padded_attention_mask(like, site.code(), p)?;
            return Ok(Some(Mask { tensor, p }));
        }
        let (b, heads, t, _) = like.dims4()?;
        let packed = attention_mask(&self.keys, &self.lengths, heads, site, p);
        let mut bytes = vec![0u8; b * heads * t * t];
        let mut at = 0;
        for (r, &l) in self.lengths.iter().enumerate() {
            for h in 0..heads {
                for i in 0..l {
                    let dst = ((r * heads + h) * t + i) * t;
                    bytes[dst..dst + l].copy_from_slice(&packed[at..at + l]);
                    at += l;
                }
            }
        }
        self.host_mask(bytes, like, p)
    }

    /// The sentences' keys on the GPU, for the fused attention kernel (which draws its own mask).
    pub fn gpu(&self) -> Option<&GpuKeys> {
        self.gpu.as_ref()
    }

    /// Host keep-bytes as a mask of `like`: bytes on the CPU (the CPU kernels' form), else uploaded.
    fn host_mask(&self, bytes: Vec<u8>, like: &Tensor, p: f64) -> Result<Option<Mask>> {
        let tensor = Tensor::from_vec(bytes, like.shape(), &Device::Cpu)?;
        let tensor = if self.device.is_cpu() {
            tensor
        } else {
            tensor.to_device(&self.device)?
        };
        Ok(Some(Mask { tensor, p }))
    }
}

impl GpuKeys {
    /// The scaled keep-mask of `like` (`[rows, width]`, holding the batch's `rows`) at dropout site
    /// `site`, drawn on the GPU.
    fn token_mask(&self, like: &Tensor, rows: Rows, site: u64, p: f64) -> Result<Tensor> {
        let (row, pos) = match rows {
            Rows::Tokens => (&self.token_rows, &self.token_positions),
            Rows::Head => (&self.head_rows, &self.head_positions),
        };
        let (count, width) = like.dims2()?;
        let s = Elem::of(like.dtype())?;
        let out = crate::on_gpu(
            &[Some(&self.keys), Some(row), Some(pos)],
            &[(like.dtype(), count * width)],
            |e, i, o| token_mask_launches(e, s, [o[0], i[0], i[1], i[2]], count, width, site, p),
        )?;
        Ok(out[0].reshape((count, width))?)
    }

    /// The scaled keep-mask of attention probabilities gathered into a padded `[B, heads, T, T]`
    /// block (`like`), drawn on the GPU; padding 0.
    fn padded_attention_mask(&self, like: &Tensor, site: u64, p: f64) -> Result<Tensor> {
        let (b, heads, t, _) = like.dims4()?;
        let s = Elem::of(like.dtype())?;
        let out = crate::on_gpu(
            &[Some(&self.keys), Some(&self.starts)],
            &[(like.dtype(), like.elem_count())],
            |e, i, o| padded_mask_launches(e, s, [o[0], i[0], i[1]], (b, heads, t), site, p),
        )?;
        Ok(out[0].reshape((b, heads, t, t))?)
    }

    fn upload(
        keys: &[u64],
        tokens: &[TokenAt],
        head: &[TokenAt],
        rows: &RowSpans,
        device: &Device,
    ) -> Result<GpuKeys> {
        let column = |at: &[TokenAt], f: fn(&TokenAt) -> u32| -> Result<Tensor> {
            let v: Vec<u32> = at.iter().map(f).collect();
            Ok(Tensor::from_vec(v, at.len(), device)?)
        };
        let bits: Vec<i64> = keys.iter().map(|&k| k as i64).collect();
        let starts: Vec<i32> = rows.starts.iter().map(|&s| s as i32).collect();
        Ok(GpuKeys {
            keys: Tensor::from_vec(bits, keys.len(), device)?,
            token_rows: column(tokens, |a| a.row)?,
            token_positions: column(tokens, |a| a.position)?,
            head_rows: column(head, |a| a.row)?,
            head_positions: column(head, |a| a.position)?,
            starts: Tensor::from_vec(starts.clone(), starts.len(), device)?,
        })
    }
}

/// Each token's row and position in it (what a token's draws are keyed by).
pub fn token_at(rows: &RowSpans) -> Vec<TokenAt> {
    let mut out = Vec::with_capacity(rows.tokens());
    for r in 0..rows.rows() {
        out.extend((0..rows.len(r)).map(|p| TokenAt {
            row: r as u32,
            position: p as u32,
        }));
    }
    out
}

/// (threshold, 1/(1−p)) of dropout `p`, as the mask kernels take them.
fn keep_params(p: f64) -> (u32, f32) {
    (threshold(p), (1.0 / (1.0 - p)) as f32)
}

/// The scaled mask `out` of a `[count, width]` tensor whose row e is position `pos[e]` of sentence
/// `rows[e]` (key `keys[rows[e]]`), for `[out, keys, rows, pos]`.
pub(crate) fn token_mask_launches(
    e: &mut dyn Exec,
    s: Elem,
    [out, keys, rows, pos]: [Ptr; 4],
    count: usize,
    width: usize,
    site: u64,
    p: f64,
) -> Result<()> {
    let (threshold, scale) = keep_params(p);
    let (grid, block) = launch::per_element(count * width);
    e.launch(
        Launch::new(s.kernel("dropout_mask"), grid, block)
            .arg(out)
            .arg(keys)
            .arg(rows)
            .arg(pos)
            .arg(count as u64)
            .arg(int(width, "width")?)
            .arg(site)
            .arg(threshold)
            .arg(scale),
    )
}

/// The scaled padded attention mask `out` (`[B, heads, T, T]`, one block per (row, head)) for
/// `[out, keys, starts]`.
pub(crate) fn padded_mask_launches(
    e: &mut dyn Exec,
    s: Elem,
    [out, keys, starts]: [Ptr; 3],
    (b, heads, t): (usize, usize, usize),
    site: u64,
    p: f64,
) -> Result<()> {
    let (threshold, scale) = keep_params(p);
    e.launch(
        Launch::new(
            s.kernel("attn_dropout_mask_padded"),
            ((b * heads).max(1) as u32, 1),
            (256, 1),
        )
        .arg(out)
        .arg(keys)
        .arg(starts)
        .arg(int(heads, "heads")?)
        .arg(int(t, "longest row")?)
        .arg(site)
        .arg(threshold)
        .arg(scale),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_bytes_are_the_single_draws() {
        let key = site_key(sentence_key(7, 3, 11), Site::Attention(2).code());
        for first in [0u64, 1, 2, 3, 5, 384] {
            let mut out = vec![0u8; 37];
            fill_keep(key, first, threshold(0.3), &mut out);
            for (k, &b) in out.iter().enumerate() {
                assert_eq!(
                    b == 1,
                    keep(key, first + k as u64, threshold(0.3)),
                    "{first} {k}"
                );
            }
        }
    }

    #[test]
    fn keep_rate_is_one_minus_p() {
        let key = site_key(sentence_key(1, 0, 0), Site::Embeddings.code());
        let mut out = vec![0u8; 400_000];
        fill_keep(key, 0, threshold(0.2), &mut out);
        let rate = out.iter().map(|&b| f64::from(b)).sum::<f64>() / out.len() as f64;
        assert!((rate - 0.8).abs() < 0.003, "keep rate {rate}");
        assert_eq!(threshold(0.0), 65536);
    }

    #[test]
    fn keys_differ_by_seed_step_sentence_and_site() {
        let base = sentence_key(1, 2, 3);
        for other in [
            sentence_key(2, 2, 3),
            sentence_key(1, 3, 3),
            sentence_key(1, 2, 4),
        ] {
            assert_ne!(base, other);
        }
        let codes: Vec<u64> = [
            Site::Embeddings,
            Site::Head,
            Site::PosTags,
            Site::Attention(0),
            Site::AttentionOutput(0),
            Site::FeedForwardOutput(0),
            Site::Attention(1),
        ]
        .map(Site::code)
        .to_vec();
        let mut distinct = codes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), codes.len());
    }

    /// A token's mask row depends on its sentence and position only, not on the batch around it.
    #[test]
    fn a_tokens_mask_is_its_own() {
        let noise = Noise { seed: 5, step: 9 };
        let a = [
            TokenAt {
                row: 0,
                position: 3,
            },
            TokenAt {
                row: 1,
                position: 0,
            },
        ];
        let b = [
            TokenAt {
                row: 1,
                position: 3,
            },
            TokenAt {
                row: 0,
                position: 0,
            },
        ];
        let ma = token_mask(&noise.keys(&[10, 20]), &a, 8, Site::Head, 0.5);
        let mb = token_mask(&noise.keys(&[20, 10]), &b, 8, Site::Head, 0.5);
        assert_eq!(ma, mb);
        let att_a = attention_mask(&noise.keys(&[10, 20]), &[3, 5], 2, Site::Attention(1), 0.5);
        let att_b = attention_mask(&noise.keys(&[20, 10]), &[5, 3], 2, Site::Attention(1), 0.5);
        assert_eq!(att_a[..18], att_b[50..]);
        assert_eq!(att_a[18..], att_b[..50]);
    }

    /// The mask kernels (`kernels/dropout_masks.cu`) draw the Rust masks element for element: hidden
    /// rows of all tokens and of the head positions, and padded attention blocks — in two batches that
    /// hold the same sentences at other places, where a sentence's rows get the same mask.
    #[test]
    fn emulated_mask_kernels_draw_the_cpu_masks() {
        use crate::emu::{self, EmuExec, HostBuf};
        let Some(lib) = emu::emulator("dropout::tests::emulated_mask_kernels_draw_the_cpu_masks")
        else {
            return;
        };
        let (noise, p, width) = (Noise { seed: 77, step: 5 }, 0.25, 24);
        let scale = (1.0 / (1.0 - p)) as f32;
        let kernel_rows = |keys: &[u64], at: &[TokenAt]| -> Vec<f32> {
            let (rows, pos): (Vec<u32>, Vec<u32>) = at.iter().map(|a| (a.row, a.position)).unzip();
            let mut out = HostBuf::zeros(Elem::F32, at.len() * width);
            let ptrs = [
                out.ptr_mut(),
                emu::ptr(keys),
                emu::ptr(&rows),
                emu::ptr(&pos),
            ];
            let site = Site::Head.code();
            token_mask_launches(
                &mut EmuExec::new(lib),
                Elem::F32,
                ptrs,
                at.len(),
                width,
                site,
                p,
            )
            .unwrap();
            out.values()
        };
        let scaled =
            |bytes: Vec<u8>| -> Vec<f32> { bytes.iter().map(|&b| f32::from(b) * scale).collect() };
        // Sentence 7 (length 6) first in one batch, last in another; sentence 2 in both.
        let batches = [
            (vec![6, 3, 9], vec![7u64, 2, 11]),
            (vec![4, 3, 6], vec![30, 2, 7]),
        ];
        let mut sevens = Vec::new();
        for (lengths, ids) in &batches {
            let rows = RowSpans::new(lengths.clone());
            let keys = noise.keys(ids);
            let at = token_at(&rows);
            let got = kernel_rows(&keys, &at);
            assert_eq!(
                got,
                scaled(token_mask(&keys, &at, width, Site::Head, p)),
                "token mask kernel"
            );
            let head: Vec<TokenAt> = at.iter().copied().step_by(2).collect();
            let got = kernel_rows(&keys, &head);
            assert_eq!(
                got,
                scaled(token_mask(&keys, &head, width, Site::Head, p)),
                "head rows"
            );
            let seven = ids.iter().position(|&i| i == 7).unwrap();
            sevens
                .push(kernel_rows(&keys, &at)[rows.starts[seven] * width..][..6 * width].to_vec());

            let (b, t) = (rows.rows(), rows.longest());
            let starts: Vec<i32> = rows.starts.iter().map(|&s| s as i32).collect();
            let mut out = HostBuf::zeros(Elem::F32, b * 2 * t * t);
            let ptrs = [out.ptr_mut(), emu::ptr(&keys), emu::ptr(&starts)];
            let site = Site::Attention(1).code();
            padded_mask_launches(&mut EmuExec::new(lib), Elem::F32, ptrs, (b, 2, t), site, p)
                .unwrap();
            let m =
                Masker::new(noise, ids, &rows, &[], &Device::Cpu, crate::Kernels::Fused).unwrap();
            let like = Tensor::zeros((b, 2, t, t), candle_core::DType::F32, &Device::Cpu).unwrap();
            let want = m.attention_padded(&like, 1, p).unwrap().unwrap().tensor;
            let want = want.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            assert_eq!(out.values(), scaled(want), "padded attention mask kernel");
        }
        assert_eq!(
            sevens[0], sevens[1],
            "a sentence's mask follows it into another batch"
        );
    }
}
