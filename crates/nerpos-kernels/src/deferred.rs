//! Numbers a step produces on its device (the loss, the gradient norm) and that nobody needs at once.
//!
//! Reading one value back from a GPU waits for everything queued before it: done every step, the host
//! stops queueing the next step's kernels while the device drains. A [`Deferred`] stays where it was
//! computed — sums and scalings are queued as device ops — until [`Deferred::read`], once per log
//! interval. On the CPU it is a plain `f64` and costs nothing.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// A number on the host, or a one-element f32 tensor on its device (not read yet).
#[derive(Clone, Debug)]
pub enum Deferred {
    Host(f64),
    Device(Tensor),
}

impl Default for Deferred {
    fn default() -> Self {
        Deferred::Host(0.0)
    }
}

impl Deferred {
    /// The sum of all values of `t`: a host number for a CPU tensor, else kept on its device.
    pub fn sum_of(t: &Tensor) -> Result<Deferred> {
        let s = t.to_dtype(DType::F32)?.sum_all()?;
        Ok(match t.device() {
            Device::Cpu => Deferred::Host(f64::from(s.to_scalar::<f32>()?)),
            _ => Deferred::Device(s),
        })
    }

    /// `self + other` (on the device when either is there).
    pub fn add(&self, other: &Deferred) -> Result<Deferred> {
        Ok(match (self, other) {
            (Deferred::Host(a), Deferred::Host(b)) => Deferred::Host(a + b),
            (Deferred::Host(a), Deferred::Device(t)) | (Deferred::Device(t), Deferred::Host(a)) => {
                Deferred::Device(t.affine(1.0, *a)?)
            }
            (Deferred::Device(a), Deferred::Device(b)) => Deferred::Device((a + b)?),
        })
    }

    /// `self · k`.
    pub fn scale(&self, k: f64) -> Result<Deferred> {
        Ok(match self {
            Deferred::Host(a) => Deferred::Host(a * k),
            Deferred::Device(t) => Deferred::Device(t.affine(k, 0.0)?),
        })
    }

    /// √self.
    pub fn sqrt(&self) -> Result<Deferred> {
        Ok(match self {
            Deferred::Host(a) => Deferred::Host(a.sqrt()),
            Deferred::Device(t) => Deferred::Device(t.sqrt()?),
        })
    }

    /// The value (on a GPU: waits for the work queued before it; a counted read-back).
    pub fn read(&self) -> Result<f64> {
        Ok(match self {
            Deferred::Host(a) => *a,
            Deferred::Device(t) => {
                let host = crate::stats::to_host(&t.to_dtype(DType::F32)?)?;
                f64::from(host.to_scalar::<f32>()?)
            }
        })
    }
}

/// The values of `all`, with one read-back for those held on a device (stacked on the first one's
/// device: waiting once for the work queued before them, not once per value).
pub fn read_all(all: &[Deferred]) -> Result<Vec<f64>> {
    let held: Vec<Tensor> = all
        .iter()
        .filter_map(|d| match d {
            Deferred::Device(t) => Some(t.to_dtype(DType::F32).and_then(|t| t.reshape(()))),
            Deferred::Host(_) => None,
        })
        .collect::<candle_core::Result<_>>()?;
    let mut read = if held.is_empty() {
        Vec::new()
    } else {
        crate::stats::to_host(&Tensor::stack(&held, 0)?)?.to_vec1::<f32>()?
    }
    .into_iter();
    Ok(all
        .iter()
        .map(|d| match d {
            Deferred::Host(a) => *a,
            Deferred::Device(_) => read.next().map_or(f64::NAN, f64::from),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_tensor_values_combine_and_read_back() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[1.5f32, 2.5, -1.0], &dev).unwrap();
        let s = Deferred::sum_of(&t).unwrap();
        assert!(matches!(s, Deferred::Host(_)));
        assert_eq!(s.read().unwrap(), 3.0);
        // A tensor-held value (as a GPU keeps it), here on the CPU: the same arithmetic.
        let held = Deferred::Device(Tensor::new(2.0f32, &dev).unwrap());
        let sum = held.add(&s).unwrap().scale(0.5).unwrap();
        assert!(matches!(sum, Deferred::Device(_)));
        assert_eq!(sum.read().unwrap(), 2.5);
        assert_eq!(s.add(&held).unwrap().read().unwrap(), 5.0);
        assert_eq!(held.add(&held).unwrap().read().unwrap(), 4.0);
        assert_eq!(Deferred::default().read().unwrap(), 0.0);
        let nan = Deferred::Device(Tensor::new(f32::NAN, &dev).unwrap());
        let all = read_all(&[s, held, Deferred::Host(-1.0), nan]).unwrap();
        assert_eq!(&all[..3], &[3.0, 2.0, -1.0]);
        assert!(all[3].is_nan());
        assert_eq!(read_all(&[]).unwrap(), Vec::<f64>::new());
    }
}
