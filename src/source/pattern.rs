//! Synthetic moving test patterns, one visibly different style per lens.
//!
//! The patterns let a newcomer (and the tests) see a stream without a camera, and make a lens
//! switch obvious on screen: colour bars for `normal`, a checkerboard for `wide`, rings for
//! `zoom`, a grey "thermal" picture with a hot spot for `ir`. Each moves every frame so that a
//! frozen stream is obvious too. Rows are built once per frame and copied, so drawing stays
//! cheap next to encoding.

use crate::media::frame::RawFrame;
use crate::media::quality::Rung;
use crate::source::{SourceError, SourceFrame, VideoSource};
use std::fmt;
use std::str::FromStr;

/// The look of the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// Scrolling colour bars with a moving white box.
    #[default]
    Normal,
    /// A diagonally moving checkerboard.
    Wide,
    /// Concentric rings running outwards.
    Zoom,
    /// Grey gradient with a moving bright spot, like a thermal camera.
    Ir,
}

impl FromStr for Style {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "normal" => Ok(Style::Normal),
            "wide" => Ok(Style::Wide),
            "zoom" => Ok(Style::Zoom),
            "ir" | "thermal" => Ok(Style::Ir),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Style {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Style::Normal => "normal",
            Style::Wide => "wide",
            Style::Zoom => "zoom",
            Style::Ir => "ir",
        })
    }
}

/// BT.601 limited-range YUV of the classic colour bars: white, yellow, cyan, green, magenta,
/// red, blue, black.
const BARS: [(u8, u8, u8); 8] = [
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
    (16, 128, 128),
];

/// Draws one pattern style into a reused buffer.
pub struct PatternSource {
    style: Style,
    frame: RawFrame,
    tick: u64,
    /// Distance of each pixel from the centre, for the rings; rebuilt only when the size changes.
    distance: Vec<u16>,
}

impl PatternSource {
    /// A pattern of the given style; the size follows the rung of each call.
    pub fn new(style: Style) -> Self {
        PatternSource {
            style,
            frame: RawFrame::black(16, 16),
            tick: 0,
            distance: Vec::new(),
        }
    }

    /// Draws frame number `self.tick` at `w`x`h`.
    fn draw(&mut self, w: usize, h: usize) {
        if self.frame.width != w || self.frame.height != h {
            self.frame = RawFrame::black(w, h);
            self.distance.clear();
        }
        let t = self.tick as usize;
        match self.style {
            Style::Normal => draw_bars(&mut self.frame, t),
            Style::Wide => draw_checker(&mut self.frame, t),
            Style::Zoom => {
                if self.distance.is_empty() {
                    self.distance = distance_map(w, h);
                }
                draw_rings(&mut self.frame, &self.distance, t)
            }
            Style::Ir => draw_thermal(&mut self.frame, t),
        }
    }
}

impl VideoSource for PatternSource {
    fn next_frame(&mut self, rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
        self.draw(rung.width as usize, rung.height as usize);
        self.tick += 1;
        Ok(SourceFrame::Raw(&self.frame))
    }

    fn current_picture(&self) -> Option<&RawFrame> {
        Some(&self.frame)
    }
}

fn fill_rows(plane: &mut [u8], width: usize, row: &[u8]) {
    for dst in plane.chunks_exact_mut(width) {
        dst.copy_from_slice(row);
    }
}

fn draw_bars(frame: &mut RawFrame, t: usize) {
    let (w, h) = (frame.width, frame.height);
    let (cw, ch) = (w / 2, h / 2);
    let shift = t * 4;
    let bar_of = |x: usize, width: usize| BARS[((x + shift * width / w) * 8 / width) % 8];
    let row_y: Vec<u8> = (0..w).map(|x| bar_of(x, w).0).collect();
    let row_u: Vec<u8> = (0..cw).map(|x| bar_of(x, cw).1).collect();
    let row_v: Vec<u8> = (0..cw).map(|x| bar_of(x, cw).2).collect();
    let (y, u, v) = frame.planes_mut();
    fill_rows(y, w, &row_y);
    fill_rows(u, cw, &row_u);
    fill_rows(v, cw, &row_v);
    // A box bouncing along the bottom third shows motion even where the bars look alike.
    let size = (h / 6).max(2) & !1;
    let span = (w - size).max(1);
    let pos = t * 8 % (2 * span);
    let x0 = if pos < span { pos } else { 2 * span - pos } & !1;
    let y0 = (h * 2 / 3) & !1;
    for row in y0..(y0 + size).min(h) {
        y[row * w + x0..row * w + (x0 + size).min(w)].fill(235);
    }
    for row in y0 / 2..((y0 + size) / 2).min(ch) {
        u[row * cw + x0 / 2..row * cw + ((x0 + size) / 2).min(cw)].fill(128);
        v[row * cw + x0 / 2..row * cw + ((x0 + size) / 2).min(cw)].fill(128);
    }
}

fn draw_checker(frame: &mut RawFrame, t: usize) {
    let (w, h) = (frame.width, frame.height);
    let (cw, ch) = (w / 2, h / 2);
    let cell = (h / 8).max(2) & !1;
    let off = t * 3;
    // Every row is one of two templates, a row of cells or its inverse, built once per frame.
    let row: Vec<u8> = (0..w)
        .map(|x| if (x + off) / cell % 2 == 0 { 200 } else { 40 })
        .collect();
    let inverse: Vec<u8> = row
        .iter()
        .map(|&p| if p == 200 { 40 } else { 200 })
        .collect();
    let luma_rows = [row, inverse];
    // Blue-ish tint for light squares, orange for dark ones: a different hue from the bars.
    let chroma_rows: [(Vec<u8>, Vec<u8>); 2] = [0, 1].map(|parity| {
        (0..cw)
            .map(|x| {
                if luma_rows[parity][2 * x] > 100 {
                    (170, 110)
                } else {
                    (90, 170)
                }
            })
            .unzip()
    });
    let parity = |r: usize| ((r + off) / cell) % 2;
    let (y, u, v) = frame.planes_mut();
    for r in 0..h {
        y[r * w..(r + 1) * w].copy_from_slice(&luma_rows[parity(r)]);
    }
    for r in 0..ch {
        let (cu, cv) = &chroma_rows[parity(2 * r)];
        u[r * cw..(r + 1) * cw].copy_from_slice(cu);
        v[r * cw..(r + 1) * cw].copy_from_slice(cv);
    }
}

fn distance_map(w: usize, h: usize) -> Vec<u16> {
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let mut map = Vec::with_capacity(w * h);
    for r in 0..h {
        for x in 0..w {
            let d = ((x as f32 - cx).powi(2) + (r as f32 - cy).powi(2)).sqrt();
            map.push(d as u16);
        }
    }
    map
}

fn draw_rings(frame: &mut RawFrame, distance: &[u16], t: usize) {
    let (w, h) = (frame.width, frame.height);
    let (cw, ch) = (w / 2, h / 2);
    let period = (h / 6).max(4);
    let phase = period - (t * 2) % period;
    // One table lookup per pixel instead of a division: the ring a distance falls in changes
    // only with the frame's phase.
    let max = distance.iter().copied().max().unwrap_or(0) as usize;
    let ring: Vec<u8> = (0..=max)
        .map(|d| ((d + phase) / period % 2) as u8)
        .collect();
    let luma: Vec<u8> = (0..=max)
        .map(|d| {
            if (d + phase) % period < period / 2 {
                220
            } else {
                30
            }
        })
        .collect();
    let (y, u, v) = frame.planes_mut();
    for (px, d) in y.iter_mut().zip(distance) {
        *px = luma[*d as usize];
    }
    for r in 0..ch {
        let row = &distance[2 * r * w..];
        for x in 0..cw {
            let even = ring[row[2 * x] as usize] == 0;
            u[r * cw + x] = if even { 100 } else { 150 };
            v[r * cw + x] = if even { 200 } else { 100 };
        }
    }
}

fn draw_thermal(frame: &mut RawFrame, t: usize) {
    let (w, h) = (frame.width, frame.height);
    let (y, u, v) = frame.planes_mut();
    let row: Vec<u8> = (0..w).map(|x| (40 + x * 120 / w) as u8).collect();
    fill_rows(y, w, &row);
    u.fill(128);
    v.fill(128);
    // The hot spot circles around the centre once every four seconds at 30 fps.
    let angle = (t % 120) as f32 / 120.0 * std::f32::consts::TAU;
    let radius = (h / 8).max(2) as f32;
    let cx = w as f32 / 2.0 + angle.cos() * w as f32 / 4.0;
    let cy = h as f32 / 2.0 + angle.sin() * h as f32 / 4.0;
    let (x0, x1) = (
        (cx - radius).max(0.0) as usize,
        ((cx + radius) as usize).min(w),
    );
    let (y0, y1) = (
        (cy - radius).max(0.0) as usize,
        ((cy + radius) as usize).min(h),
    );
    for r in y0..y1 {
        for x in x0..x1 {
            let d2 = (x as f32 - cx).powi(2) + (r as f32 - cy).powi(2);
            if d2 < radius * radius {
                let heat = 1.0 - d2 / (radius * radius);
                let px = &mut y[r * w + x];
                *px = (*px as f32 + heat * 200.0).min(235.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(w: u32, h: u32) -> Rung {
        Rung {
            width: w,
            height: h,
            fps: 30,
            bitrate_kbps: 500,
        }
    }

    fn frame_of(style: Style, tick: u64, w: u32, h: u32) -> Vec<u8> {
        let mut s = PatternSource::new(style);
        s.tick = tick;
        match s.next_frame(&rung(w, h)).unwrap() {
            SourceFrame::Raw(f) => {
                assert_eq!(f.data.len(), (w * h * 3 / 2) as usize);
                f.data.clone()
            }
            SourceFrame::Encoded { .. } => unreachable!("patterns are raw"),
        }
    }

    #[test]
    fn every_style_moves_and_differs_from_the_others() {
        let styles = [Style::Normal, Style::Wide, Style::Zoom, Style::Ir];
        let firsts: Vec<_> = styles.iter().map(|s| frame_of(*s, 0, 64, 48)).collect();
        for (i, s) in styles.iter().enumerate() {
            assert_ne!(firsts[i], frame_of(*s, 5, 64, 48), "{s} does not move");
            for j in i + 1..styles.len() {
                assert_ne!(firsts[i], firsts[j], "{s} looks like {}", styles[j]);
            }
        }
    }

    #[test]
    fn follows_the_rung_size_and_odd_sizes_do_not_panic() {
        let mut s = PatternSource::new(Style::Zoom);
        for (w, h) in [(64, 48), (32, 16), (1920, 1080), (18, 18)] {
            if let SourceFrame::Raw(f) = s.next_frame(&rung(w, h)).unwrap() {
                assert_eq!((f.width, f.height), (w as usize, h as usize));
            }
        }
        for style in [Style::Normal, Style::Wide, Style::Ir] {
            let mut s = PatternSource::new(style);
            for tick in 0..200 {
                s.tick = tick;
                let _ = s.next_frame(&rung(16, 16)).unwrap();
            }
        }
    }
}
