//! A bilinear I420 scaler of our own.
//!
//! The pipeline must keep a session's output size when a lens or a transcoded source delivers
//! another size (RTMP and GB28181 players break on a size change). The crates that scale I420
//! well (`dcv-color-primitives` does not scale; `fast_image_resize` would add a dependency tree
//! for one use) are more than this needs: bilinear interpolation in 8-bit fixed point is exact
//! enough for video that is encoded right after, has no unsafe code, and is plain enough to
//! audit. It reads strided planes, so decoder output is scaled without a repacking copy.

use crate::media::frame::RawFrame;

/// A borrowed I420 picture with per-plane strides (decoder and capture buffers are padded).
#[derive(Debug, Clone, Copy)]
pub struct I420Ref<'a> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Luma plane.
    pub y: &'a [u8],
    /// Cb plane.
    pub u: &'a [u8],
    /// Cr plane.
    pub v: &'a [u8],
    /// Bytes per row of `y`.
    pub y_stride: usize,
    /// Bytes per row of `u` and `v`.
    pub uv_stride: usize,
}

impl<'a> I420Ref<'a> {
    /// Views a tightly packed [`RawFrame`].
    pub fn from_frame(frame: &'a RawFrame) -> Self {
        let (y, u, v) = frame.planes();
        I420Ref {
            width: frame.width,
            height: frame.height,
            y,
            u,
            v,
            y_stride: frame.width,
            uv_stride: frame.width / 2,
        }
    }
}

/// A picture whose planes are shorter than its size and strides claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{width}x{height} picture: {plane} plane holds {len} bytes, needs {need}")]
pub struct ScaleError {
    /// Declared width.
    pub width: usize,
    /// Declared height.
    pub height: usize,
    /// Which plane is short.
    pub plane: &'static str,
    /// Its length.
    pub len: usize,
    /// The length the size and stride need.
    pub need: usize,
}

fn check(
    plane: &'static str,
    data: &[u8],
    w: usize,
    h: usize,
    stride: usize,
    pic: (usize, usize),
) -> Result<(), ScaleError> {
    let need = if h == 0 { 0 } else { stride * (h - 1) + w };
    if data.len() < need || stride < w {
        return Err(ScaleError {
            width: pic.0,
            height: pic.1,
            plane,
            len: data.len(),
            need: need.max(stride * h),
        });
    }
    Ok(())
}

/// Scales (or copies, when the sizes match) `src` into `dst`, which keeps its own size.
pub fn scale_i420(src: &I420Ref<'_>, dst: &mut RawFrame) -> Result<(), ScaleError> {
    let (sw, sh) = (src.width, src.height);
    let pic = (sw, sh);
    let (cw, ch) = (sw.div_ceil(2), sh.div_ceil(2));
    check("Y", src.y, sw, sh, src.y_stride, pic)?;
    check("U", src.u, cw, ch, src.uv_stride, pic)?;
    check("V", src.v, cw, ch, src.uv_stride, pic)?;
    let (dw, dh) = (dst.width, dst.height);
    let (y, u, v) = dst.planes_mut();
    scale_plane(src.y, sw, sh, src.y_stride, y, dw, dh);
    scale_plane(src.u, cw, ch, src.uv_stride, u, dw / 2, dh / 2);
    scale_plane(src.v, cw, ch, src.uv_stride, v, dw / 2, dh / 2);
    Ok(())
}

/// Source positions for each destination index, centre-aligned, as (index, next, weight/256).
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, u32)> {
    let last = src.saturating_sub(1);
    (0..dst)
        .map(|i| {
            // Centre of destination sample i in source coordinates, in 1/65536 units.
            let pos = ((2 * i + 1) as u64 * src as u64 * 65536 / (2 * dst as u64)) as i64 - 32768;
            let pos = pos.max(0) as u64;
            let i0 = ((pos >> 16) as usize).min(last);
            let i1 = (i0 + 1).min(last);
            (i0, i1, ((pos >> 8) & 0xff) as u32)
        })
        .collect()
}

fn scale_plane(
    src: &[u8],
    sw: usize,
    sh: usize,
    stride: usize,
    dst: &mut [u8],
    dw: usize,
    dh: usize,
) {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        return;
    }
    if sw == dw && sh == dh {
        for (row, out) in dst.chunks_exact_mut(dw).take(dh).enumerate() {
            out.copy_from_slice(&src[row * stride..row * stride + sw]);
        }
        return;
    }
    let xs = taps(sw, dw);
    let ys = taps(sh, dh);
    for (out, &(y0, y1, wy)) in dst.chunks_exact_mut(dw).zip(&ys) {
        let r0 = &src[y0 * stride..y0 * stride + sw];
        let r1 = &src[y1 * stride..y1 * stride + sw];
        for (o, &(x0, x1, wx)) in out.iter_mut().zip(&xs) {
            let top = u32::from(r0[x0]) * (256 - wx) + u32::from(r0[x1]) * wx;
            let bottom = u32::from(r1[x0]) * (256 - wx) + u32::from(r1[x1]) * wx;
            *o = ((top * (256 - wy) + bottom * wy + (1 << 15)) >> 16) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> RawFrame {
        let mut fr = RawFrame::black(w, h);
        let (y, _, _) = fr.planes_mut();
        for r in 0..h {
            for c in 0..w {
                y[r * w + c] = f(c, r);
            }
        }
        fr
    }

    #[test]
    fn same_size_is_a_copy_and_flat_stays_flat() {
        let src = frame(64, 48, |x, y| (x * 3 + y) as u8);
        let mut dst = RawFrame::black(64, 48);
        scale_i420(&I420Ref::from_frame(&src), &mut dst).unwrap();
        assert_eq!(dst, src);
        let flat = frame(64, 48, |_, _| 77);
        let mut big = RawFrame::black(130, 98);
        scale_i420(&I420Ref::from_frame(&flat), &mut big).unwrap();
        assert!(big.planes().0.iter().all(|&p| p == 77));
        assert!(big.planes().1.iter().all(|&p| p == 128));
    }

    #[test]
    fn halving_averages_and_gradients_stay_monotonic() {
        let src = frame(64, 2, |x, _| if x % 2 == 0 { 0 } else { 200 });
        let mut dst = RawFrame::black(32, 2);
        scale_i420(&I420Ref::from_frame(&src), &mut dst).unwrap();
        assert!(
            dst.planes().0.iter().all(|&p| p == 100),
            "{:?}",
            dst.planes().0
        );
        let ramp = frame(100, 20, |x, _| (x * 2) as u8);
        let mut up = RawFrame::black(250, 20);
        scale_i420(&I420Ref::from_frame(&ramp), &mut up).unwrap();
        let row = &up.planes().0[..250];
        assert!(row.windows(2).all(|w| w[0] <= w[1]));
        assert!(row[0] <= 2 && row[249] >= 196);
    }

    #[test]
    fn short_planes_are_an_error() {
        let src = RawFrame::black(64, 48);
        let mut r = I420Ref::from_frame(&src);
        r.y_stride = 100;
        assert!(scale_i420(&r, &mut RawFrame::black(32, 24)).is_err());
    }
}
