//! The model's parameters: named candle `Var`s in a sorted map, so that every process lists them in the
//! same order (what gradient buckets and optimiser state rely on).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::error::Result;

pub struct Params {
    vars: BTreeMap<String, Var>,
    device: Device,
    dtype: DType,
}

impl Params {
    pub fn new(device: &Device) -> Params {
        Params::with_dtype(device, DType::F32)
    }

    /// Parameters stored in `dtype` (bf16 compute copies for mixed precision; masters stay f32).
    pub fn with_dtype(device: &Device, dtype: DType) -> Params {
        Params {
            vars: BTreeMap::new(),
            device: device.clone(),
            dtype,
        }
    }

    /// Creates a zero parameter (values are loaded or initialised afterwards) and returns its
    /// tensor, which sees every later update of the variable.
    pub fn var<S: Into<Shape>>(&mut self, name: &str, shape: S) -> Result<Tensor> {
        let var = Var::zeros(shape, self.dtype, &self.device)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_owned(), var);
        Ok(t)
    }

    /// Parameters by name, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}
