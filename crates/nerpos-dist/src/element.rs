//! Element types the collectives can sum.

use half::bf16;

/// A plain-data element type with a sum; `DTYPE` identifies it on the wire so that ranks calling the
/// same collective with different types fail loudly.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: u8;
    /// `dst[i] = dst[i] + src[i]`.
    fn add_into(dst: &mut [Self], src: &[Self]);
}

macro_rules! float_element {
    ($t:ty, $code:expr) => {
        impl Element for $t {
            const DTYPE: u8 = $code;
            fn add_into(dst: &mut [Self], src: &[Self]) {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
            }
        }
    };
}

float_element!(f32, 1);
float_element!(f64, 2);

impl Element for bf16 {
    const DTYPE: u8 = 3;
    /// Each partial sum is formed in f32 and rounded to bf16 (as NCCL does for bf16).
    fn add_into(dst: &mut [Self], src: &[Self]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = bf16::from_f32(d.to_f32() + s.to_f32()));
    }
}

impl Element for u64 {
    const DTYPE: u8 = 4;
    fn add_into(dst: &mut [Self], src: &[Self]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = d.wrapping_add(*s));
    }
}

impl Element for i64 {
    const DTYPE: u8 = 5;
    fn add_into(dst: &mut [Self], src: &[Self]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = d.wrapping_add(*s));
    }
}

#[cfg(target_endian = "big")]
compile_error!("the wire format of nerpos-dist is little-endian");
