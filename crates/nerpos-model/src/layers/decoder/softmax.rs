//! The softmax head (`head = "softmax"`): cross-entropy at each labelled position; each word gets its
//! most likely label, with its softmax probability. No parameters of its own.

use candle_core::Tensor;
use nerpos_kernels::ops::cross_entropy::CrossEntropy;
use nerpos_kernels::{Deferred, Kernels};

use super::{Decoder, Decoding, Draw, HeadType};
use crate::batch::{Inputs, Targets};
use crate::error::Result;
use crate::layers::Sink;
use crate::params::{Param, Params};
use crate::predict::WordPrediction;
use crate::profile::timed;

pub struct SoftmaxHead;

impl HeadType for SoftmaxHead {
    fn build(&self, _p: &mut Params, _labels: &[String]) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(Softmax))
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }
}

pub struct Softmax;

impl Decoder for Softmax {
    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }

    fn draws(&self) -> Vec<(&Param, Draw)> {
        Vec::new()
    }

    fn loss(
        &self,
        kernels: Kernels,
        logits: &Tensor,
        _inputs: &Inputs,
        targets: &Targets,
        _sink: &mut Sink,
    ) -> Result<(Deferred, Tensor)> {
        timed("fwd/bwd: loss", || {
            Ok(CrossEntropy::forward_backward(
                kernels,
                logits,
                &targets.labels,
            )?)
        })
    }

    fn decoding(&self) -> Result<Box<dyn Decoding>> {
        Ok(Box::new(Softmax))
    }
}

impl Decoding for Softmax {
    fn decode(&self, words: Vec<u32>, z: Vec<Vec<f32>>, keep_logits: bool) -> Vec<WordPrediction> {
        words
            .into_iter()
            .zip(z)
            .map(|(word, z)| prediction(word, z, keep_logits))
            .collect()
    }
}

fn prediction(word: u32, z: Vec<f32>, keep_logits: bool) -> WordPrediction {
    let (label, &max) = z
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("at least one label");
    let sum: f32 = z.iter().map(|v| (v - max).exp()).sum();
    WordPrediction {
        word,
        label: label as u32,
        prob: 1.0 / sum,
        logits: keep_logits.then_some(z),
        pos: None,
    }
}
