//! Synthetic moving test patterns, one visibly different style per lens.
//!
//! The patterns let a newcomer (and the tests) see a stream without a camera, and make a lens
//! switch obvious on screen: colour bars for `normal`, a checkerboard for `wide`, rings for
//! `zoom`, a grey "thermal" picture with a hot spot for `ir`. Each moves every frame so that a
//! frozen stream is obvious too. Rows are built once per frame and copied, so drawing stays
//! cheap next to encoding.
//!
//! Optionally (`pattern?clock=1`) each picture also carries its own capture time, drawn as a
//! row of black and white blocks (layout at [`draw_stamp`], reader [`read_stamp`]), so that the
//! delay from the picture being made to it being shown or decoded anywhere downstream can be
//! read off the picture itself, whatever the transport does to timestamps.

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

/// What a pattern draws besides its moving picture, chosen in the source URI
/// (`pattern:STYLE?clock=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PatternOptions {
    /// Draw the capture time into every picture ([`draw_stamp`]), to measure glass-to-glass
    /// latency by reading it back at the viewer.
    pub clock: bool,
}

/// A pattern option in a source URI that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternOptionError {
    /// The option is not `KEY=VALUE`.
    #[error("pattern option {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// No such option.
    #[error("unknown pattern option {0:?} (clock)")]
    UnknownKey(String),
    /// `clock` takes 0 or 1.
    #[error("clock={0}: expected 0 or 1")]
    BadClock(String),
}

impl FromStr for PatternOptions {
    type Err = PatternOptionError;

    /// Parses the query part of a pattern URI (`clock=1`; empty for none).
    fn from_str(query: &str) -> Result<Self, Self::Err> {
        let mut opts = PatternOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| PatternOptionError::NotKeyValue(pair.to_string()))?;
            match k {
                "clock" => {
                    opts.clock = match v {
                        "1" => true,
                        "0" => false,
                        _ => return Err(PatternOptionError::BadClock(v.to_string())),
                    }
                }
                _ => return Err(PatternOptionError::UnknownKey(k.to_string())),
            }
        }
        Ok(opts)
    }
}

impl fmt::Display for PatternOptions {
    /// The query part without the `?`, empty when every option is off.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.clock {
            f.write_str("clock=1")?;
        }
        Ok(())
    }
}

/// Draws one pattern style into a reused buffer.
pub struct PatternSource {
    style: Style,
    options: PatternOptions,
    frame: RawFrame,
    tick: u64,
    /// Distance of each pixel from the centre, for the rings; rebuilt only when the size changes.
    distance: Vec<u16>,
}

impl PatternSource {
    /// A pattern of the given style; the size follows the rung of each call.
    pub fn new(style: Style) -> Self {
        Self::with_options(style, PatternOptions::default())
    }

    /// A pattern of the given style with extras such as the capture-time stamp.
    pub fn with_options(style: Style, options: PatternOptions) -> Self {
        PatternSource {
            style,
            options,
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
        if self.options.clock {
            // Taken after the picture is drawn, just before it is handed to the encoder: the
            // moment a camera would have captured it.
            draw_stamp(&mut self.frame, unix_millis());
        }
    }
}

/// Milliseconds since the UNIX epoch on the wall clock, the time base of the stamp; 0 if the
/// clock is set before 1970.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    // At most half the width: a portrait rung (240x1920) passes the ladder's checks too.
    let size = (h / 6).min(w / 2).max(2) & !1;
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

/// Blocks in the capture-time stamp, one bit each.
pub const STAMP_BLOCKS: usize = 48;
/// Side of one stamp block in luma pixels: one macroblock, so each block is coded on its own.
pub const STAMP_BLOCK: usize = 16;
/// Width of the stamp in luma pixels; narrower pictures carry no stamp.
pub const STAMP_WIDTH: usize = STAMP_BLOCKS * STAMP_BLOCK;
/// Bits of the time value: milliseconds since the UNIX epoch modulo 2^40 (about 34.8 years).
pub const STAMP_TIME_BITS: u32 = 40;
const STAMP_MOD: u64 = 1 << STAMP_TIME_BITS;
const START: [bool; 2] = [true, false];
const STOP: [bool; 2] = [false, true];
const Y_ONE: u8 = 235;
const Y_ZERO: u8 = 16;

/// The 48 bits of the stamp for `millis`, block 0 first.
fn stamp_bits(millis: u64) -> [bool; STAMP_BLOCKS] {
    let t = millis % STAMP_MOD;
    let mut bits = [false; STAMP_BLOCKS];
    bits[..2].copy_from_slice(&START);
    for i in 0..STAMP_TIME_BITS as usize {
        bits[2 + i] = (t >> (STAMP_TIME_BITS as usize - 1 - i)) & 1 == 1;
    }
    let check = check_nibble(t);
    for i in 0..4 {
        bits[42 + i] = (check >> (3 - i)) & 1 == 1;
    }
    bits[46..].copy_from_slice(&STOP);
    bits
}

/// XOR of the ten 4-bit nibbles of a 40-bit time value.
fn check_nibble(t: u64) -> u8 {
    (0..10).fold(0u8, |acc, n| acc ^ ((t >> (4 * n)) & 0xf) as u8)
}

/// Draws `millis` (milliseconds since the UNIX epoch) into the top-left corner of `frame`.
///
/// The layout, the one every reader follows (this module's [`read_stamp`] and
/// `tests/peers/whip_server.py`):
///
/// - 48 blocks of 16x16 luma pixels in one row at the top-left corner: block `i` covers luma
///   columns `16*i .. 16*i + 16` and rows `0 .. 16`, i.e. exactly one macroblock, so the
///   encoder codes each block on its own and keeps its level even at a low bitrate. The
///   chroma under the stamp is neutral (128).
/// - A block is white (Y = 235) for a 1 and black (Y = 16) for a 0. A reader takes the mean of
///   the block's central 8x8 pixels and reads 1 above 128.
/// - Blocks 0–1: start marker `1 0`. Blocks 2–41: the time, milliseconds since the UNIX epoch
///   modulo 2^40, most significant bit first. Blocks 42–45: check nibble, the XOR of the ten
///   4-bit nibbles of the 40-bit time, most significant bit first. Blocks 46–47: stop marker
///   `0 1`.
/// - Pictures narrower than 768 or lower than 16 pixels carry no stamp.
///
/// Cost: one 768-byte row built from 48 fills, copied to 16 rows, and 16 chroma row fills.
pub fn draw_stamp(frame: &mut RawFrame, millis: u64) {
    let (w, h) = (frame.width, frame.height);
    if w < STAMP_WIDTH || h < STAMP_BLOCK {
        return;
    }
    let mut row = [0u8; STAMP_WIDTH];
    for (block, bit) in row.chunks_exact_mut(STAMP_BLOCK).zip(stamp_bits(millis)) {
        block.fill(if bit { Y_ONE } else { Y_ZERO });
    }
    let cw = w / 2;
    let (y, u, v) = frame.planes_mut();
    for r in 0..STAMP_BLOCK {
        y[r * w..r * w + STAMP_WIDTH].copy_from_slice(&row);
    }
    for r in 0..STAMP_BLOCK / 2 {
        u[r * cw..r * cw + STAMP_WIDTH / 2].fill(128);
        v[r * cw..r * cw + STAMP_WIDTH / 2].fill(128);
    }
}

/// Why a picture's stamp could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// The luma buffer is too small to hold a stamp.
    #[error("a {width}-pixel wide, {rows}-row luma buffer cannot hold the {STAMP_WIDTH}x{STAMP_BLOCK} stamp")]
    TooSmall {
        /// Width given.
        width: usize,
        /// Whole rows in the buffer.
        rows: usize,
    },
    /// Start or stop marker missing: no stamp there (a picture without one, or a different
    /// source).
    #[error("no stamp: markers wrong in bits {0}")]
    NoMarkers(String),
    /// Markers right but the check nibble does not match: the picture is too damaged to trust.
    #[error("stamp check failed in bits {0}")]
    Check(String),
}

/// Reads the stamp [`draw_stamp`] drew: the capture time in milliseconds since the UNIX epoch
/// modulo 2^40. `luma` is the Y plane (an I420 buffer's first `stride * height` bytes do),
/// `width` the picture's width and `stride` the distance between rows in bytes.
pub fn read_stamp(luma: &[u8], width: usize, stride: usize) -> Result<u64, StampError> {
    let rows = luma.len().checked_div(stride).unwrap_or(0);
    if width < STAMP_WIDTH || stride < width || rows < STAMP_BLOCK {
        return Err(StampError::TooSmall { width, rows });
    }
    let mut bits = [false; STAMP_BLOCKS];
    for (i, bit) in bits.iter_mut().enumerate() {
        let x0 = i * STAMP_BLOCK + STAMP_BLOCK / 4;
        let sum: u32 = (STAMP_BLOCK / 4..STAMP_BLOCK * 3 / 4)
            .flat_map(|r| &luma[r * stride + x0..r * stride + x0 + STAMP_BLOCK / 2])
            .map(|&p| u32::from(p))
            .sum();
        *bit = sum > 128 * (STAMP_BLOCK as u32 / 2).pow(2);
    }
    let shown = || bits.iter().map(|&b| if b { '1' } else { '0' }).collect();
    if bits[..2] != START || bits[46..] != STOP {
        return Err(StampError::NoMarkers(shown()));
    }
    let t = bits[2..42]
        .iter()
        .fold(0u64, |acc, &b| (acc << 1) | u64::from(b));
    let check = bits[42..46]
        .iter()
        .fold(0u8, |acc, &b| (acc << 1) | u8::from(b));
    if check != check_nibble(t) {
        return Err(StampError::Check(shown()));
    }
    Ok(t)
}

/// How long ago, in ms, a stamp read back was drawn, given the reader's own wall clock: the
/// difference modulo 2^40, negative when the stamp is ahead of `now_millis` (clocks of two
/// machines disagree).
pub fn stamp_age_ms(stamp: u64, now_millis: u64) -> i64 {
    let d = (now_millis % STAMP_MOD + STAMP_MOD - stamp % STAMP_MOD) % STAMP_MOD;
    if d >= STAMP_MOD / 2 {
        d as i64 - STAMP_MOD as i64
    } else {
        d as i64
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

    fn stamped(style: Style, w: u32, h: u32) -> (u64, RawFrame) {
        let mut s = PatternSource::with_options(style, PatternOptions { clock: true });
        s.tick = 7;
        let before = unix_millis();
        let _ = s.next_frame(&rung(w, h)).unwrap();
        (before, s.current_picture().unwrap().clone())
    }

    #[test]
    fn the_stamp_reads_back_as_the_capture_time_on_every_style() {
        for style in [Style::Normal, Style::Wide, Style::Zoom, Style::Ir] {
            for (w, h) in [(1280, 720), (960, 540), (768, 16)] {
                let (before, f) = stamped(style, w, h);
                let t = read_stamp(f.planes().0, f.width, f.width).unwrap();
                let age = stamp_age_ms(t, unix_millis());
                assert!(
                    t >= before % (1 << STAMP_TIME_BITS) && (0..1000).contains(&age),
                    "{style} {w}x{h}: stamp {t}, drawn at {before}, age {age}"
                );
            }
        }
    }

    #[test]
    fn stamp_values_round_trip_through_a_padded_plane_with_noise() {
        let (w, stride, h) = (800, 832, 32);
        for t in [
            0,
            1,
            0x5a_a55a_a55a,
            (1 << STAMP_TIME_BITS) - 1,
            1_764_806_400_123,
        ] {
            let mut f = RawFrame::black(w, h);
            draw_stamp(&mut f, t);
            // Copy into a padded plane and add the kind of ringing an encoder leaves.
            let mut plane = vec![0u8; stride * h];
            for r in 0..h {
                for x in 0..w {
                    let noise = ((x * 7 + r * 13) % 41) as i32 - 20;
                    let p = i32::from(f.planes().0[r * w + x]) + noise;
                    plane[r * stride + x] = p.clamp(0, 255) as u8;
                }
            }
            assert_eq!(
                read_stamp(&plane, w, stride),
                Ok(t % (1 << STAMP_TIME_BITS))
            );
        }
    }

    #[test]
    fn pictures_without_a_good_stamp_are_refused() {
        let plain = frame_of(Style::Normal, 3, 1280, 720);
        assert!(matches!(
            read_stamp(&plain[..1280 * 720], 1280, 1280),
            Err(StampError::NoMarkers(_))
        ));
        let mut f = RawFrame::black(1280, 720);
        draw_stamp(&mut f, 1_764_806_400_123);
        // Flip one time bit (block 20): the markers still hold, the check catches it.
        let (y, _, _) = f.planes_mut();
        for r in 0..STAMP_BLOCK {
            for p in &mut y[r * 1280 + 20 * STAMP_BLOCK..r * 1280 + 21 * STAMP_BLOCK] {
                *p = if *p > 128 { Y_ZERO } else { Y_ONE };
            }
        }
        assert!(matches!(
            read_stamp(f.planes().0, 1280, 1280),
            Err(StampError::Check(_))
        ));
        assert_eq!(
            read_stamp(&[0; 640 * 16], 640, 640),
            Err(StampError::TooSmall {
                width: 640,
                rows: 16
            })
        );
        // Too small to carry one: drawing leaves the picture alone.
        let mut small = RawFrame::black(640, 360);
        draw_stamp(&mut small, 5);
        assert_eq!(small.data, RawFrame::black(640, 360).data);
    }

    #[test]
    fn the_stamp_survives_encoding_at_the_lowest_default_bitrate() {
        use crate::media::encoder::H264Encoder;
        use openh264::formats::YUVSource;
        // The "smooth" rung: the smallest picture and bitrate a stamp is drawn at by default.
        let rung = Rung {
            width: 960,
            height: 540,
            fps: 30,
            bitrate_kbps: 512,
        };
        let mut src = PatternSource::with_options(Style::Zoom, PatternOptions { clock: true });
        let mut enc = H264Encoder::new(rung, 30).unwrap();
        let mut dec = openh264::decoder::Decoder::new().unwrap();
        for n in 0..4u32 {
            let before = unix_millis() % (1 << STAMP_TIME_BITS);
            let SourceFrame::Raw(picture) = src.next_frame(&rung).unwrap() else {
                unreachable!("patterns are raw")
            };
            let pts = std::time::Duration::from_millis(33 * u64::from(n));
            let Some(encoded) = enc.encode(picture, pts).unwrap() else {
                continue;
            };
            let yuv = dec
                .decode(&encoded.data)
                .unwrap()
                .expect("a picture per frame");
            let t = read_stamp(yuv.y(), yuv.dimensions().0, yuv.strides().0).unwrap();
            assert!(
                (0..1000).contains(&stamp_age_ms(t, before + 999)),
                "frame {n}"
            );
        }
    }

    #[test]
    fn ages_wrap_with_the_time_value() {
        assert_eq!(stamp_age_ms(1000, 1042), 42);
        assert_eq!(
            stamp_age_ms((1 << STAMP_TIME_BITS) - 10, 1 << STAMP_TIME_BITS),
            10
        );
        assert_eq!(
            stamp_age_ms(1_764_806_400_123 % (1 << 40), 1_764_806_400_173),
            50
        );
        assert_eq!(stamp_age_ms(1050, 1000), -50);
    }

    #[test]
    fn parses_pattern_options() {
        assert_eq!("".parse(), Ok(PatternOptions::default()));
        assert_eq!("clock=1".parse(), Ok(PatternOptions { clock: true }));
        assert_eq!("clock=0".parse(), Ok(PatternOptions { clock: false }));
        assert_eq!(
            "clock=yes".parse::<PatternOptions>(),
            Err(PatternOptionError::BadClock("yes".into()))
        );
        assert_eq!(
            "speed=2".parse::<PatternOptions>(),
            Err(PatternOptionError::UnknownKey("speed".into()))
        );
        assert_eq!(
            "clock".parse::<PatternOptions>(),
            Err(PatternOptionError::NotKeyValue("clock".into()))
        );
    }

    #[test]
    fn every_style_draws_every_shape_the_ladder_accepts() {
        for (w, h) in [(16, 16), (16, 2160), (240, 1920), (3840, 16), (3840, 2160)] {
            let rung = Rung {
                width: w,
                height: h,
                fps: 30,
                bitrate_kbps: 1000,
            };
            assert!(rung.validate().is_ok(), "{w}x{h}");
            for style in [Style::Normal, Style::Wide, Style::Zoom, Style::Ir] {
                let mut s = PatternSource::new(style);
                // Long enough for every moving part to cross the picture more than once.
                for _ in 0..(if w * h > 1_000_000 { 5 } else { 300 }) {
                    assert!(s.next_frame(&rung).is_ok(), "{style:?} at {w}x{h}");
                }
            }
        }
    }
}
