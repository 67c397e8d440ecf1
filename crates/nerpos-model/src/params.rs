//! The model's parameters: named candle `Var`s in a sorted map (every process lists them in the same
//! order, what gradient buckets and optimiser state rely on), each registered by its layer with a
//! [`Role`] — what the optimiser groups them by.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::error::{ModelError, Result};

/// What kind of parameter it is, for the optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// Weight decay applies (matrices; not biases, LayerNorm parameters or embedding tables).
    pub decay: bool,
    /// Part of the new head (POS embedding, classifier): trained at `head_lr`.
    pub head: bool,
    /// An embedding table, whose rows are looked up by id (an optimiser may skip rows that never had
    /// a gradient).
    pub table: bool,
    /// A probe: it reads the encoder but sends no gradient back (the POS tagger). Left out of the
    /// gradient-norm clipping of the rest, so that the model around it trains exactly as without it.
    pub probe: bool,
}

impl Role {
    /// A weight matrix: decayed.
    pub const WEIGHT: Role = Role {
        decay: true,
        head: false,
        table: false,
        probe: false,
    };
    /// A bias or a LayerNorm parameter: not decayed.
    pub const BIAS: Role = Role {
        decay: false,
        head: false,
        table: false,
        probe: false,
    };
    /// An embedding table: not decayed, looked up by rows.
    pub const TABLE: Role = Role {
        decay: false,
        head: false,
        table: true,
        probe: false,
    };

    /// The same role in the new head.
    pub const fn in_head(self) -> Role {
        Role { head: true, ..self }
    }

    /// The same role in a probe.
    pub const fn in_probe(self) -> Role {
        Role {
            probe: true,
            ..self
        }
    }
}

/// A parameter as a layer holds it: its name and its tensor (which sees every update of the variable).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
}

impl Param {
    /// The tensor outside any autograd graph (the training pass is written out by hand).
    pub fn t(&self) -> Tensor {
        self.tensor.detach()
    }
}

pub struct Params {
    vars: BTreeMap<String, (Var, Role)>,
    device: Device,
    dtype: DType,
}

impl Params {
    /// Parameters stored in `dtype` (bf16 compute copies for mixed precision; masters stay f32).
    pub fn with_dtype(device: &Device, dtype: DType) -> Params {
        Params {
            vars: BTreeMap::new(),
            device: device.clone(),
            dtype,
        }
    }

    /// Registers a zero parameter (values are loaded or initialised afterwards).
    pub fn add<S: Into<Shape>>(&mut self, name: String, shape: S, role: Role) -> Result<Param> {
        let var = Var::zeros(shape, self.dtype, &self.device)?;
        let tensor = var.as_tensor().clone();
        if self.vars.insert(name.clone(), (var, role)).is_some() {
            return Err(ModelError::Internal(format!(
                "parameter {name} registered twice"
            )));
        }
        Ok(Param { name, tensor })
    }

    /// Parameters by name, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(k, (v, _))| (k.as_str(), v))
    }

    /// Parameters by name, sorted, with their roles.
    pub fn with_roles(&self) -> impl Iterator<Item = (&str, &Var, Role)> {
        self.vars.iter().map(|(k, (v, r))| (k.as_str(), v, *r))
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name).map(|(v, _)| v)
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
        self.vars.values().map(|(v, _)| v.elem_count()).sum()
    }
}
