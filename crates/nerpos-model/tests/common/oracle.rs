//! A test oracle: the BERT+POS forward pass on a *padded* batch written with candle's differentiable
//! tensor ops, so that candle's autograd gives every gradient. Slow and simple on purpose; it is not
//! part of the crate (the crate has one implementation: the packed pass in `train`). The parity tests
//! check it against PyTorch and the packed pass against both.

use candle_core::{D, DType, Tensor};
use nerpos_model::BertNerPos;

fn param(m: &BertNerPos, name: &str) -> Tensor {
    m.params
        .get(name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .as_tensor()
        .clone()
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let centered = x.broadcast_sub(&mean).unwrap();
    let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    centered
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap()
        .broadcast_add(b)
        .unwrap()
}

/// x (B, T, in) · wᵀ + b.
fn linear(x: &Tensor, m: &BertNerPos, name: &str) -> Tensor {
    let w = param(m, &format!("{name}.weight"));
    let b = param(m, &format!("{name}.bias"));
    x.broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
}

fn softmax(x: &Tensor) -> Tensor {
    let max = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
    let sum = e.sum_keepdim(D::Minus1).unwrap();
    e.broadcast_div(&sum).unwrap()
}

/// Logits (B, T, labels) of `ids`/`mask`/`pos` (B, T), dropout off.
pub fn logits(m: &BertNerPos, ids: &Tensor, mask: &Tensor, pos: &Tensor) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let x = encoder(m, ids, mask);
    let features = match m.params.get("pos_embedding.weight") {
        Some(e) => {
            let p = e
                .as_tensor()
                .index_select(&pos.flatten_all().unwrap(), 0)
                .unwrap()
                .reshape((b, t, ()))
                .unwrap();
            Tensor::cat(&[&x, &p], D::Minus1).unwrap()
        }
        None => x,
    };
    linear(&features, m, "classifier")
}

/// Logits (B, T, labels) of input without POS tags: the POS embedding fed the tagger's distribution,
/// Σ softmax(POS logits)·E (dropout off) — E the predicted tags' own table when the model has one. The
/// distribution is a constant (detached): the NER loss does not train the tagger, which stays a probe.
pub fn logits_tagger_pos(m: &BertNerPos, ids: &Tensor, mask: &Tensor) -> Tensor {
    let x = encoder(m, ids, mask);
    let e = match m.params.get("pos_embedding_tagged.weight") {
        Some(_) => param(m, "pos_embedding_tagged.weight"),
        None => param(m, "pos_embedding.weight"),
    };
    let p = softmax(&pos_logits(m, ids, mask))
        .detach()
        .broadcast_matmul(&e)
        .unwrap();
    linear(&Tensor::cat(&[&x, &p], D::Minus1).unwrap(), m, "classifier")
}

/// The POS tagger's logits (B, T, POS ids). The tagger is a probe: it reads the encoder's output
/// detached (PyTorch's `.detach()`), so its loss sends no gradient into the encoder.
pub fn pos_logits(m: &BertNerPos, ids: &Tensor, mask: &Tensor) -> Tensor {
    linear(&encoder(m, ids, mask).detach(), m, "pos_tagger")
}

/// The encoder's output (B, T, H).
fn encoder(m: &BertNerPos, ids: &Tensor, mask: &Tensor) -> Tensor {
    let c = &m.config.bert;
    let (b, t) = ids.dims2().unwrap();
    let h = c.hidden_size;
    let word = param(m, "embeddings.word_embeddings.weight")
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((b, t, h))
        .unwrap();
    let positions = param(m, "embeddings.position_embeddings.weight")
        .narrow(0, 0, t)
        .unwrap();
    let type0 = param(m, "embeddings.token_type_embeddings.weight")
        .narrow(0, 0, 1)
        .unwrap();
    let mut x = layer_norm(
        &word
            .broadcast_add(&positions)
            .unwrap()
            .broadcast_add(&type0)
            .unwrap(),
        &param(m, "embeddings.LayerNorm.weight"),
        &param(m, "embeddings.LayerNorm.bias"),
        c.layer_norm_eps,
    );
    // Hugging Face's extended mask: (1 − mask) · the dtype's minimum, added to the scores.
    let maskf = mask.to_dtype(DType::F32).unwrap();
    let bias = ((maskf.ones_like().unwrap() - maskf).unwrap() * f32::MIN as f64)
        .unwrap()
        .reshape((b, 1, 1, t))
        .unwrap();
    for i in 0..c.num_hidden_layers {
        x = layer(m, &x, &bias, i);
    }
    x
}

/// Encoder layer `i` of `x` (B, T, H), with the attention mask's additive `bias` (B, 1, 1, T).
fn layer(m: &BertNerPos, x: &Tensor, bias: &Tensor, i: usize) -> Tensor {
    let c = &m.config.bert;
    let (b, t, h) = x.dims3().unwrap();
    let nh = c.num_attention_heads;
    let dh = h / nh;
    let pre = format!("encoder.layer.{i}");
    let heads = |y: Tensor| {
        y.reshape((b, t, nh, dh))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let q = heads(linear(x, m, &format!("{pre}.attention.self.query")));
    let k = heads(linear(x, m, &format!("{pre}.attention.self.key")));
    let v = heads(linear(x, m, &format!("{pre}.attention.self.value")));
    let scores = ((q.matmul(&k.t().unwrap()).unwrap() / (dh as f64).sqrt()).unwrap())
        .broadcast_add(bias)
        .unwrap();
    let context = softmax(&scores)
        .matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, h))
        .unwrap();
    let attended = linear(&context, m, &format!("{pre}.attention.output.dense"));
    let x = layer_norm(
        &(attended + x).unwrap(),
        &param(m, &format!("{pre}.attention.output.LayerNorm.weight")),
        &param(m, &format!("{pre}.attention.output.LayerNorm.bias")),
        c.layer_norm_eps,
    );
    let inner = linear(&x, m, &format!("{pre}.intermediate.dense"))
        .gelu_erf()
        .unwrap();
    let out = linear(&inner, m, &format!("{pre}.output.dense"));
    layer_norm(
        &(out + &x).unwrap(),
        &param(m, &format!("{pre}.output.LayerNorm.weight")),
        &param(m, &format!("{pre}.output.LayerNorm.bias")),
        c.layer_norm_eps,
    )
}

/// Summed cross-entropy of logits (B, T, C) over the positions whose label is not −100.
pub fn loss(logits: &Tensor, labels: &[i32]) -> Tensor {
    let c = logits.dim(D::Minus1).unwrap();
    let (positions, targets): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, &l)| (i as u32, l as u32))
        .unzip();
    let n = positions.len();
    let dev = logits.device();
    let rows = logits
        .reshape(((), c))
        .unwrap()
        .index_select(&Tensor::from_vec(positions, n, dev).unwrap(), 0)
        .unwrap();
    let max = rows.max_keepdim(D::Minus1).unwrap().detach();
    let shifted = rows.broadcast_sub(&max).unwrap();
    let lse = shifted
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp = shifted.broadcast_sub(&lse).unwrap();
    let picked = logp
        .gather(&Tensor::from_vec(targets, (n, 1), dev).unwrap(), 1)
        .unwrap();
    picked.sum_all().unwrap().neg().unwrap()
}
